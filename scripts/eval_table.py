"""Print `lmdm eval` JSON reports as the README's markdown tables (so no number is copied by hand).

    python scripts/eval_table.py runs/eval/final.json [--extra "lmdm-small=CPU h:3.1" ...]

Each report prints one table (``lmdm.eval.suite.markdown_table``); ``--extra ROW=COLUMN:TEXT`` adds a cell.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmdm.eval.suite import markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="JSON files written by `lmdm eval --json`")
    ap.add_argument("--extra", action="append", default=[], metavar="ROW=COLUMN:TEXT")
    args = ap.parse_args()
    extra: dict[str, dict[str, str]] = {}
    for e in args.extra:
        row, _, cell = e.partition("=")
        col, _, text = cell.partition(":")
        if not (row and col):
            ap.error(f"--extra {e!r}: expected ROW=COLUMN:TEXT")
        extra.setdefault(row, {})[col] = text
    for path in args.reports:
        print(f"<!-- {path} -->")
        print(markdown_table(json.loads(Path(path).read_text()), extra))
        print()


if __name__ == "__main__":
    main()
