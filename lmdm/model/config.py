"""The DiT's config: size, and the streaming geometry it is trained for."""
from __future__ import annotations

from dataclasses import dataclass

from lmdm.config import ConfigError


@dataclass(frozen=True)
class DiTConfig:
    """Size and streaming geometry of an LMDM DiT.

    Attributes:
        latent_channels: numbers per latent frame (the codec's ``patch * n_mels``).
        d_model: transformer width.
        n_layers: transformer blocks.
        n_heads: attention heads (``d_model / n_heads`` must be even, for RoPE).
        mlp_ratio: MLP hidden width as a multiple of ``d_model``.
        text_dim: prompt embedding size (MiniLM: 384).
        control_dim: control input channels per frame (``lmdm.control.features``: 4 features + 3 group flags); 0 = none.
        block_frames: ``B``, frames per block/chunk (16 frames = 1.02 s at 15.625 frames/s).
        window_chunks: ``W``, clean chunks of context a block sees (context ``C = W * B`` frames).
        rope_base: RoPE base.
        qk_norm: RMS-normalise queries and keys per head (stabilises bf16 training).
        pitch_bins: if > 0, the melody control is also fed as a piano roll of this many semitones from MIDI
            ``pitch_low`` (linear interpolation between neighbouring semitones, weighted by the voiced channel)
            through a zero-initialised projection added to the token embedding (ControlNet's zero init, Zhang et
            al. 2023). A scalar pitch enters the input projection linearly, so it cannot say "energy at these mel
            bins"; a one-hot pitch can, which is what made the model follow a melody. 0 = off.
        pitch_low: MIDI note of the piano roll's first bin (36 = C2, the pitch trackers' lower limit).
    """

    latent_channels: int = 512
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384
    control_dim: int = 7
    block_frames: int = 16
    window_chunks: int = 4
    rope_base: float = 10000.0
    qk_norm: bool = True
    pitch_bins: int = 0
    pitch_low: int = 36

    def __post_init__(self) -> None:
        """Raises ConfigError: a head width that is not an even integer, a piano roll without pitch controls, or
        a block/window out of range."""
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"d_model ({self.d_model}) / n_heads ({self.n_heads}) must be an even integer")
        if self.pitch_bins < 0 or (self.pitch_bins and self.control_dim < 2):
            raise ConfigError(f"pitch_bins must be >= 0 and needs the pitch and voiced controls, got {self.pitch_bins}")
        if self.block_frames < 1 or self.window_chunks < 0:
            raise ConfigError(f"need block_frames >= 1 and window_chunks >= 0, got {self.block_frames}, {self.window_chunks}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def context_frames(self) -> int:
        """``C = W * B``."""
        return self.window_chunks * self.block_frames

    @property
    def mlp_hidden(self) -> int:
        return int(self.d_model * self.mlp_ratio)
