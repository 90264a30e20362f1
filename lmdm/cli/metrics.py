"""``lmdm metrics train-embedder`` and ``train-transcriber``: train the models the measurements rest on (the
classifier whose embedding the drift and distribution lenses use; the transcriber of the notes lens)."""
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
    tt = me.add_parser("train-transcriber", help="train the notes lens' transcriber on the data set's MIDI")
    tt.add_argument("--config", default=None, help="transcriber training config JSON (see configs/transcriber.json)")
    tt.add_argument("--data", default=None, help="override the data folder")
    tt.add_argument("--steps", type=int, default=None, help="override the number of steps")
    tt.add_argument("--run-dir", default=None, help="run folder (default: the config's, runs/transcriber)")
    tt.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    tt.set_defaults(func=run_train_transcriber)


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


def run_train_transcriber(args: argparse.Namespace) -> int:
    """Train (or resume) the transcriber, evaluate it on the validation split and print its F1 scores.

    Raises:
        ConfigError: ``--config`` is missing or does not describe a ``TranscriberTrainConfig``.
        DataError: the data folder is missing or has no MIDI.
        TranscriberError: ``--run-dir`` already holds checkpoints (without ``--resume``), or ``--resume`` with a
            changed config.
    """
    from lmdm.config import load_json
    from lmdm.eval.transcriber import TranscriberTrainConfig, train_transcriber

    cfg = load_json(TranscriberTrainConfig, args.config) if args.config else None
    if cfg is None and not args.resume:
        cfg = TranscriberTrainConfig()
    overrides = {k: v for k, v in (("data", args.data), ("steps", args.steps)) if v is not None}
    out = train_transcriber(cfg, resume=args.resume, progress=not args.quiet, run_dir=args.run_dir,
                            overrides=overrides or None)
    ev = out.get("eval") or {}
    print(f"step {out['step']} in {out['hours']:.2f} h; {out['params'] / 1e3:.0f}k parameters; saved to "
          f"{out['export_dir'] or out['final_dir']}")
    if ev:
        print(f"validation: note-onset F1 {ev.get('onset_f1', float('nan')):.3f}, frame F1 "
              f"{ev.get('frame_f1', float('nan')):.3f} (mir_eval)")
    return 0
