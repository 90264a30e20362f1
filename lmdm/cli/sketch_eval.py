"""``lmdm sketch-eval``: contour-following correlation on held-out sketches."""
from __future__ import annotations

import argparse
import json

from lmdm.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``sketch-eval``."""
    se = sub.add_parser("sketch-eval", help="contour-following correlation on held-out sketches")
    se.add_argument("--n", type=int, default=8, help="sketches of each kind (default 8)")
    se.add_argument("--data", default="data/music", help="data set whose validation melodies are traced")
    se.add_argument("--seconds", type=float, default=8.0)
    se.add_argument("--prompt", default="solo flute")
    se.add_argument("--json", default=None)
    se.add_argument("--checkpoint", default=None)
    se.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render ``--n`` sketches of each kind; prints the mean and median correlation per kind.

    Raises:
        UsageError: ``--n`` below 1 or ``--seconds`` not positive.
        AudioError: ``--json`` cannot be written.
    """
    from lmdm.atomic import write_text
    from lmdm.audio.io import check_writable
    from lmdm.checkpoint import load_checkpoint
    from lmdm.control.evaluate import evaluate

    if args.json:
        check_writable(args.json)
    if args.n < 1 or not args.seconds > 0:
        raise UsageError("--n must be at least 1 and --seconds positive")
    ckpt = load_checkpoint(args.checkpoint)
    report = evaluate(ckpt, data_dir=args.data, n=args.n, seconds=args.seconds, prompt=args.prompt,
                      progress=not args.quiet)
    for kind, r in report["summary"].items():
        print(f"{kind:9s}: mean correlation {r['mean']:.3f} (median {r['median']:.3f}) over {r['n']} held-out sketches")
    if args.json:
        write_text(args.json, json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0
