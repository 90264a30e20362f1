"""Where tensors live and which dtype autocast uses: decided here, once (the torchtitan / nanoGPT pattern, STYLE.md).

* :func:`resolve_device` turns ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` into a ``torch.device`` (``auto``:
  CUDA if present, else Apple's MPS, else the CPU) and refuses a device this machine does not have with a one-line
  :class:`~lmdm.errors.UsageError`.
* :func:`autocast_dtype` / :func:`autocast`: the mixed-precision dtype of a device. bfloat16 on CUDA GPUs that
  compute it natively (Ampere and newer; not those that only emulate it) and on the CPU (native on AVX-512 bf16 / AMX machines, emulated and slower
  elsewhere); none on MPS and on older CUDA GPUs: their autocast is float16, which needs a gradient scaler to
  train safely, so they run float32.
* :func:`module_device`: the device of a model's weights. Everything the library creates while running a model
  (masks, layouts, caches, streamer noise, sampler noise) is put on this device, so a model moved with ``.to()``
  needs nothing else. Random draws stay on the CPU generator (``torch.Generator()``) and are moved afterwards, so a
  seed gives the same numbers on every device.
* :func:`set_default_device` / :func:`default_device`: the device :func:`lmdm.checkpoint.load_checkpoint` puts a
  model on when not told (the command line sets it from ``--device``; the default is the CPU).
"""
from __future__ import annotations

import contextlib

import torch

from lmdm.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")

_default = torch.device("cpu")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` for a device name.

    Args:
        name: "auto" (CUDA, else MPS, else CPU), "cpu", "cuda", "cuda:N" or "mps" (or a ``torch.device``).

    Raises:
        UsageError: an unknown name, or a device this machine (or this build of torch) does not have.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in DEVICES[1:] or (index and (kind != "cuda" or not index.isdigit())):
        raise UsageError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("device cuda is not available: no CUDA GPU is visible to this torch "
                             f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA)")
        if index and int(index) >= torch.cuda.device_count():
            raise UsageError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if kind == "mps" and not _mps_available():
        raise UsageError("device mps is not available: it needs an Apple-silicon Mac and a torch built with MPS")
    return torch.device(name)


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``device``: bfloat16 on the CPU and on CUDA GPUs that support it, None (float32)
    on MPS and older CUDA GPUs (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16
    if device.type == "cuda" and _cuda_native_bf16(device):
        return torch.bfloat16
    return None


def _cuda_native_bf16(device: torch.device) -> bool:
    """True if the CUDA GPU ``device`` (``cuda`` alone: the current one) computes bfloat16 natively (compute
    capability 8.0+, or ROCm). ``torch.cuda.is_bf16_supported()`` alone also says True for GPUs that only emulate
    it (V100, T4: slower than float32) and asks the current GPU, not ``device``."""
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast(device: torch.device | str, enabled: bool = True):
    """``torch.autocast`` on ``device`` with :func:`autocast_dtype`; a no-op where the device has none or when
    ``enabled`` is False (a config's ``bf16: false``)."""
    device = torch.device(device)
    dtype = autocast_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module without either. Works through
    ``DistributedDataParallel`` and ``torch.compile`` wrappers (they expose the wrapped module's parameters)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously), so that a wall-clock timing covers the
    computation; a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def set_default_device(device: str | torch.device) -> torch.device:
    """Set (after :func:`resolve_device`) and return the device checkpoints load onto when not told; the command
    line calls it with ``--device``.

    Raises:
        UsageError: as :func:`resolve_device`.
    """
    global _default
    _default = resolve_device(device)
    return _default


def default_device() -> torch.device:
    """The device set by :func:`set_default_device` (the CPU unless set)."""
    return _default
