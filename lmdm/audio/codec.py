"""The "codec": audio <-> latent frames, decoded with Griffin-Lim.

A mel patch is ``patch`` consecutive normalised log-mel frames stacked into one vector (``patch * n_mels``
numbers, 64 ms). Without an autoencoder the patch *is* the latent frame (the raw-mel latent, 512 numbers); with
one (``lmdm.audio.autoencoder``, the default models' learned latent) the latent frame is the autoencoder's
compact code of the patch (64 numbers), encoded and decoded frame by frame. With the defaults:

=====================  ==========================================
sample rate            16,000 Hz, mono
STFT                   n_fft 1024 (64 ms Hann window), hop 256 (16 ms)
mel                    128 bands, 0 - 8000 Hz (Slaney, librosa's filterbank)
log                    natural log of mel magnitude, floor 1e-5
normalisation          (log_mel - mean) / std with fixed constants
latent frame           4 mel frames = 1024 samples = 64 ms
latent frame rate      15.625 frames/s
latent channels        512 (raw mel patches) or the autoencoder's (64)
=====================  ==========================================

A latent is visible: ``latent_to_mel`` decodes it (through the autoencoder, if any) and reshapes it to
``(frames * patch, n_mels)``, a spectrogram.
Decoding maps mel magnitudes back to linear STFT magnitudes with the filterbank's pseudo-inverse (clamped at 0)
and recovers phase with Griffin-Lim (``lmdm.audio.griffinlim``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from lmdm.audio.griffinlim import PHASE_INITS, griffin_lim, stft
from lmdm.config import ConfigError


@dataclass(frozen=True)
class CodecConfig:
    """Mel codec settings (see the module docstring for the defaults' meaning).

    Attributes:
        sample_rate: Hz.
        n_fft: STFT size and Hann window length, samples.
        hop: STFT hop, samples.
        n_mels: mel bands.
        fmin, fmax: mel filterbank range, Hz.
        patch: mel frames per latent frame.
        log_floor: magnitude floor before the log.
        mean, std: normalisation of the log-mel values (measured on the built data set, fixed here so that the
            codec is a pure function).
        gl_iters: Griffin-Lim iterations when decoding (16 from the gradient phase reach the spectral convergence
            that 32 reached from random phase: ``scripts/gl_convergence.py``).
        gl_momentum: fast Griffin-Lim momentum.
        gl_init: Griffin-Lim's starting phase, "gradient" (integrated from the magnitude, continuing a stream's
            decoded frames; ``lmdm.audio.griffinlim.gradient_phase``) or "random" (what checkpoints decoded with
            before; their configs lack the field and decode with the gradient phase now).
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 8000.0
    patch: int = 4
    log_floor: float = 1e-5
    mean: float = -5.0
    std: float = 2.5
    gl_iters: int = 16
    gl_momentum: float = 0.99
    gl_init: str = "gradient"

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.hop <= 0 or self.n_fft < self.hop or self.patch <= 0 or self.n_mels <= 0:
            raise ConfigError(f"invalid codec settings (need sample_rate, hop, patch, n_mels > 0 and n_fft >= hop): {self}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin} fmax={self.fmax}")
        if self.gl_iters < 1 or not 0 <= self.gl_momentum < 1 or not self.std > 0 or not self.log_floor > 0:
            raise ConfigError(f"need gl_iters >= 1, 0 <= gl_momentum < 1, std > 0 and log_floor > 0, got "
                              f"gl_iters={self.gl_iters}, gl_momentum={self.gl_momentum}, std={self.std}, "
                              f"log_floor={self.log_floor}")
        if self.gl_init not in PHASE_INITS:
            raise ConfigError(f"gl_init must be one of {', '.join(PHASE_INITS)}, got {self.gl_init!r}")

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per latent frame."""
        return self.hop * self.patch

    @property
    def frame_rate(self) -> float:
        """Latent frames per second."""
        return self.sample_rate / self.samples_per_frame

    @property
    def channels(self) -> int:
        """Numbers per latent frame (``patch * n_mels``)."""
        return self.patch * self.n_mels


def log_mel_to_magnitude(mel: torch.Tensor, mel_pinv: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Normalised log-mel ``(batch, mel_frames, n_mels)`` -> linear STFT magnitude ``(batch, bins, mel_frames)``:
    undo the normalisation and the log, then the mel filterbank's pseudo-inverse ``mel_pinv`` ``(bins, n_mels)``,
    negatives clipped to 0. Differentiable in ``mel`` (ARC's peak ceiling, ``lmdm.train.arc.level.frame_peaks``)."""
    m = (mel.float() * std + mean).exp().transpose(1, 2)
    return torch.matmul(mel_pinv, m).clamp_min(0.0)


