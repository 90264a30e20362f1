"""``lmdm arc``: ARC-Forcing post-training on the model's own rollouts."""
from __future__ import annotations

import argparse

from lmdm.cli.options import add_device_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``arc``."""
    a = sub.add_parser("arc", help="ARC-Forcing post-training on the model's own rollouts")
    a.add_argument("--config", help="ARC config JSON (see configs/arc.json)")
    a.add_argument("--resume", action="store_true")
    a.add_argument("--run-dir", default=None)
    a.add_argument("--steps", type=int, default=None)
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change one field of the config (VALUE is JSON: 0, 1e-5, true, \"text\"), e.g. "
                        "--set own_stream_every=0 for a torchrun run; repeatable; on --resume only the fields a "
                        "resume may change")
    add_device_option(a)
    a.set_defaults(func=run)


def parse_settings(items: list[str]) -> dict:
    """``["KEY=VALUE", ...]`` (``--set``) as a dict; each VALUE is parsed as JSON, and a VALUE that is not JSON
    is kept as a string.

    Raises:
        UsageError: an item has no ``=`` or an empty key.
    """
    import json

    from lmdm.errors import UsageError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE (e.g. own_stream_every=0), got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run(args: argparse.Namespace) -> int:
    """Post-train (or resume) and print the iterations, last losses and the exported checkpoint.

    Raises:
        ConfigError: ``--config`` is missing, not JSON, or not an ``ARCConfig``; a ``--set`` names an unknown
            field or gives a value of the wrong type.
        UsageError: a ``--set`` is not KEY=VALUE.
    """
    from lmdm.config import from_dict, load_json, to_dict
    from lmdm.train.arc.trainer import ARCConfig, arc_train
    from lmdm.train.distributed import is_main_process

    cfg = load_json(ARCConfig, args.config) if args.config else (None if args.resume else ARCConfig())
    settings = parse_settings(args.set)
    overrides = {"steps": args.steps} if args.steps is not None else {}
    if cfg is not None and settings:  # type-checked like the config file itself
        cfg = from_dict(ARCConfig, {**to_dict(cfg), **settings}, where="--set")
    elif settings:  # --resume from the run folder alone: only the changeable fields (checked on settling)
        overrides.update(settings)
    overrides = overrides or None
    r = arc_train(cfg, resume=args.resume, progress=not args.quiet, run_dir=args.run_dir, overrides=overrides,
                  device=args.device)
    if not is_main_process():  # one summary for a torchrun run, from rank 0
        return 0
    print(f"ARC-Forcing: {r.step} iterations in {r.hours:.2f} h; discriminator {r.disc_params / 1e6:.2f}M parameters; "
          f"last losses G {r.last.get('loss_g', float('nan')):.3f} D {r.last.get('loss_d', float('nan')):.3f} "
          f"contrastive {r.last.get('loss_c', float('nan')):.3f}; post-trained checkpoint: {r.final_dir}")
    return 0
