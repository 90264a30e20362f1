"""Print `lmdm eval` JSON reports as the README's markdown tables (so no number is copied by hand).

    python scripts/eval_table.py runs/eval/final.json [--extra "lmdm-small=CPU h:3.1" ...]
    python scripts/eval_table.py --merge "pingpong 8, CFG 2=runs/eval/a.json" "Euler 16, CFG 1=runs/eval/b.json"
    python scripts/eval_table.py runs/eval/final.json --by-prompt

Each report prints one table (``lmdm.eval.suite.markdown_table``); ``--extra ROW=COLUMN:TEXT`` adds a cell; ``--by-prompt``
adds, after each table, the prompt-by-prompt means of the prompts' own pieces and the systems
(``lmdm.eval.suite.markdown_prompt_table``).
``--merge LABEL=FILE ...`` prints one table of several runs of the same suite (other sampler settings, say): the
first report's real-music and calibration rows once (and a later report's calibration rows that the earlier ones did
not measure, such as another checkpoint's latent ceiling), then every report's system rows, named "LABEL: system"
(the names ``--extra`` then uses); the runs must have used the same prompts and measured every calibration row they
share identically (checked, else the script stops).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmdm.eval.suite import markdown_prompt_table, markdown_table


# what depends on the bootstrap generator's position (which moves with the number of rows a run measured before),
# not on the windows: confidence intervals and FD-infinity's fit on random subsets
RESAMPLED = ("ci", "fd_inf")


def measured(row: dict, keys: set[str] | None = None) -> str:
    """A calibration row's point estimates (canonical JSON, without :data:`RESAMPLED`; only its top-level ``keys``
    when given, so a report from before a field existed, such as ``by_prompt``, compares on what both have): equal
    for two runs that measured the same windows."""
    def strip(x):
        return {k: strip(v) for k, v in x.items() if k not in RESAMPLED} if isinstance(x, dict) else x
    return json.dumps(strip({k: v for k, v in row.items() if keys is None or k in keys}), sort_keys=True)


def merged(specs: list[str]) -> dict:
    """One report of the calibration rows (each once) and every report's system rows (``LABEL=FILE`` specs).

    Raises:
        SystemExit: a spec without a label, or runs that differ in their prompts or in a calibration row they share.
    """
    out, calibration, runs = None, {}, []
    for spec in specs:
        label, _, path = spec.rpartition("=")
        if not label:
            raise SystemExit(f"--merge {spec!r}: expected LABEL=FILE")
        report = json.loads(Path(path).read_text())
        runs.append((label, report))
        if out is None:
            out = {**report, "rows": []}
        elif report.get("prompts") != out.get("prompts"):
            raise SystemExit(f"{path}: its prompts differ from the first report's; runs cannot be merged")
        for r in report["rows"]:
            if r["kind"] == "system":
                continue
            if r["name"] not in calibration:
                calibration[r["name"]] = r
                out["rows"].append(r)
            elif measured(calibration[r["name"]], shared := set(calibration[r["name"]]) & set(r)) \
                    != measured(r, shared):
                raise SystemExit(f"{path}: its row {r['name']!r} differs from an earlier report's; runs cannot be "
                                 "merged")
    for label, report in runs:
        out["rows"] += [{**r, "name": f"{label}: {r['name']}"} for r in report["rows"] if r["kind"] == "system"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="*", help="JSON files written by `lmdm eval --json`")
    ap.add_argument("--extra", action="append", default=[], metavar="ROW=COLUMN:TEXT")
    ap.add_argument("--merge", nargs="+", default=[], metavar="LABEL=FILE")
    ap.add_argument("--by-prompt", action="store_true", help="also print each report's per-prompt table")
    args = ap.parse_args()
    if not (args.reports or args.merge):
        ap.error("give report files, or --merge LABEL=FILE ...")
    extra: dict[str, dict[str, str]] = {}
    for e in args.extra:
        row, _, cell = e.partition("=")
        col, _, text = cell.partition(":")
        if not (row and col):
            ap.error(f"--extra {e!r}: expected ROW=COLUMN:TEXT")
        extra.setdefault(row, {})[col] = text
    if args.merge:
        print(f"<!-- {' '.join(args.merge)} -->")
        report = merged(args.merge)
        print(markdown_table(report, extra))
        print()
        if args.by_prompt:
            print(markdown_prompt_table(report))
            print()
    for path in args.reports:
        print(f"<!-- {path} -->")
        report = json.loads(Path(path).read_text())
        print(markdown_table(report, extra))
        print()
        if args.by_prompt:
            print(markdown_prompt_table(report))
            print()


if __name__ == "__main__":
    main()
