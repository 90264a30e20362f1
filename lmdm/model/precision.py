"""Inference precision: the DiT's matrix multiplications in bfloat16, everything else in float32.

Why: on a 2-core CPU a denoising step of the bundled model spends about 60% of its time in ``addmm`` (the
README's profile), and a CPU with AVX512-BF16 (or AMX) multiplies bfloat16 matrices about twice as fast as float32
ones at the step's shapes (32 x 256 x 1024: 131 against 56 GFLOP/s on one thread here). The bundled checkpoints
store the DiT in bfloat16, so the weights lose nothing; only each linear layer's input and output are rounded to
bfloat16. The residual stream, the norms, attention, RoPE, the modulations' ``1 +`` and the sampler stay float32,
which keeps the rounding small: 12 s of the chorale prompt differ from float32 by 0.004 on average (latents of
RMS 0.9), where casting the whole model to bfloat16 differs by 0.007 and is slower.

This is an inference-only copy: training, ARC-Forcing and the tests' exactness checks run the float32 model,
which stays the reference (the eval suite compares the two: README, "Streaming and cost").
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lmdm.errors import UsageError

PRECISIONS = ("auto", "float32", "bfloat16")


class BF16Linear(nn.Linear):
    """``nn.Linear`` with bfloat16 weights that multiplies in bfloat16: input ``(..., in)`` of any float dtype ->
    output ``(..., out)`` in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True where ``device`` multiplies bfloat16 natively: a CPU with AVX512-BF16 or AMX tiles, a CUDA GPU of
    compute capability 8.0+ (elsewhere bfloat16 is emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or amx())
    if device.type == "cuda" and torch.cuda.is_available():
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return False


def resolve_precision(name: str, device: torch.device | str = "cpu") -> str:
    """``"auto"`` -> ``"bfloat16"`` where :func:`native_bf16`, else ``"float32"``; the others as given.

    Raises:
        UsageError: ``name`` is not one of :data:`PRECISIONS`.
    """
    if name not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return name


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """The model to stream with at ``precision`` (a name from :func:`resolve_precision`): the model itself for
    "float32", an inference copy with :class:`BF16Linear` layers for "bfloat16".

    The copy converts every ``nn.Linear`` except the DiT's input projection, whose columns ``DiT.embed`` slices
    by input group (it stays float32, so the residual stream starts float32). Its parameters do not follow later
    changes of ``model``'s (make a new copy after training).

    Raises:
        UsageError: unknown ``precision``.
    """
    precision = resolve_precision(precision, next(model.parameters()).device)
    if precision == "float32":
        return model
    out = copy.deepcopy(model).eval()
    keep = getattr(out, "in_proj", None)
    for module in out.modules():
        if isinstance(module, nn.Linear) and module is not keep:
            module.__class__ = BF16Linear
            module.to(torch.bfloat16)
    return out
