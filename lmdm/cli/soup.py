"""``lmdm soup``: a uniform model soup of ARC students, the mean of their DiT weights (``lmdm.train.arc.soup``)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``soup``."""
    s = sub.add_parser("soup", help="average the weights of ARC students of one base and config (other seeds)")
    s.add_argument("members", nargs="+", metavar="CHECKPOINT",
                   help="two or more checkpoint folders (e.g. runs/arc-s0/final runs/arc-s1/final)")
    s.add_argument("--out", required=True, help="folder of the averaged checkpoint")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the soup and print its folder and members.

    Raises:
        UsageError, CheckpointError: see ``lmdm.train.arc.soup.make_soup``.
    """
    from lmdm.train.arc.soup import make_soup

    out = make_soup(args.members, args.out)
    print(f"soup of {len(args.members)} students ({', '.join(args.members)}): {out}")
    return 0
