"""The learned latent: a small autoencoder from one mel patch (``patch * n_mels`` numbers, 64 ms) to a compact
latent frame (``latent_channels`` numbers) and back.

Every anchor diffuses in a learned latent (Stable Audio's VAE, Magenta RealTime's SpectroStream): a small DiT then
spends its capacity on music rather than on spectrogram detail. This one is deliberately simple so that the
streaming machinery does not change: the encoder maps **each latent frame on its own** (an MLP over the 4 mel
frames of a patch), and the decoder sees the latent frame and the ``decoder_context`` frames **before** it, never
after, so a block decodes without look-ahead; the KV cache, masks and streamers see a latent like any other, and a
latent stays easy to look at (``decode`` gives the mel spectrogram back).

Why the decoder looks back: a decoder of one frame alone makes an error of its own in every frame, so the
spectrum jumps at every latent-frame boundary (measured: real music through such an autoencoder reads a frame
seam ratio of 1.42, a 15.6 Hz flutter; ``lmdm.eval.seams``). Seeing the previous frame lets it continue where that
frame ended, and the training loss also matches the spectrogram's frame-to-frame differences across boundaries.

Regularisation: the decoder is trained on latents with Gaussian noise added at ``latent_noise`` times their
standard deviation, so nearby latents decode to nearby spectrograms (what a diffusion model's small errors need;
the role of Stable Audio's KL term). After training, the latent is standardised (per-channel mean removed, one
global scale) with statistics measured on the training split, so the diffusion model sees roughly unit variance.

Training is ``lmdm.train.autoencoder`` (``lmdm autoencoder train``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmdm.atomic import atomic_folder
from lmdm.config import ConfigError, from_dict, read_json, to_dict
from lmdm.errors import LmdmError


class AutoencoderError(LmdmError, RuntimeError):
    """An autoencoder folder that is missing, corrupt or for another codec; the message says what to do."""


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and training of the patch autoencoder.

    Attributes:
        in_channels: numbers per mel patch (the mel codec's ``patch * n_mels``; 512 by default).
        latent_channels: numbers per latent frame (what the DiT diffuses).
        hidden: width of the MLP's hidden layers.
        depth: hidden layers on each side (encoder and decoder), each ``Linear + GELU`` with a residual.
        decoder_context: latent frames before the decoded one that the decoder sees (0 = frame by frame).
        latent_noise: training noise on the latent, relative to the batch's latent standard deviation.
        seam_weight: weight of the loss on frame-to-frame differences of the decoded spectrogram (0 = off).
        crop_frames: consecutive latent frames per training example.
        steps, batch_size, lr: training (AdamW, warm-up + cosine); a batch is ``batch_size`` crops.
        seed: initialisation and data order.
    """

    in_channels: int = 512
    latent_channels: int = 64
    hidden: int = 1024
    depth: int = 2
    decoder_context: int = 1
    latent_noise: float = 0.1
    seam_weight: float = 1.0
    crop_frames: int = 8
    steps: int = 6000
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)!r}" for k in ("in_channels", "latent_channels", "hidden", "depth", "steps",
                                                      "batch_size") if getattr(self, k) < 1]
        if self.crop_frames < self.decoder_context + 2 or self.decoder_context < 0:
            bad.append(f"crop_frames={self.crop_frames!r}, decoder_context={self.decoder_context!r}")
        if not self.lr > 0 or not self.latent_noise >= 0 or not self.seam_weight >= 0:
            bad.append(f"lr={self.lr!r}, latent_noise={self.latent_noise!r}, seam_weight={self.seam_weight!r}")
        if bad:
            raise ConfigError(f"invalid autoencoder settings: {', '.join(bad)} (sizes, depth and steps must be >= 1, "
                              "decoder_context >= 0, crop_frames >= decoder_context + 2, lr > 0, latent_noise >= 0, "
                              "seam_weight >= 0)")


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.gelu(self.fc(self.norm(h)))


def _mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), *[_Residual(hidden) for _ in range(depth)],
                         nn.LayerNorm(hidden), nn.Linear(hidden, n_out))


