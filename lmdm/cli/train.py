"""``lmdm train``: train an LMDM from a config (resumable)."""
from __future__ import annotations

import argparse

from lmdm.cli.options import add_device_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``train``."""
    t = sub.add_parser("train", help="train an LMDM (resumable)")
    t.add_argument("--config", help="training config JSON (see configs/); unknown keys are an error")
    t.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    t.add_argument("--run-dir", help="run folder (overrides the config's run_dir)")
    t.add_argument("--steps", type=int, help="override the number of steps")
    t.add_argument("--data", help="override the data folder")
    t.add_argument("--max-hours", type=float, help="stop after this many hours (with a checkpoint)")
    t.add_argument("--threads", type=int, help="torch CPU threads (0 = torch's default; 1 lets two runs share 2 cores)")
    add_device_option(t)
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) and print the final losses and where the inference checkpoint went.

    Raises:
        ConfigError: ``--config`` is missing, not JSON, or not a ``TrainConfig``.
    """
    from lmdm.config import load_json
    from lmdm.train.config import TrainConfig
    from lmdm.train.distributed import is_main_process
    from lmdm.train.pretrain import train

    cfg = load_json(TrainConfig, args.config) if args.config else None
    if cfg is None and not args.resume:
        cfg = TrainConfig()
    overrides = {k: v for k, v in (("steps", args.steps), ("data", args.data), ("max_hours", args.max_hours),
                                   ("threads", args.threads)) if v is not None}
    result = train(cfg, resume=args.resume, progress=not args.quiet, run_dir=args.run_dir, overrides=overrides,
                   device=args.device)
    if not is_main_process():  # one summary for a torchrun run, from rank 0
        return 0
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
    print(f"step {result.step}: train loss {result.train_loss:.4f}, validation loss {val}, "
          f"{result.hours:.2f} h of training; inference checkpoint: {result.final_dir}")
    return 0