# the settings that only decide how a latent is decoded to audio, not what it means
DECODING_FIELDS = ("gl_iters", "gl_momentum", "gl_init")


def mel_settings(codec: dict) -> dict:
    """A codec config (as a dict, e.g. a checkpoint's ``config.json["codec"]``) without its Griffin-Lim decoding
    settings (:data:`DECODING_FIELDS`): what two codecs must share for their latents and lenses to compare."""
    return {k: v for k, v in codec.items() if k not in DECODING_FIELDS}


class MelCodec:
    """Audio <-> latent frames for one :class:`CodecConfig` and an optional learned latent.

    Args:
        cfg: the mel settings.
        autoencoder: a frozen ``lmdm.audio.autoencoder.PatchAutoencoder`` (its ``in_channels`` must be
            ``cfg.channels``); None = the raw-mel latent (the patch is the latent frame).

    Raises:
        ValueError: an autoencoder for another patch size.
    """

    def __init__(self, cfg: CodecConfig = CodecConfig(), autoencoder=None):
        self.cfg = cfg
        self.autoencoder = autoencoder
        if autoencoder is not None and autoencoder.cfg.in_channels != cfg.channels:
            raise ValueError(f"the autoencoder encodes {autoencoder.cfg.in_channels}-number patches, the codec makes "
                             f"{cfg.channels} (patch * n_mels)")

    def with_decoding(self, **settings) -> "MelCodec":
        """The same mel settings and autoencoder, decoded with other Griffin-Lim ``settings``
        (:data:`DECODING_FIELDS`, checked by :class:`CodecConfig`).

        Raises:
            ValueError: a setting that is not a decoding setting.
        """
        if set(settings) - set(DECODING_FIELDS):
            raise ValueError(f"only decoding settings ({', '.join(DECODING_FIELDS)}) can change, "
                             f"got {sorted(settings)}")
        return MelCodec(replace(self.cfg, **settings), self.autoencoder)

    # the mel settings a caller usually needs, so a codec can stand in for its config
    @property
    def sample_rate(self) -> int:
        """Hz."""
        return self.cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        """Latent frames per second."""
        return self.cfg.frame_rate

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per latent frame."""
        return self.cfg.samples_per_frame

    @property
    def channels(self) -> int:
        """Numbers per latent frame: the autoencoder's ``latent_channels``, or ``patch * n_mels`` without one."""
        return self.cfg.channels if self.autoencoder is None else self.autoencoder.cfg.latent_channels

    @cached_property
    def mel_basis(self) -> torch.Tensor:
        """``(n_mels, n_fft // 2 + 1)`` Slaney mel filterbank from librosa."""
        import librosa

        c = self.cfg
        m = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax)
        return torch.from_numpy(m.astype(np.float32))

    @cached_property
    def mel_pinv(self) -> torch.Tensor:
        """``(n_fft // 2 + 1, n_mels)`` pseudo-inverse of the filterbank (mel -> linear magnitude)."""
        return torch.linalg.pinv(self.mel_basis)

    @cached_property
    def window(self) -> torch.Tensor:
        """``(n_fft,)`` Hann window of the STFT."""
        return torch.hann_window(self.cfg.n_fft)

    def prepare_decoding(self) -> None:
        """Build what decoding needs (the filterbank's pseudo-inverse, the STFT window) now instead of on the first
        decode. Building the filterbank imports librosa, about 2 s in a fresh process: a streaming decoder calls
        this when it is made, so that a stream's first block does not wait for it (it made a cold ``lmdm
        generate`` report twice the decoding time of a warm one)."""
        _ = self.mel_pinv, self.window

    # ---- audio -> mel -> latent -------------------------------------------------------------------------------
    def audio_to_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel of ``audio``.

        Args:
            audio: ``(batch, samples)`` float in [-1, 1] at ``cfg.sample_rate``; right-padded with zeros to a
                whole number of latent frames.

        Returns:
            ``(batch, mel_frames, n_mels)`` with ``mel_frames = ceil(samples / samples_per_frame) * patch``.
        """
        if audio.dim() != 2:
            raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
        c = self.cfg
        spf = c.samples_per_frame
        pad = (-audio.shape[1]) % spf
        if pad or audio.shape[1] == 0:
            audio = torch.nn.functional.pad(audio, (0, pad if audio.shape[1] else spf))
        mag = stft(audio.float(), c.n_fft, c.hop, self.window).abs()[..., :-1]  # (batch, bins, samples // hop)
        mel = torch.matmul(self.mel_basis, mag).clamp_min(c.log_floor).log()
        return ((mel - c.mean) / c.std).transpose(1, 2)

    def mel_to_latent(self, mel: torch.Tensor) -> torch.Tensor:
        """``(batch, mel_frames, n_mels)`` -> ``(batch, mel_frames // patch, patch * n_mels)``."""
        b, t, m = mel.shape
        p = self.cfg.patch
        if t % p:
            raise ValueError(f"mel frames ({t}) must be a multiple of patch ({p})")
        return mel.reshape(b, t // p, p * m)

    def patches_to_latent(self, patches: torch.Tensor) -> torch.Tensor:
        """Mel patches ``(..., patch * n_mels)`` -> latent frames ``(..., channels)`` (the autoencoder's encoder, or
        the identity for the raw-mel latent)."""
        if self.autoencoder is None:
            return patches
        with torch.no_grad():
            return self.autoencoder.encode(patches.float())

    def latent_to_patches(self, latent: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Latent frames ``(batch, frames, channels)`` -> mel patches ``(batch, frames, patch * n_mels)``.

        Args:
            previous: ``(batch, k, channels)`` latent frames just before ``latent`` (when a stream is decoded block
                by block: the end of the previous block), which the autoencoder's decoder looks back at; None at
                the start of a stream. Ignored by the raw-mel latent.

        Raises:
            ValueError: ``latent`` does not have ``channels`` channels.
        """
        if latent.shape[-1] != self.channels:
            raise ValueError(f"latent has {latent.shape[-1]} channels, the codec expects {self.channels}")
        if self.autoencoder is None:
            return latent
        with torch.no_grad():
            return self.autoencoder.decode(latent.float(), None if previous is None else previous.float())

    def latent_to_mel(self, latent: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, frames, channels)`` -> ``(batch, frames * patch, n_mels)`` (a viewable spectrogram);
        ``previous`` as in :meth:`latent_to_patches`.

        Raises:
            ValueError: ``latent`` does not have ``channels`` channels.
        """
        b, t, _ = latent.shape
        return self.latent_to_patches(latent, previous).reshape(b, t * self.cfg.patch, self.cfg.n_mels)

    @property
    def decoder_context(self) -> int:
        """Latent frames before a frame that decoding it looks at (0 for the raw-mel latent)."""
        return 0 if self.autoencoder is None else self.autoencoder.cfg.decoder_context

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio ``(batch, samples)`` -> latent ``(batch, frames, channels)`` (frames = samples / samples_per_frame,
        rounded up)."""
        return self.patches_to_latent(self.mel_to_latent(self.audio_to_mel(audio)))

    # ---- latent -> audio --------------------------------------------------------------------------------------
    def mel_to_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel ``(batch, mel_frames, n_mels)`` -> linear magnitude ``(batch, bins, mel_frames)``
        (:func:`log_mel_to_magnitude` with this codec's settings)."""
        return log_mel_to_magnitude(mel, self.mel_pinv, self.cfg.mean, self.cfg.std)

    def decode(self, latent: torch.Tensor, generator: torch.Generator | None = None,
               n_iter: int | None = None) -> torch.Tensor:
        """Latent ``(batch, frames, channels)`` -> audio ``(batch, frames * samples_per_frame)`` by Griffin-Lim."""
        c = self.cfg
        mag = self.mel_to_magnitude(self.latent_to_mel(latent))
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)  # one more centred frame so the output ends on a frame
        return griffin_lim(mag, c.n_fft, c.hop, n_iter or c.gl_iters, c.gl_momentum, generator=generator,
                           phase_init=c.gl_init)

    def encode_numpy(self, audio: np.ndarray) -> torch.Tensor:
        """Mono numpy audio ``(samples,)`` -> latent ``(frames, channels)``."""
        return self.encode(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None])[0]
