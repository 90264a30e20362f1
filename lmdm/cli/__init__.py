"""The ``lmdm`` command line: ``data build``, ``data example``, ``autoencoder train``, ``train``, ``generate``,
``bench``, ``sketch``, ``sketch-eval``, ``jam``, ``arc``, ``soup``, ``metrics train-embedder``, ``drift``,
``drift-study``, ``eval`` (one module per command; the sampler options shared by ``generate``, ``sketch``, ``jam``
and ``drift`` are declared once, in ``options``).

Errors: input a user can fix raises an :class:`lmdm.errors.LmdmError` and is printed as one
``lmdm: error: MESSAGE`` line (exit status 2; argparse's own errors also exit 2). Ctrl-C prints
``lmdm: interrupted`` (130). Any other exception is a bug in lmdm: its traceback is printed, then one line saying
so (exit status 1).
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings

from lmdm.cli import (
    arc,
    autoencoder,
    bench,
    data,
    drift,
    drift_study,
    evaluation,
    generate,
    jam,
    metrics,
    sketch,
    sketch_eval,
    soup,
    train,
)
from lmdm.errors import LmdmError

#: The command modules, in the order ``lmdm --help`` lists them; each has ``add_parser(subparsers)``.
COMMANDS = (data, autoencoder, train, generate, bench, sketch, sketch_eval, jam, arc, soup, metrics, drift,
            drift_study, evaluation)

BUG_LINE = "lmdm: this is a bug in lmdm, not in your input; please report it with the traceback above"


def build_parser() -> argparse.ArgumentParser:
    """The ``lmdm`` argument parser with every subcommand (each sets ``func``, the function that runs it)."""
    p = argparse.ArgumentParser(prog="lmdm", description="Live Music Diffusion Models: streaming music "
                                "generation with block-wise KV caching, on a CPU.")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def _warn_line(message, category, filename, lineno, file=None, line=None):
    print(f"lmdm: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``).

    Returns:
        the exit status: 0 done, 2 bad input (:class:`lmdm.errors.LmdmError`), 130 interrupted, 1 a bug in lmdm
        (any other exception; its traceback goes to stderr).

    Raises:
        SystemExit: from argparse, for ``--help`` (0) and unparseable arguments (2).
    """
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warn_line
        try:
            return args.func(args)
        except LmdmError as e:
            print(f"lmdm: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("lmdm: interrupted", file=sys.stderr)
            return 130
        except Exception:
            traceback.print_exc()
            print(BUG_LINE, file=sys.stderr)
            return 1
