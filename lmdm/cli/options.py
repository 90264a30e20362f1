"""The sampler options (``--steps``, ``--sampler``, ``--cfg``, ``--seed``, ``--eta``, ``--cfg-t-min``,
``--cfg-t-max``), declared once for every command that denoises, from :class:`lmdm.streaming.streamer.SamplerConfig`;
and ``--device``, declared once for every command that runs a model (``train``, ``arc``, ``generate``, ``bench``, ``eval``, ``jam``, ...).

Each option is a field of ``SamplerConfig``: its type and default come from the dataclass, a command may give its
own defaults (``jam`` uses 4 steps and no guidance) or take them from the checkpoint it loads (``generate``,
``eval``, ``drift``: ``from_checkpoint``, the checkpoint's ``info["sampler"]``,
:func:`lmdm.streaming.streamer.checkpoint_sampler`), and the values are checked only by
``SamplerConfig.__post_init__`` when :func:`sampler_config` builds the config, never by argparse.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from lmdm.device import DEVICES
from lmdm.diffusion import SAMPLERS
from lmdm.streaming.streamer import CHECKPOINT_SAMPLER_FIELDS, SamplerConfig, checkpoint_sampler

#: SamplerConfig field -> (command-line flag, help). The parsed value is stored under the field's name.
FLAGS: dict[str, tuple[str, str]] = {
    "steps": ("--steps", "denoising steps per block (default %(default)s)"),
    "sampler": ("--sampler", "sampler: " + " or ".join(SAMPLERS) + " (default %(default)s)"),
    "cfg_scale": ("--cfg", "classifier-free guidance scale; 1 = none (default %(default)s)"),
    "seed": ("--seed", "seeds the noise (default %(default)s)"),
    "eta": ("--eta", "ping-pong's share of fresh noise when it re-noises, 0 to 1: 1 = ping-pong, 0 = DDIM "
                     "(default %(default)s)"),
    "cfg_t_min": ("--cfg-t-min", "guidance interval: guide only steps whose timestep t (1 = pure noise) is at least "
                                 "this (default %(default)s)"),
    "cfg_t_max": ("--cfg-t-max", "guidance interval: guide only steps whose timestep t is at most this "
                                 "(default %(default)s)"),
}


def add_sampler_options(parser: argparse.ArgumentParser, help: dict[str, str] | None = None,
                        from_checkpoint: bool = False, **defaults: Any) -> argparse.ArgumentParser:
    """Add the sampler options (:data:`FLAGS`) to ``parser``.

    Args:
        parser: a (sub)command parser.
        help: per-field help texts replacing the standard ones (``%(default)s`` is filled in).
        from_checkpoint: the options a checkpoint may recommend (all but ``--seed``) default to None, filled in by
            :func:`sampler_config` from the checkpoint's ``info["sampler"]``, else the dataclass defaults (their
            help says so); ``defaults`` may then give only the seed.
        **defaults: per-command defaults by ``SamplerConfig`` field name (``steps=4, cfg_scale=1.0``); fields not
            given keep the dataclass default.

    Returns:
        ``parser``.

    Raises:
        TypeError: a name in ``defaults`` or ``help`` is not a sampler option (a programming error).
    """
    unknown = sorted((set(defaults) | set(help or {})) - set(FLAGS))
    if unknown:
        raise TypeError(f"not sampler options: {unknown}; the options are {', '.join(FLAGS)}")
    if from_checkpoint and set(defaults) & set(CHECKPOINT_SAMPLER_FIELDS):
        raise TypeError("with from_checkpoint the checkpoint gives the defaults; only seed may be given")
    hints = typing.get_type_hints(SamplerConfig)
    fields = {f.name: f for f in dataclasses.fields(SamplerConfig)}
    for name, (flag, text) in FLAGS.items():
        default = defaults.get(name, fields[name].default)
        text = (help or {}).get(name, text)
        if from_checkpoint and name in CHECKPOINT_SAMPLER_FIELDS:
            text = text.replace("(default %(default)s)", f"(default: the checkpoint's, else {default})")
            default = None
        parser.add_argument(flag, dest=name, type=hints[name], default=default,
                            metavar="{" + ",".join(SAMPLERS) + "}" if name == "sampler" else flag[2:].upper(),
                            help=text)
    return parser


def sampler_config(args: argparse.Namespace, info: dict | None = None) -> SamplerConfig:
    """The ``SamplerConfig`` of parsed arguments: the options given, then (for options left None by
    ``from_checkpoint``) the checkpoint's recommendation in ``info["sampler"]``, then the dataclass defaults.

    Args:
        args: the parsed arguments.
        info: the loaded checkpoint's ``info``; None = no checkpoint's recommendation (the dataclass defaults).

    Raises:
        ConfigError: a value is out of range (``SamplerConfig.__post_init__`` says which and what is accepted), or
            the checkpoint's recommendation is malformed.
    """
    return checkpoint_sampler(info or {}, **{name: getattr(args, name) for name in FLAGS})


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto") -> argparse.ArgumentParser:
    """Add ``--device {auto,cpu,cuda,mps}`` (``auto``: CUDA, else MPS, else the CPU; ``cuda:N`` is accepted too).
    The name is checked by :func:`use_device`, not by argparse, so an unavailable device gets lmdm's one-line
    error."""
    parser.add_argument("--device", default=default, metavar="{" + ",".join(DEVICES) + "}",
                        help="where the model runs: auto (CUDA, else MPS, else CPU), cpu, cuda[:N] or mps "
                             "(default %(default)s)")
    return parser


def add_precision_option(parser: argparse.ArgumentParser, default: str = "auto") -> argparse.ArgumentParser:
    """Add ``--precision {auto,float32,bfloat16}``: the DiT's matrix multiplications (``lmdm.model.precision``);
    ``auto`` is bfloat16 where the device multiplies it natively, else float32."""
    parser.add_argument("--precision", default=default, choices=("auto", "float32", "bfloat16"),
                        help="the model's matrix multiplications: auto (bfloat16 where the CPU or GPU has it "
                             "natively, else float32), float32 (the reference) or bfloat16 (default %(default)s)")
    return parser


def use_device(args: argparse.Namespace):
    """Resolve ``--device`` and make it the device checkpoints load onto (``lmdm.device.set_default_device``).

    Returns:
        the ``torch.device``.

    Raises:
        UsageError: an unknown device or one this machine does not have.
    """
    from lmdm.device import set_default_device

    return set_default_device(args.device)
