"""``lmdm autoencoder train``: train the patch autoencoder of the learned latent (resumable)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``autoencoder train``."""
    ae = sub.add_parser("autoencoder", help="the learned latent").add_subparsers(dest="autoencoder_command",
                                                                                 required=True)
    t = ae.add_parser("train", help="train the patch autoencoder the default models diffuse in (resumable)")
    t.add_argument("--config", help="autoencoder run config JSON (see configs/autoencoder.json)")
    t.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    t.add_argument("--run-dir", help="run folder (overrides the config's run_dir)")
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Train (or resume) and print the validation error beside the same-size PCA's.

    Raises:
        ConfigError: ``--config`` is missing, not JSON, or not an ``AutoencoderRun``.
        AutoencoderTrainingError: a fresh run into a folder with checkpoints, or a resume with other settings.
    """
    from lmdm.config import load_json
    from lmdm.train.autoencoder import AutoencoderRun, train_autoencoder

    cfg = load_json(AutoencoderRun, args.config) if args.config else None
    if cfg is None and not args.resume:
        cfg = AutoencoderRun()
    r = train_autoencoder(cfg, resume=args.resume, progress=not args.quiet, run_dir=args.run_dir)
    print(f"step {r['step']} in {r['hours']:.2f} h: validation MSE {r['val_mse']:.4f} (with latent noise "
          f"{r['val_mse_noisy']:.4f}; a PCA of the same size {r['pca_val_mse']:.4f}), in normalised log-mel units; "
          f"saved to {r['final_dir']}")
    return 0
