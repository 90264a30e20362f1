"""Text-to-music streaming generation: the main job (``lmdm generate``).

The model generates block by block with a streamer (block-causal LMDM with KV cache by default); every block is
decoded to audio as soon as it exists (``StreamingDecoder``), exactly as a live session would. Prompts may change
between blocks (a schedule of ``(start_seconds, prompt)``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lmdm.audio.decoder import StreamingDecoder
from lmdm.checkpoint import Checkpoint
from lmdm.errors import UsageError
from lmdm.streaming.streamer import MASKS, SamplerConfig, StreamStats, checkpoint_sampler, make_streamer
from lmdm.streaming.threads import stream_governor
from lmdm.text import encode_prompts

MAX_SECONDS = 3600.0


@dataclass
class Generation:
    """The result of :func:`generate`.

    Attributes:
        audio: ``(samples,)`` float32 mono at ``sample_rate``, exactly the requested length.
        latents: ``(frames, channels)`` the generated latent frames, on the CPU (``codec.latent_to_mel`` makes
            them a spectrogram).
        sample_rate: Hz.
        stats: model timings (bootstrap, fused first step, subsequent steps, per block).
        model_s: seconds spent in the model; decode_s: seconds spent decoding audio.
    """

    audio: np.ndarray
    latents: torch.Tensor
    sample_rate: int
    stats: StreamStats
    model_s: float
    decode_s: float

    @property
    def seconds(self) -> float:
        """Length of ``audio`` in seconds."""
        return len(self.audio) / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: compute time (model + decoding) / audio time (< 1 is faster than real time)."""
        return (self.model_s + self.decode_s) / max(self.seconds, 1e-9)


def check_seconds(seconds: float) -> float:
    """Validate a requested duration.

    Raises:
        UsageError: not a finite number in (0, 3600] seconds.
    """
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"seconds must be a positive number, got {seconds!r}")
    if seconds > MAX_SECONDS:
        raise UsageError(f"seconds must be at most {MAX_SECONDS:.0f} (one hour) per call, got {seconds}")
    return float(seconds)


def prompt_schedule(prompt) -> list[tuple[float, object]]:
    """Normalise a prompt or a schedule of ``(start_seconds, prompt)`` into a sorted schedule starting at 0.

    A prompt is text or a ``(384,)`` embedding tensor (``lmdm.text.blend_prompts``).
    """
    if isinstance(prompt, (str, torch.Tensor)):
        return [(0.0, prompt)]
    sched = sorted(((float(t), p) for t, p in prompt), key=lambda tp: tp[0])
    if not sched or sched[0][0] > 0:
        sched.insert(0, (0.0, ""))
    return sched


