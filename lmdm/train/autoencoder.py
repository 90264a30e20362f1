"""``lmdm autoencoder train``: train the patch autoencoder of the learned latent (``lmdm.audio.autoencoder``) on
the mel patches of a built data set, as a task of the one training loop (``lmdm.train.loop``): AdamW with warm-up +
cosine, an EMA of the weights, checkpoints that ``--resume`` continues exactly, the CSV log and the tqdm bar.

Examples are crops of ``crop_frames`` consecutive latent frames. Loss: mean squared error of the reconstructed
normalised log-mel, plus ``seam_weight`` times the mean squared error of its frame-to-frame differences (which keeps
the decoded spectrogram continuous across latent-frame boundaries), the decoder seeing the latent with Gaussian
noise of ``latent_noise`` times the batch's latent standard deviation. The exported folder holds the EMA weights
with the latent standardisation measured on the training split, and its validation error (with and without latent
noise) beside the error of a PCA of the same size, the linear baseline it has to beat.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmdm.audio.autoencoder import AutoencoderConfig, PatchAutoencoder, save_autoencoder
from lmdm.audio.codec import CodecConfig
from lmdm.config import to_dict
from lmdm.errors import LmdmError
from lmdm.train.dataset import DataError, load_latent_set
from lmdm.train.loop import (
    LoopSettings,
    LoopState,
    Task,
    optimizer_step,
    run_loop,
    settle_config,
    smoothed_loss,
    warmup_cosine,
    write_config,
)

CKPT_EVERY, LOG_EVERY, VAL_EVERY = 500, 50, 1000
CHANGEABLE = {"run_dir", "out"}


class AutoencoderTrainingError(LmdmError, RuntimeError):
    """An autoencoder run that cannot start or resume as asked; the message says what to do."""


@dataclass(frozen=True)
class AutoencoderRun:
    """One training run, as saved in ``RUN/config.json`` (a resume must match it).

    Attributes:
        data: the data set folder (its cached mel patches are the training data).
        autoencoder: architecture and training.
        codec: the mel codec whose patches are encoded.
        run_dir: checkpoints, log and ``final/``.
        out: where the final autoencoder is also written (None: only ``RUN/final``).
    """

    data: str = "data/music"
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    codec: CodecConfig = CodecConfig()
    run_dir: str = "runs/autoencoder"
    out: str | None = None


def split_frames(latents: torch.Tensor, frame_work: torch.Tensor, splits: list[str], split: str) -> torch.Tensor:
    """The frames ``(n, channels)`` of the works in ``split`` (float32)."""
    keep = torch.tensor([s == split for s in splits])[frame_work.long()]
    return latents[keep].float()


def reconstruction_losses(model: PatchAutoencoder, x: torch.Tensor, n_mels: int, noise: float,
                          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mse, seam)`` of ``model`` reconstructing crops ``x`` ``(n, frames, in_channels)`` with latent noise
    ``noise`` (relative to the batch's latent standard deviation; 0 = none): the MSE of the normalised log-mel and
    the MSE of its frame-to-frame differences (``n_mels`` bands per mel frame)."""
    z = model.raw_encode(x)
    if noise > 0:
        z = z + noise * z.detach().std() * torch.randn(z.shape, generator=generator)
    rec = model.raw_decode(z)
    n, t, _ = x.shape
    diff = lambda a: torch.diff(a.reshape(n, -1, n_mels), dim=1)
    return F.mse_loss(rec, x), F.mse_loss(diff(rec), diff(x))


def pca_error(train: torch.Tensor, val: torch.Tensor, k: int, fit_frames: int = 60000) -> float:
    """Validation MSE of a rank-``k`` PCA fitted on (a subsample of) ``train``: the linear baseline."""
    g = torch.Generator().manual_seed(0)
    sub = train[torch.randperm(len(train), generator=g)[:fit_frames]]
    mu = sub.mean(0)
    _, _, v = torch.linalg.svd(sub - mu, full_matrices=False)
    p = v[:k]
    rec = (val - mu) @ p.T @ p + mu
    return float(F.mse_loss(rec, val))


