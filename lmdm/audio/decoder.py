"""Streaming decode of latent blocks to audio without clicks at the seams.

Each block is decoded with Griffin-Lim over ``[last overlap mel frames of the previous block | the new block]``,
with the overlap frames' phase initialised from the previous block's output, so both decodes agree where they
overlap. The last ``crossfade`` seconds of every chunk are held back and equal-power cross-faded with the next
decode (``lmdm.audio.seams``). The added latency is the crossfade length (40 ms by default).
"""
from __future__ import annotations

import numpy as np
import torch

from lmdm.audio.codec import MelCodec
from lmdm.audio.griffinlim import griffin_lim, stft
from lmdm.audio.seams import crossfade


class StreamingDecoder:
    """Latent blocks in, audio chunks out, for one stream.

    Args:
        codec: the mel codec.
        overlap_mel_frames: mel frames of the previous block re-decoded with the new one (phase continuity).
        crossfade_s: seam crossfade length in seconds (must fit inside the overlap).
        seed: seeds Griffin-Lim's initial phase (same seed, same audio).
        gl_iters: Griffin-Lim iterations per block (default: the codec's).
    """

    def __init__(self, codec: MelCodec, overlap_mel_frames: int = 8, crossfade_s: float = 0.04, seed: int = 0,
                 gl_iters: int | None = None):
        c = codec.cfg
        self.codec = codec
        self.overlap = overlap_mel_frames
        self.xf = int(round(crossfade_s * c.sample_rate))
        if self.xf >= self.overlap * c.hop:
            raise ValueError(f"crossfade ({self.xf} samples) must be shorter than the overlap "
                             f"({self.overlap * c.hop} samples)")
        self.gl_iters = c.gl_iters if gl_iters is None else gl_iters
        if self.gl_iters < 1:
            raise ValueError(f"gl_iters must be >= 1, got {gl_iters}")
        self.generator = torch.Generator().manual_seed(seed)
        self.prev_mel: torch.Tensor | None = None  # (overlap, n_mels)
        self.prev_latent: torch.Tensor | None = None  # (1, decoder_context, channels): the decoder looks back
        self.prev_phase: torch.Tensor | None = None  # (bins, overlap)
        self.tail: np.ndarray | None = None  # held-back samples, (xf,)
        self.samples_out = 0

    def push(self, latent: torch.Tensor) -> np.ndarray:
        """Decode one block of latent frames ``(frames, channels)``; returns the next audio samples ``(n,)``.

        Over a stream, the returned chunks concatenated (plus :meth:`flush`) are exactly ``frames *
        samples_per_frame`` samples per block.
        """
        c = self.codec.cfg
        k = self.codec.decoder_context
        mel = self.codec.latent_to_mel(latent[None].float(), self.prev_latent)[0]  # (n, n_mels)
        if k:
            self.prev_latent = latent[None, -k:].float()
        o = 0 if self.prev_mel is None else self.prev_mel.shape[0]
        mel_in = mel if o == 0 else torch.cat([self.prev_mel, mel])
        mag = self.codec.mel_to_magnitude(mel_in[None])  # (1, bins, o + n)
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)
        init = torch.full(mag.shape, float("nan"))
        if o:
            init[0, :, :o] = self.prev_phase
        audio = griffin_lim(mag, c.n_fft, c.hop, self.gl_iters, c.gl_momentum, init_phase=init,
                            generator=self.generator)[0]
        spec = stft(audio[None], c.n_fft, c.hop, self.codec.window)[0]
        total = mel_in.shape[0]
        keep = min(self.overlap, total)
        self.prev_mel = mel_in[total - keep :]
        self.prev_phase = spec[:, total - keep : total].angle()
        a = audio.numpy()
        start = o * c.hop
        if self.tail is None:
            out = a[: len(a) - self.xf]
        else:
            seam = crossfade(self.tail, a[start - self.xf : start])
            out = np.concatenate([seam, a[start : len(a) - self.xf]])
        self.tail = a[len(a) - self.xf :].copy()
        self.samples_out += len(out)
        return out.astype(np.float32)

    def flush(self) -> np.ndarray:
        """The held-back tail at the end of a stream (``(xf,)`` samples, or empty)."""
        out = self.tail if self.tail is not None else np.zeros(0, dtype=np.float32)
        self.tail = None
        self.samples_out += len(out)
        return out.astype(np.float32)
