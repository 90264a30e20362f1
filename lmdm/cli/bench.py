"""``lmdm bench``: outpainting, LMDM (enc-dec, block-causal) and an LMM measured side by side."""
from __future__ import annotations

import argparse
import json
import sys

from lmdm.cli.options import add_device_option, use_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench``."""
    be = sub.add_parser("bench", help="measure outpainting, LMDM (enc-dec, block-causal) and an LMM side by side")
    be.add_argument("--quick", action="store_true", help="a fast, noisier run (CI, notebooks)")
    be.add_argument("--json", help="also write all numbers to this JSON file")
    be.add_argument("--out-dir", default="runs/bench", help="folder for the sweep figures (default runs/bench)")
    be.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled one)")
    add_device_option(be)
    be.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; prints the table (progress on stderr) and writes ``--json`` if given.

    Raises:
        AudioError: ``--json`` cannot be written.
    """
    from lmdm.atomic import write_text
    from lmdm.audio.io import check_writable
    from lmdm.bench.run import BenchConfig, format_report, run_bench

    use_device(args)  # the checkpoint loads onto it (the memory column is measured on the CPU, in a subprocess)
    cfg = BenchConfig.quick(checkpoint=args.checkpoint) if args.quick else BenchConfig(checkpoint=args.checkpoint)
    if args.json:
        check_writable(args.json)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    result = run_bench(cfg, out_dir=args.out_dir, progress=log)
    print(format_report(result))
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0
