"""``lmdm drift-study``: error accumulation over many long streams per system (issue 13): per-minute medians of every
``lmdm drift`` lens with CIs and the real-music band, the first-vs-last-minute verdict, and the check that the
lenses flag drift injected into real music (``lmdm.metrics.drift_study``). Killed studies resume."""
from __future__ import annotations

import argparse

from lmdm.cli.options import add_device_option, use_device
from lmdm.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``drift-study``."""
    d = sub.add_parser("drift-study", help="drift over many long streams per system, per minute, against real music "
                                           "(resumable)")
    d.add_argument("--config", required=True, help="study JSON (configs/drift-study.json)")
    d.add_argument("--out-dir", default=None, help="stream files, study.json and plots (default: the config's)")
    d.add_argument("--minutes", type=float, default=None, help="length of each stream (default: the config's)")
    d.add_argument("--seeds", type=int, default=None, help="streams per prompt, seeds 0..K-1 (default: the config's)")
    d.add_argument("--quick", action="store_true",
                   help="smoke run: 1 minute in 30 s windows, one seed, two prompts (flags above still apply)")
    add_device_option(d)
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the study, print its tables, write ``study.json`` and the plots.

    Raises:
        UsageError: ``--seeds`` below 1, or an ``--out-dir`` that cannot be created.
        ConfigError: the config file is missing, not JSON, has an unknown key or a bad value (``--minutes`` too).
        DataError, CheckpointError, EmbedderError, TranscriberError: see ``lmdm.metrics.drift_study.run_study``.
    """
    from lmdm.config import replace
    from lmdm.metrics.drift_study import format_study, load_study, quick, run_study

    cfg = load_study(args.config)
    if args.quick:
        cfg = quick(cfg)
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
        cfg = replace(cfg, seeds=tuple(range(args.seeds)))
    if args.minutes is not None:
        cfg = replace(cfg, minutes=args.minutes)
    if args.out_dir is not None:
        cfg = replace(cfg, out_dir=args.out_dir)
    use_device(args)
    study = run_study(cfg, log=print)
    print(format_study(study))
    print(f"wrote {study['files']['json']}; plots: {', '.join(v for k, v in study['files'].items() if k != 'json')}")
    return 0
