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
    add_device_option(a)
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Post-train (or resume) and print the iterations, last losses and the exported checkpoint.

    Raises:
        ConfigError: ``--config`` is missing, not JSON, or not an ``ARCConfig``.
    """
    from lmdm.config import load_json
    from lmdm.train.arc.trainer import ARCConfig, arc_train
    from lmdm.train.distributed import is_main_process

    cfg = load_json(ARCConfig, args.config) if args.config else (None if args.resume else ARCConfig())
    overrides = {"steps": args.steps} if args.steps is not None else None
    r = arc_train(cfg, resume=args.resume, progress=not args.quiet, run_dir=args.run_dir, overrides=overrides,
                  device=args.device)
    if not is_main_process():  # one summary for a torchrun run, from rank 0
        return 0
    print(f"ARC-Forcing: {r.step} iterations in {r.hours:.2f} h; discriminator {r.disc_params / 1e6:.2f}M parameters; "
          f"last losses G {r.last.get('loss_g', float('nan')):.3f} D {r.last.get('loss_d', float('nan')):.3f} "
          f"contrastive {r.last.get('loss_c', float('nan')):.3f}; post-trained checkpoint: {r.final_dir}")
    return 0
