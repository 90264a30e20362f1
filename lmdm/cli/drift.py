"""``lmdm drift``: error accumulation over a long stream: the decoded audio measured per window with the lenses of
``lmdm eval`` (level, notes, KAD to real music), each against a band of real validation music, with a plot."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from lmdm.cli.options import add_sampler_options, sampler_config
from lmdm.config import read_json
from lmdm.errors import UsageError

#: The data set of the real-music reference and band when ``--data`` is not given (if it has been built).
DEFAULT_DATA = "data/music"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``drift`` (sampler defaults: the checkpoint's, as ``generate``)."""
    d = sub.add_parser("drift", help="drift over a long stream: loudness, notes, KAD to real music per window")
    d.add_argument("--checkpoint", default=None)
    d.add_argument("--minutes", type=float, default=5.0)
    d.add_argument("--prompt", default="a slow Bach chorale on church organ")
    add_sampler_options(d, from_checkpoint=True, seed=0)
    d.add_argument("--window", type=float, default=30.0,
                   help="window length in seconds (at least two embedder crops, about 8.2 s)")
    d.add_argument("--data", default=None,
                   help=f"built data set: its train pieces are the KAD reference, its validation pieces the real-music "
                        f"band (default {DEFAULT_DATA} if it has been built, else no reference and no band)")
    d.add_argument("--label", default=None, help="name in tables and plots (default: from the checkpoint)")
    d.add_argument("--compare", nargs="*", help="earlier drift JSON files to overlay in the plot")
    d.add_argument("--json", default=None)
    d.add_argument("--out-dir", default="runs/drift")
    d.set_defaults(func=run)


def reference_data(data: str | None) -> str | None:
    """The data folder of the real-music reference and band: ``data`` if given; else :data:`DEFAULT_DATA` if it
    holds a built data set; else None (no KAD and no band).

    Raises:
        UsageError: ``data`` is given and is not a folder.
    """
    if data is not None:
        if not Path(data).is_dir():
            raise UsageError(f"--data {data}: no such folder; build a data set with `lmdm data build --out {data}` "
                             "or leave --data out to measure without a real-music reference")
        return data
    return DEFAULT_DATA if (Path(DEFAULT_DATA) / "manifest.csv").is_file() else None


def run(args: argparse.Namespace) -> int:
    """Stream ``--minutes``, decode it, print the per-window table and summary, plot it, and write ``--json``.

    Raises:
        UsageError: ``--minutes`` outside (0, 60], ``--window`` not in (0, stream], ``--data`` not a folder,
            an unreadable ``--compare`` file, or an ``--out-dir`` that cannot be created.
        EmbedderError: no embedder (``lmdm metrics train-embedder``); TranscriberError: no transcriber.
        DataError: ``--data`` is not a built data set.
    """
    from lmdm.atomic import write_text
    from lmdm.audio.io import check_writable
    from lmdm.metrics.embedder import default_embedder_path, load_embedder
    from lmdm.metrics.report import drift_report, format_drift, plot_drift

    if not args.minutes > 0 or args.minutes > 60:
        raise UsageError(f"--minutes must be in (0, 60], got {args.minutes}")
    if not 0 < args.window <= args.minutes * 60:
        raise UsageError(f"--window must be positive and at most the stream ({args.minutes * 60:.0f} s), got {args.window}")
    if args.json:
        check_writable(args.json)
    from lmdm.checkpoint import default_checkpoint, read_config

    sampler_config(args)  # the options given are checked before anything loads
    sampler = sampler_config(args, read_config(args.checkpoint or default_checkpoint()).get("info", {}))
    data = reference_data(args.data)
    load_embedder(default_embedder_path())  # fail now, not after minutes of streaming
    others = []
    for p in args.compare or []:
        others.append(read_json(p, UsageError, "--compare drift JSON file"))
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out-dir {out_dir} ({e})") from e
    if data is None:
        print(f"no data set at {DEFAULT_DATA}: measuring without a real-music reference (no KAD, no band)")
    report = drift_report(args.checkpoint, args.minutes, args.prompt, sampler, data_dir=data,
                          window_s=args.window, label=args.label, progress=not args.quiet)
    print(format_drift(report))
    stem = Path(args.json).stem if args.json else "drift_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", report["label"]).strip("_")
    fig = plot_drift([report, *others], out_dir / f"{stem}.png")
    print(f"plot: {fig}")
    if args.json:
        write_text(args.json, json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0