def generate(ckpt: Checkpoint, prompt: str | list[tuple[float, str]], seconds: float,
             sampler: SamplerConfig | None = None, mask: str = "block_causal",
             controls: torch.Tensor | None = None,
             on_block: Callable[[int, np.ndarray], None] | None = None,
             block_filter: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Generation:
    """Stream ``seconds`` of music from a checkpoint.

    Args:
        ckpt: a loaded checkpoint (``lmdm.checkpoint.load_checkpoint``).
        prompt: text (or a ``(384,)`` prompt embedding), or a schedule ``[(start_seconds, prompt), ...]``; a
            change applies from the next block. ``""`` is unconditional.
        seconds: length of the result in seconds (0 < seconds <= 3600).
        sampler: steps, sampler, CFG scale, seed; None = the checkpoint's own
            (:func:`lmdm.streaming.streamer.checkpoint_sampler`).
        mask: "block_causal" (LMDM with persistent KV cache), "enc_dec" or "outpainting" (the baseline).
        controls: ``(frames, control_dim)`` control channels for the whole stream (``lmdm.control.features``), or None.
        on_block: called after each block with ``(block_index, audio_chunk)`` (live playback, progress).
        block_filter: the streamer's ``block_filter`` (each block before it is kept, cached and decoded), e.g. a
            ``lmdm.streaming.level_guard.LevelGuard``; None = none.

    Raises:
        UsageError: bad ``seconds``, ``mask``, ``controls`` shape or prompt embedding shape.
    """
    seconds = check_seconds(seconds)
    if mask not in MASKS:
        raise UsageError(f"unknown mask {mask!r}; choose one of {', '.join(MASKS)}")
    sampler = checkpoint_sampler(ckpt.info) if sampler is None else sampler
    model, codec = ckpt.model, ckpt.codec
    B = model.cfg.block_frames
    frames = math.ceil(seconds * codec.cfg.frame_rate)
    n_blocks = math.ceil(frames / B)
    if controls is not None and (controls.dim() != 2 or controls.shape[1] != model.cfg.control_dim):
        raise UsageError(f"controls must be (frames, {model.cfg.control_dim}), got {tuple(controls.shape)}")
    sched = prompt_schedule(prompt)
    texts = sorted({p for _, p in sched if isinstance(p, str)})
    emb, has = encode_prompts(texts) if texts else (None, None)
    by_text = {p: (emb[i : i + 1], has[i : i + 1]) for i, p in enumerate(texts)}
    for _, p in sched:
        if isinstance(p, torch.Tensor):
            if p.shape != (model.cfg.text_dim,):
                raise UsageError(f"a prompt embedding must have shape ({model.cfg.text_dim},), got {tuple(p.shape)}")
            by_text[id(p)] = (p[None].float(), torch.ones(1, dtype=torch.bool))
    streamer = make_streamer(model, mask, sampler)
    streamer.block_filter = block_filter
    decoder = StreamingDecoder(codec, seed=sampler.seed)
    streamer.reset()
    chunks, current = [], None
    model_s = decode_s = 0.0
    governor = stream_governor()  # an adaptive thread policy (lmdm.streaming.threads), or None
    spb = B / codec.cfg.frame_rate
    try:
        for i in range(n_blocks):
            text = [p for t, p in sched if t <= i * spb + 1e-9][-1]
            key = id(text) if isinstance(text, torch.Tensor) else text
            if key != current:
                streamer.set_prompt(*by_text[key])
                current = key
            ctrl = None
            if controls is not None:
                part = controls[i * B : (i + 1) * B]
                ctrl = torch.cat([part, part.new_zeros(B - part.shape[0], part.shape[1])])[None] if len(part) else None
            t0 = time.perf_counter()
            if governor is not None:
                governor.start_block()
            block = streamer.next_block(ctrl)
            if governor is not None:
                governor.end_block()
            t1 = time.perf_counter()
            audio = decoder.push(block[0].cpu())  # the codec decodes on the CPU, whatever the model's device
            decode_s += time.perf_counter() - t1
            model_s += t1 - t0
            chunks.append(audio)
            if on_block is not None:
                on_block(i, audio)
    finally:
        if governor is not None:
            governor.close()  # the thread count the stream started with
    chunks.append(decoder.flush())
    n = int(round(seconds * codec.cfg.sample_rate))
    audio = np.concatenate(chunks)[:n]
    return Generation(audio=audio, latents=streamer.history[0, :frames].cpu(), sample_rate=codec.cfg.sample_rate,
                      stats=streamer.stats, model_s=model_s, decode_s=decode_s)


def stream_latents(ckpt: Checkpoint, prompt, seconds: float, sampler: SamplerConfig | None = None,
                   mask: str = "block_causal", progress: bool = False) -> torch.Tensor:
    """Latent frames ``(frames, channels)`` of a stream, without decoding audio (for long-stream measurements);
    ``sampler`` as in :func:`generate` (None = the checkpoint's own).

    Raises:
        UsageError: bad ``seconds`` or ``mask``.
    """
    from tqdm.auto import tqdm

    seconds = check_seconds(seconds)
    model = ckpt.model
    B = model.cfg.block_frames
    frames = math.ceil(seconds * ckpt.codec.frame_rate)
    streamer = make_streamer(model, mask, checkpoint_sampler(ckpt.info) if sampler is None else sampler)
    streamer.set_prompt(*encode_prompts(prompt))
    streamer.reset()
    for _ in tqdm(range(math.ceil(frames / B)), desc="streaming", unit="block", disable=not progress):
        streamer.next_block()
    return streamer.history[0, :frames].cpu()
