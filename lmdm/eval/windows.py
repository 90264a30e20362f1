"""The sets of audio windows an evaluation compares: real music, its calibration rows and generated streams.

Every lens of ``lmdm eval`` looks at non-overlapping windows of **decoded audio** (mono, the codec's rate), one
row of the report per :class:`WindowSet` (DESIGN.md section 7):

* the **reference**: one window from each of many distinct training pieces;
* **real validation** windows, one per distinct validation piece: compared with the reference they give each
  lens's noise floor;
* **the prompts' own pieces**: when the prompts are validation captions, the real windows of those very pieces, cut
  as a stream on the prompt is (the real row to hold a system's notes against: the same music asked for);
* the same validation windows **through the codec and Griffin-Lim**: the vocoder ceiling;
* **white noise** at the data's level and **silence**: trivial baselines every lens must separate from music;
* the **systems**: streams generated from checkpoints for several prompts and seeds (each stream is a distinct
  piece; its windows are consecutive).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmdm.audio.codec import MelCodec
from lmdm.audio.io import load_audio
from lmdm.data.instruments import BY_NAME
from lmdm.errors import UsageError
from lmdm.train.dataset import DataError, read_manifest


@dataclass
class WindowSet:
    """Audio windows of one report row.

    Attributes:
        name: the row's label.
        kind: "real", "calibration" or "system".
        windows: ``(n, samples)`` float32, non-overlapping windows of ``window_s`` seconds.
        piece: ``n`` ids of the piece (work or stream) each window comes from.
        instrument: ``n`` instrument names the window should sound like (the rendered or prompted one; "" if
            none is known).
        sample_rate: Hz.
        info: free-form details (checkpoint, sampler, prompts).
    """

    name: str
    kind: str
    windows: np.ndarray
    piece: list[str]
    instrument: list[str]
    sample_rate: int
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.windows)


def cut_windows(audio: np.ndarray, sample_rate: int, window_s: float, max_windows: int | None = None) -> np.ndarray:
    """Non-overlapping whole windows ``(n, round(window_s * sample_rate))`` from the start of ``audio`` ``(samples,)``;
    a shorter tail is dropped."""
    n = int(round(window_s * sample_rate))
    k = len(audio) // n if n > 0 else 0
    if max_windows is not None:
        k = min(k, max_windows)
    return np.asarray(audio[: k * n], dtype=np.float32).reshape(k, n)


def prompt_instrument(prompt: str) -> str:
    """The instrument a prompt names ("" if none): the longest instrument name of the data set found in it."""
    text = prompt.lower()
    found = [name for name in BY_NAME if name in text]
    return max(found, key=len) if found else ""


def real_pieces(data_dir: str | Path, split: str, min_s: float, max_pieces: int, sample_rate: int,
                seed: int = 0) -> list[tuple[dict, np.ndarray]]:
    """``[(manifest row, audio (samples,))]`` of up to ``max_pieces`` distinct pieces of ``split`` at least
    ``min_s`` seconds long (a seeded choice when there are more), ordered by work id.

    Raises:
        DataError: no data set, or no piece of ``split`` is that long.
    """
    rows = [r for r in read_manifest(data_dir) if r["split"] == split and float(r["seconds"]) >= min_s]
    if not rows:
        raise DataError(f"{data_dir} has no {split} piece of at least {min_s:g} s; build more data with "
                        f"`lmdm data build --out {data_dir}` or use a shorter window")
    order = np.random.default_rng(seed).permutation(len(rows))[:max_pieces]
    chosen = sorted((rows[i] for i in order), key=lambda r: r["work_id"])
    return [(r, load_audio(Path(data_dir) / r["audio"], sample_rate)) for r in chosen]


def real_windows(data_dir: str | Path, split: str, window_s: float, max_pieces: int, sample_rate: int,
                 seed: int = 0, name: str | None = None) -> WindowSet:
    """One window per distinct piece of a split of a built data set (the piece's first whole window).

    Args:
        data_dir: folder built by ``lmdm data build``.
        split: "train" or "val".
        window_s: window length, seconds.
        max_pieces: at most this many pieces (a seeded random choice when the split has more).
        sample_rate: Hz of the windows (the codec's).

    Raises:
        DataError: no data set, or no piece of ``split`` is at least one window long.
    """
    windows, piece, inst = [], [], []
    for row, audio in real_pieces(data_dir, split, window_s, max_pieces, sample_rate, seed):
        w = cut_windows(audio, sample_rate, window_s, 1)
        if len(w):
            windows.append(w[0])
            piece.append(row["work_id"])
            inst.append(row["instrument"])
    return WindowSet(name or f"real {split}", "real", np.stack(windows), piece, inst, sample_rate,
                     {"data": str(data_dir), "split": split})


def through_codec(ws: WindowSet, codec: MelCodec, seed: int = 0, name: str = "real through codec + decoder",
                  block_frames: int | None = None) -> WindowSet:
    """The windows encoded to latents and decoded back with Griffin-Lim: the vocoder ceiling of a row.

    Args:
        block_frames: decode block by block with the streaming decoder, as generated streams are
            (``lmdm.audio.decoder.StreamingDecoder``, blocks of this many latent frames from the window's start);
            None decodes each window whole, which hides the streaming decoder's own seams.
    """
    from lmdm.audio.decoder import StreamingDecoder, decode_in_blocks

    g = torch.Generator().manual_seed(seed)
    out = []
    for i, w in enumerate(ws.windows):
        lat = codec.encode_numpy(w)
        if block_frames is None:
            audio = codec.decode(lat[None], generator=g)[0].numpy()
        else:
            audio = decode_in_blocks(StreamingDecoder(codec, seed=seed + i), lat, block_frames)
        out.append(audio[: len(w)])
    return WindowSet(name, "calibration", np.stack(out).astype(np.float32), list(ws.piece), list(ws.instrument),
                     ws.sample_rate, {"from": ws.name})


def noise_windows(n: int, window_s: float, sample_rate: int, rms: float, seed: int = 0) -> WindowSet:
    """``n`` windows of white Gaussian noise at ``rms`` (linear, e.g. the real windows' median rms)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, int(round(window_s * sample_rate)))) * rms).astype(np.float32)
    return WindowSet("white noise", "calibration", np.clip(w, -1, 1), [f"noise-{i}" for i in range(n)], [""] * n,
                     sample_rate)


def silence_windows(n: int, window_s: float, sample_rate: int) -> WindowSet:
    """``n`` windows of digital silence."""
    return WindowSet("silence", "calibration", np.zeros((n, int(round(window_s * sample_rate))), np.float32),
                     [f"silence-{i}" for i in range(n)], [""] * n, sample_rate)


def validation_prompts(data_dir: str | Path, n: int, seed: int = 0) -> list[str]:
    """``n`` captions of distinct validation pieces (a seeded choice): the default prompts of ``lmdm eval``.

    Raises:
        DataError: the data set has no validation piece.
    """
    rows = [r for r in read_manifest(data_dir) if r["split"] == "val"]
    if not rows:
        raise DataError(f"{data_dir} has no validation pieces to take prompts from")
    order = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [str(rows[i]["caption"]) for i in sorted(order)]


def prompt_piece_windows(data_dir: str | Path, prompts: Sequence[str], window_s: float, max_windows: int,
                         sample_rate: int, name: str = "real, the prompts' own pieces") -> WindowSet | None:
    """The real music the prompts describe: for each prompt that is a validation piece's caption, that piece's first
    ``max_windows`` whole windows (fewer if it is shorter), as a system's stream on the prompt is cut.

    This is the real row to hold a system's notes against when the prompts are a handful of captions: the validation
    row mixes every collection (chorales and quartets beside one-line fiddle tunes), while six drawn captions may
    describe mostly one-voice tunes. Pieces are named ``prompt{i}``, like the systems' ``prompt{i}-seed{s}``.

    Args:
        data_dir: folder built by ``lmdm data build``.
        prompts: the prompts the systems stream.
        window_s: window length, seconds.
        max_windows: windows per piece at most (a system's windows per stream).
        sample_rate: Hz of the windows.

    Returns:
        The row, or None when a prompt is no validation caption or no piece holds a whole window (then there is
        no real music to match).
    """
    by_caption: dict[str, dict] = {}
    for r in read_manifest(data_dir):
        if r["split"] == "val":
            by_caption.setdefault(str(r["caption"]), r)
    if not prompts or any(p not in by_caption for p in prompts):
        return None
    windows, piece, inst = [], [], []
    for p_i, prompt in enumerate(prompts):
        row = by_caption[prompt]
        w = cut_windows(load_audio(Path(data_dir) / row["audio"], sample_rate), sample_rate, window_s, max_windows)
        windows.extend(w)
        piece += [f"prompt{p_i}"] * len(w)
        inst += [row["instrument"]] * len(w)
    if not windows:
        return None
    return WindowSet(name, "real", np.stack(windows), piece, inst, sample_rate,
                     {"data": str(data_dir), "split": "val", "matches": "prompts"})


def prompt_index(piece: str) -> int | None:
    """The prompt index of a window's piece id (``prompt3-seed1`` or ``prompt3`` -> 3; None for a real work id)."""
    head = piece.split("-seed")[0]
    if head.startswith("prompt") and head[6:].isdigit():
        return int(head[6:])
    return None


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file, one per non-empty line.

    Raises:
        UsageError: the file is missing or holds no prompt.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"prompts file not found: {path}")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"prompts file {path} holds no prompt (one per line)")
    return prompts


def generated_windows(name: str, generate_audio: Callable[[str, int], np.ndarray], prompts: Sequence[str],
                      seeds: Sequence[int], window_s: float, sample_rate: int, info: dict | None = None,
                      on_stream: Callable[[], None] | None = None) -> WindowSet:
    """Windows of one system: a stream per (prompt, seed), cut into consecutive non-overlapping windows.

    Args:
        generate_audio: ``(prompt, seed) -> (samples,)`` decoded audio of one stream.
        on_stream: called after each stream (progress bars).
    """
    windows, piece, inst = [], [], []
    for p_i, prompt in enumerate(prompts):
        for seed in seeds:
            w = cut_windows(generate_audio(prompt, seed), sample_rate, window_s)
            windows.extend(w)
            piece += [f"prompt{p_i}-seed{seed}"] * len(w)
            inst += [prompt_instrument(prompt)] * len(w)
            if on_stream is not None:
                on_stream()
    if not windows:
        raise UsageError(f"streams shorter than one window ({window_s:g} s): give more --seconds")
    return WindowSet(name, "system", np.stack(windows), piece, inst, sample_rate, info or {})


def windows_per_stream(seconds: float, window_s: float) -> int:
    """Whole windows in a stream of ``seconds``."""
    return int(math.floor(seconds / window_s + 1e-9))