class PatchAutoencoder(nn.Module):
    """Mel patches ``(..., in_channels)`` -> latent frames ``(..., latent_channels)`` frame by frame; latent
    sequences ``(..., frames, latent_channels)`` -> mel patches, each frame decoded with the ``decoder_context``
    frames before it.

    ``encode`` returns the standardised latent (``latent_mean``/``latent_scale`` buffers; identity until
    :meth:`set_latent_stats`), ``decode`` inverts the standardisation first.
    """

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = _mlp(cfg.in_channels, cfg.hidden, cfg.depth, cfg.latent_channels)
        self.decoder = _mlp(cfg.latent_channels * (1 + cfg.decoder_context), cfg.hidden, cfg.depth, cfg.in_channels)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_scale", torch.ones(()))

    def raw_encode(self, patches: torch.Tensor) -> torch.Tensor:
        """The encoder's output before standardisation, ``(..., latent_channels)``."""
        return self.encoder(patches)

    def raw_decode(self, z: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Un-standardised latent sequence ``(..., frames, latent_channels)`` -> mel patches ``(..., frames,
        in_channels)``.

        Args:
            previous: ``(..., k, latent_channels)`` un-standardised frames before the first (a stream's earlier
                frames; the last ``decoder_context`` are used). Missing context repeats the first frame.
        """
        k = self.cfg.decoder_context
        if k == 0:
            return self.decoder(z)
        before = z[..., :1, :].expand(*z.shape[:-2], k, z.shape[-1])
        if previous is not None and previous.shape[-2]:
            before = torch.cat([before, previous.expand(*z.shape[:-2], *previous.shape[-2:])], dim=-2)[..., -k:, :]
        seq = torch.cat([before, z], dim=-2)  # (..., k + frames, ch)
        n = z.shape[-2]
        # frame i sees frames i-k .. i of seq, oldest first
        ctx = torch.cat([seq[..., j : j + n, :] for j in range(k + 1)], dim=-1)
        return self.decoder(ctx)

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """Mel patches ``(..., in_channels)`` (normalised log-mel) -> standardised latent ``(..., latent_channels)``."""
        self._check(patches, self.cfg.in_channels, "mel patch")
        return (self.raw_encode(patches) - self.latent_mean) / self.latent_scale

    def decode(self, latent: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised latent sequence ``(..., frames, latent_channels)`` -> mel patches ``(..., frames,
        in_channels)``; ``previous`` ``(..., k, latent_channels)``: standardised frames before the first (streams
        decoding block by block pass the end of the last block; None at the start)."""
        self._check(latent, self.cfg.latent_channels, "latent")
        un = lambda z: z * self.latent_scale + self.latent_mean
        return self.raw_decode(un(latent), None if previous is None else un(previous))

    @torch.no_grad()
    def set_latent_stats(self, patches: torch.Tensor, batch: int = 65536) -> None:
        """Measure the standardisation on ``patches`` ``(n, in_channels)``: per-channel mean, one global scale
        (the RMS of the centred latent over all channels)."""
        z = torch.cat([self.raw_encode(patches[i : i + batch].float()) for i in range(0, len(patches), batch)])
        mean = z.mean(0)
        self.latent_mean.copy_(mean)
        self.latent_scale.copy_((z - mean).pow(2).mean().sqrt())

    @staticmethod
    def _check(x: torch.Tensor, channels: int, what: str) -> None:
        if x.shape[-1] != channels:
            raise ValueError(f"{what} has {x.shape[-1]} channels, the autoencoder expects {channels}")


def save_autoencoder(path: str | Path, model: PatchAutoencoder, codec: dict, metrics: dict) -> Path:
    """Write an autoencoder folder atomically: ``model.safetensors`` (float32) and ``config.json``
    (``{"autoencoder": AutoencoderConfig, "codec": the mel CodecConfig as a dict, "metrics": ...}``)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_folder(path) as tmp:
        save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"autoencoder": to_dict(model.cfg), "codec": codec,
                                                     "metrics": metrics}, indent=1))
    return path


def autoencoder_from_state(cfg: AutoencoderConfig, state: dict[str, torch.Tensor], where: str) -> PatchAutoencoder:
    """A :class:`PatchAutoencoder` (eval mode, frozen) with weights ``state``.

    Raises:
        AutoencoderError: the weights do not fit ``cfg`` (``where`` names the file in the message).
    """
    model = PatchAutoencoder(cfg)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise AutoencoderError(f"{where} does not match the autoencoder config: {str(e)[:300]}") from e
    return model.eval().requires_grad_(False)


def load_autoencoder(path: str | Path) -> tuple[PatchAutoencoder, dict, dict]:
    """Load an autoencoder folder written by :func:`save_autoencoder`.

    Returns:
        ``(model in eval mode, the mel codec settings it was trained for as a dict, metrics)``.

    Raises:
        AutoencoderError: no autoencoder at ``path`` (train one with ``lmdm autoencoder train``), or corrupt files.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise AutoencoderError(f"no autoencoder at {path}; train one with `lmdm autoencoder train`")
    meta = read_json(path / "config.json", AutoencoderError, "autoencoder config")
    if not isinstance(meta, dict) or "autoencoder" not in meta or "codec" not in meta:
        raise AutoencoderError(f"{path / 'config.json'} is not an autoencoder config (needs 'autoencoder' and 'codec')")
    try:
        cfg = from_dict(AutoencoderConfig, meta["autoencoder"], where=str(path / "config.json"))
    except ConfigError as e:
        raise AutoencoderError(str(e)) from e
    try:
        state = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise AutoencoderError(f"{path / 'model.safetensors'} is missing or corrupt ({e}); retrain with "
                               "`lmdm autoencoder train`") from e
    return autoencoder_from_state(cfg, state, str(path / "model.safetensors")), meta["codec"], meta.get("metrics", {})
