"""``lmdm bench``: outpainting, LMDM (enc-dec, block-causal) and an LMM measured side by side, plus live use
(end-to-end RTF, prompt-change latency, thread policies under a competing load)."""
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
    be.add_argument("--markdown", action="store_true",
                    help="print the README's measured table (markdown) instead of the plain-text report")
    be.add_argument("--from-json", default=None, metavar="FILE",
                    help="report a saved run (a --json file) instead of measuring; with --markdown, the README table")
    be.add_argument("--jam-seconds", type=float, default=None,
                    help="length of the jam under the competing load (default 60, 4 with --quick)")
    be.add_argument("--no-load", action="store_true",
                    help="skip the thread policies under a competing load (they start extra processes)")
    be.add_argument("--out-dir", default="runs/bench", help="folder for the sweep figures (default runs/bench)")
    be.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled one)")
    add_device_option(be)
    be.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or read ``--from-json``); prints the report (progress on stderr) and writes ``--json``.

    Raises:
        AudioError: ``--json`` cannot be written.
        UsageError: ``--from-json`` cannot be read or is not a bench result.
        ConfigError: ``--jam-seconds`` out of range.
    """
    from lmdm.atomic import write_text
    from lmdm.audio.io import check_writable
    from lmdm.bench.report import format_report, markdown_report

    report = markdown_report if args.markdown else format_report
    if args.from_json:
        print(report(_read_result(args.from_json)))
        return 0
    from lmdm.bench.run import BenchConfig, run_bench
    from lmdm.streaming.threads import use_live_threads

    use_device(args)  # the checkpoint loads onto it (memory and thread policies are measured on the CPU)
    use_live_threads()  # the in-process numbers are what generate and jam get
    kw = {"checkpoint": args.checkpoint}
    if args.jam_seconds is not None:
        kw["jam_seconds"] = args.jam_seconds
    if args.no_load:
        kw["policies"] = ()
    cfg = BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    if args.json:
        check_writable(args.json)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    result = run_bench(cfg, out_dir=args.out_dir, progress=log)
    print(report(result))
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


def _read_result(path: str) -> dict:
    from lmdm.errors import UsageError

    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read a bench result from {path}: {e}") from None
    missing = {"summary", "table", "generate", "prompt_change", "gemm_peak"} - set(result)
    if missing:
        raise UsageError(f"{path} is not a result of this lmdm bench (missing {', '.join(sorted(missing))}); "
                         "run lmdm bench --json again")
    return result
