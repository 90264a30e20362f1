"""``lmdm metrics train-embedder``: train the classifier whose embedding the drift metrics use."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``metrics train-embedder``."""
    me = sub.add_parser("metrics", help="measurement tools").add_subparsers(dest="metrics_command", required=True)
    te = me.add_parser("train-embedder", help="train the audio classifier whose embedding the drift metrics use")
    te.add_argument("--data", default="data/music")
    te.add_argument("--out", default=None, help="default: data/checkpoints/embedder")
    te.add_argument("--steps", type=int, default=1500)
    te.add_argument("--run-dir", default=None, help="run folder for checkpoints and the log (default: runs/embedder)")
    te.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    te.set_defaults(func=run_train_embedder)


def run_train_embedder(args: argparse.Namespace) -> int:
    """Train (or resume) the embedder on ``--data`` and print its validation accuracy against the majority class.

    Raises:
        DataError: ``--data`` is not a built data set.
        EmbedderTrainingError: ``--run-dir`` already holds checkpoints (without ``--resume``), or ``--resume``
            with another data set or ``--steps``.
    """
    from lmdm.metrics.embedder import EmbedderConfig
    from lmdm.metrics.embedder_training import train_embedder

    m = train_embedder(args.data, args.out, EmbedderConfig(steps=args.steps), progress=not args.quiet,
                       run_dir=args.run_dir, resume=args.resume)
    print(f"validation accuracy: collection {m['val_collection_accuracy']:.3f} (majority class "
          f"{m['chance_collection']:.3f}), instrument {m['val_instrument_accuracy']:.3f} (majority "
          f"{m['chance_instrument']:.3f}) on {m['val_examples']} validation crops")
    return 0
