"""Plots the notebooks share: masks, the cache timeline, spectrograms of latents, metric curves.

Every function draws on a matplotlib ``Axes`` it is given (or creates a figure) and returns the ``Axes``, so a
notebook composes figures and the library stays free of notebook state.
"""
from __future__ import annotations

import numpy as np
import torch

from lmdm.audio.codec import MelCodec
from lmdm.model.cache import BlockCausalKVCache
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT


def _axes(ax, figsize=(4, 4)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def plot_mask(mask: torch.Tensor, title: str = "", ax=None, block: int | None = None, split: int | None = None):
    """Draw a boolean attention mask ``(queries, keys)``: dark = may attend.

    Args:
        block: draw chunk boundaries every ``block`` tokens.
        split: draw a thicker line after ``split`` tokens (e.g. between context and target, or clean and noisy).
    """
    ax = _axes(ax)
    m = mask.to(torch.float32).numpy()
    ax.imshow(m, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    if block:
        for i in range(block, max(m.shape), block):
            ax.axhline(i - 0.5, color="tab:blue", lw=0.4, alpha=0.5)
            ax.axvline(i - 0.5, color="tab:blue", lw=0.4, alpha=0.5)
    if split:
        ax.axhline(split - 0.5, color="tab:red", lw=1.2)
        ax.axvline(split - 0.5, color="tab:red", lw=1.2)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    return ax


def cache_timeline(window: int, n_blocks: int) -> np.ndarray:
    """What a real :class:`~lmdm.model.cache.BlockCausalKVCache` holds while generating each block.

    Drives the cache of a tiny random DiT (one frame per chunk, window ``W = window``) through a stream: an empty
    ``bootstrap``, then per block one ``step`` (the fused first step: it writes the pending block and evicts the
    oldest chunk) and ``advance``. Before and after each block's first step it reads ``cache.cached_chunks()``;
    the codes are what the cache reports, not a model of it.

    Returns:
        ``(n_blocks, n_blocks)`` codes: row = block being generated, column = chunk index;
        0 = not involved, 1 = in the cache (attended), 2 = written into the cache during this block's fused first
        step (the previous block), 3 = the target being denoised, 4 = evicted at this block.
    """
    cfg = DiTConfig(latent_channels=2, d_model=8, n_layers=1, n_heads=1, text_dim=2, control_dim=0,
                    block_frames=1, window_chunks=window)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
        model = DiT(cfg).eval()
    cache = BlockCausalKVCache(model)
    text_c = model.text_cond(torch.zeros(1, cfg.text_dim), torch.zeros(1, dtype=torch.bool))
    x_t, t = torch.zeros(1, 1, cfg.latent_channels), torch.ones(1)
    grid = np.zeros((n_blocks, n_blocks), dtype=np.int64)
    cache.bootstrap()
    for n in range(n_blocks):
        target = cache.next_chunk
        before = cache.cached_chunks()
        cache.step(x_t, t, text_c)  # the fused first step (from block 1 on): write the pending block, evict
        after = cache.cached_chunks()
        row = grid[n]
        row[after] = 1
        row[sorted(set(after) - set(before))] = 2
        row[sorted(set(before) - set(after))] = 4
        row[target] = 3
        cache.advance(torch.zeros(1, 1, cfg.latent_channels))
    return grid


def plot_cache_timeline(window: int, n_blocks: int, ax=None):
    """Draw :func:`cache_timeline` as a coloured grid with a legend."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ax = _axes(ax, (6, 4))
    colors = ["white", "tab:blue", "tab:green", "tab:orange", "lightgrey"]
    names = ["", "cached (attended)", "written in fused first step", "target block", "evicted"]
    ax.imshow(cache_timeline(window, n_blocks), cmap=ListedColormap(colors), vmin=0, vmax=4, interpolation="nearest")
    ax.set_xlabel("chunk (block index in the stream)")
    ax.set_ylabel("block being generated")
    ax.set_title(f"block-causal KV cache, window W={window}", fontsize=9)
    ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(colors[1:], names[1:])], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def plot_spectrogram(latents: torch.Tensor, codec: MelCodec, ax=None, title: str = "", block_frames: int | None = None):
    """Draw latent frames ``(frames, channels)`` as the log-mel spectrogram they decode to, time in seconds.

    Args:
        codec: the checkpoint's codec (``ckpt.codec``; a learned latent is decoded through its autoencoder).
        block_frames: draw block boundaries every ``block_frames`` latent frames.
    """
    ax = _axes(ax, (10, 3))
    mel = codec.latent_to_mel(latents.detach().float()[None])[0].numpy().T
    seconds = latents.shape[0] / codec.frame_rate
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=[0, seconds, 0, codec.cfg.n_mels],
              vmin=-2.5, vmax=2.5)
    if block_frames:
        for t in np.arange(block_frames, latents.shape[0], block_frames) / codec.frame_rate:
            ax.axvline(t, color="white", lw=0.5, alpha=0.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel band")
    ax.set_title(title, fontsize=9)
    return ax


def plot_contours(drawn_midi: np.ndarray, tracked_midi: np.ndarray, frame_rate: float, ax=None, title: str = ""):
    """Overlay a drawn pitch contour and the pitch tracked from generated audio (MIDI per frame, 0 = unvoiced)."""
    ax = _axes(ax, (10, 3))
    t = np.arange(len(drawn_midi)) / frame_rate
    ax.plot(t, np.where(drawn_midi > 0, drawn_midi, np.nan), lw=3, alpha=0.6, label="drawn")
    tt = np.arange(len(tracked_midi)) / frame_rate
    ax.plot(tt, np.where(tracked_midi > 0, tracked_midi, np.nan), ".", ms=4, label="tracked from the output (pYIN)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_jam_timeline(timeline: list[dict], ax=None, title: str = "generative delay: per-block timeline"):
    """Per block: when its last input was heard, when it was generated, when it plays (seconds); late blocks
    (underruns) in red."""
    ax = _axes(ax, (10, 3.5))
    n = [r["block"] for r in timeline]
    ax.plot(n, [r["input_heard_s"] for r in timeline], "s", label="last input heard")
    ax.plot(n, [r["generated_s"] for r in timeline], "o", label="block generated")
    ax.plot(n, [r["plays_s"] for r in timeline], "_", ms=14, mew=2, label="block starts playing")
    late = [r for r in timeline if r["late_s"] > 0]
    if late:
        ax.plot([r["block"] for r in late], [r["generated_s"] for r in late], "o", color="red", label="underrun")
    ax.set_xlabel("block")
    ax.set_ylabel("time since the input started (s)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
