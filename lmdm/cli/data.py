"""``lmdm data build`` and ``lmdm data example``: the real-music training set and the bundled example."""
from __future__ import annotations

import argparse
from pathlib import Path

from lmdm.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``data build`` and ``data example``."""
    data = sub.add_parser("data", help="build the real-music training set").add_subparsers(dest="data_command",
                                                                                         required=True)
    b = data.add_parser("build", help="render music21 corpus works to audio with FluidSynth")
    b.add_argument("--hours", type=float, default=10.0, help="hours of audio to build (default 10)")
    b.add_argument("--out", default="data/music", help="output folder (default data/music)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--jobs", type=int, default=2, help="worker processes")
    b.add_argument("--soundfont", default=None, help="General MIDI .sf2 (default: FluidR3_GM, else TimGM6mb)")
    b.add_argument("--max-seconds", type=float, default=90.0, help="crop longer works to this length")
    b.add_argument("--works", nargs="*", help="build exactly these work ids (e.g. bach__bwv269)")
    b.set_defaults(func=run_build)
    ex = data.add_parser("example", help="render the bundled example recording (a violin air, 12 s)")
    ex.add_argument("--out", default="data/examples/violin_air.flac")
    ex.set_defaults(func=run_example)


def run_build(args: argparse.Namespace) -> int:
    """Render ``--hours`` of corpus works into ``--out``; prints the summary and where the manifest is.

    Raises:
        UsageError: ``--hours`` is not positive.
    """
    from lmdm.data.build import BuildConfig, build

    if not args.hours > 0:
        raise UsageError(f"--hours must be positive, got {args.hours}")
    cfg = BuildConfig(hours=args.hours, out=args.out, seed=args.seed, jobs=args.jobs, soundfont=args.soundfont,
                      max_seconds=args.max_seconds, work_ids=tuple(args.works or ()))
    report = build(cfg, progress=not args.quiet)
    print(report.summary())
    if report.failed:
        print(f"{report.failed} work(s) failed; see {Path(args.out) / 'failures.csv'}")
    print(f"manifest: {Path(args.out) / 'manifest.csv'}")
    return 0


def run_example(args: argparse.Namespace) -> int:
    """Render the bundled example recording to ``--out``."""
    from lmdm.data.example import build_example

    path = build_example(args.out)
    print(f"wrote {path}")
    return 0