def train_autoencoder(run_cfg: AutoencoderRun | None = None, resume: bool = False, progress: bool = True,
                      run_dir: str | Path | None = None) -> dict:
    """Train (or resume) the patch autoencoder; the final EMA model goes to ``RUN/final`` and ``run_cfg.out``.

    Returns:
        ``{"val_mse", "val_diff_mse", "val_mse_noisy", "pca_val_mse", "step", "hours", "final_dir"}``: validation
        MSE in normalised log-mel units (a unit is ``codec.std`` nats of mel magnitude), of the frame-to-frame
        differences, with latent noise, and the same-size PCA's.

    Raises:
        AutoencoderTrainingError: a fresh run into a folder with checkpoints, or a resume with other settings.
        DataError: the data folder is missing or has no validation split.
    """
    cfg_run, run, existing = settle_config(AutoencoderRun, run_cfg, resume=resume, run_dir=run_dir, overrides=None,
                                           changeable=CHANGEABLE, error=AutoencoderTrainingError)
    cfg = cfg_run.autoencoder
    if cfg.in_channels != cfg_run.codec.channels:
        raise AutoencoderTrainingError(f"autoencoder in_channels ({cfg.in_channels}) must equal the codec's "
                                       f"patch * n_mels ({cfg_run.codec.channels})")
    data = load_latent_set(cfg_run.data, cfg_run.codec, progress=progress)
    n_mels, L = cfg_run.codec.n_mels, cfg.crop_frames
    train = split_frames(data.latents, data.frame_work, data.splits, "train")
    train_starts = data.valid_starts("train", L)
    try:
        val_starts = data.valid_starts("val", L)
    except DataError:
        val_starts = train_starts  # tiny data sets (tests) may have no validation work
    val_starts = val_starts[torch.randperm(len(val_starts), generator=torch.Generator().manual_seed(1))[:2500]]
    crops = lambda starts: data.latents[starts[:, None] + torch.arange(L)].float()
    val = crops(val_starts)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = PatchAutoencoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)

    def train_step(state: LoopState) -> dict:
        x = crops(train_starts[torch.randint(len(train_starts), (cfg.batch_size,), generator=gen)])
        model.train()
        mse, seam = reconstruction_losses(model, x, n_mels, cfg.latent_noise, gen)
        loss = mse + cfg.seam_weight * seam
        lr = optimizer_step(loss, opt, model.parameters(), 1.0)
        return {"loss": loss.item(), "lr": lr, "train_loss": smoothed_loss(state, loss.item())}

    def val_errors(m: PatchAutoencoder) -> dict:
        m.eval()
        with torch.no_grad():
            mse, seam = reconstruction_losses(m, val, n_mels, 0.0, None)
            noisy, _ = reconstruction_losses(m, val, n_mels, cfg.latent_noise, torch.Generator().manual_seed(2))
        return {"val_mse": float(mse), "val_diff_mse": float(seam), "val_mse_noisy": float(noisy)}

    def validate(state: LoopState) -> dict | None:
        if state.step % VAL_EVERY and state.step != cfg.steps:
            return None
        return val_errors(state.ema)

    def export_info(state: LoopState) -> dict:
        return {**val_errors(state.ema), "pca_val_mse": pca_error(train, val.reshape(-1, val.shape[-1]),
                                                                  cfg.latent_channels),
                "step": state.step, "train_hours_cpu": round(state.elapsed_s / 3600, 3), "data": cfg_run.data}

    def save(path: Path, m: PatchAutoencoder, info: dict) -> Path:
        m.set_latent_stats(train)
        return save_autoencoder(path, m, to_dict(cfg_run.codec), info)

    task = Task(modules={"model": model}, optimizers={"": opt}, generator=gen, train_step=train_step,
                save_model=save, export_info=export_info, ema_decay=lambda n: min(0.999, (1 + n) / (10 + n)),
                lr_factor={"": lambda s: warmup_cosine(s, min(200, cfg.steps // 10), cfg.steps, 0.05)},
                validate=validate)
    settings = LoopSettings(run_dir=run, steps=cfg.steps, ckpt_every=CKPT_EVERY, log_every=LOG_EVERY,
                            export_dir=cfg_run.out, columns=(("loss", ".5f"), ("lr", ".3e"), ("val_mse", ".5f")),
                            postfix=(("loss", "train_loss"), ("val", "val_mse")), desc="training autoencoder",
                            progress=progress)
    write_config(run, cfg_run)
    out = run_loop(settings, task, resume_from=existing)
    info = export_info(out.state)
    return {**info, "hours": out.hours, "final_dir": out.final_dir}
