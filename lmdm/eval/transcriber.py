"""A small in-house transcriber: audio -> notes, for the "notes" lens of ``lmdm eval`` (DESIGN.md section 7).

Our data build writes the exact MIDI beside every rendered file, so a transcriber trained on it sees perfect
labels. The model reads the codec's normalised log-mel frames (``MelCodec.audio_to_mel``: 128 bands, 62.5 frames/s)
and predicts, per frame and per piano key (MIDI 21..108), the probability that the key sounds ("frame") and that a
note starts there ("onset"), the two heads of Onsets and Frames (Hawthorne et al. 2018, arXiv 1710.11153), here with
a shared trunk::

    mel (B, T, 128) -> conv over time (B, T, 160) -> 4 residual dilated convs over time (dilation 1, 2, 4, 8)
        -> onset logits (B, T, 88), frame logits (B, T, 88)            (about 400k parameters)

Targets: frames from ``pretty_midi``'s ``get_piano_roll`` at the mel frame rate (a note covers frames
``int(start * fps) .. int(end * fps) - 1``), onsets at frame ``int(start * fps)`` widened to ``onset_frames`` frames.
Decoding (:func:`decode_notes`): a note starts where the onset probability rises above ``onset_threshold`` and
lasts while the frame probability stays above ``frame_threshold`` (or until the next onset of its key).

Training runs on the one loop (:func:`lmdm.train.loop.run_loop`) as a :class:`~lmdm.train.loop.Task`: resumable,
checkpoints in ``RUN/ckpt``; the model is then evaluated on the validation split with ``mir_eval`` (note-onset F1,
50 ms, offsets ignored; frame F1 on the piano roll of the notes) and saved (safetensors + JSON, never pickle) to
``export_dir`` (default ``data/checkpoints/transcriber``) with those numbers.

The bundled model: 2,500 steps of 32 x 256 frames, 6.9 min on two CPU cores, on the 11.0-hour train split of
``lmdm data build --hours 10``; float16 weights, 0.8 MB. On the 49 validation works (40 min): onset F1 0.84
(P 0.91, R 0.82), frame F1 0.80 (P 0.96, R 0.68); through the codec and Griffin-Lim (the vocoder ceiling) 0.83 and
0.77. Choir and church organ (soft onsets, sustained tone) are the weakest timbres.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmdm.atomic import atomic_file, atomic_folder
from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.checkpoint import repo_root
from lmdm.config import ConfigError, from_dict, read_json, to_dict
from lmdm.errors import LmdmError, UsageError

FORMAT = "lmdm-transcriber"
VERSION = 1


class TranscriberError(LmdmError, RuntimeError):
    """A transcriber that is missing, corrupt, or a training run that cannot start; the message says what to do."""


# ---- configs ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TranscriberConfig:
    """The network.

    Attributes:
        n_mels: input mel bands (the codec's).
        pitch_low: MIDI pitch of the first output key (21 = A0).
        n_pitches: output keys (88: A0..C8).
        width: channels of the temporal convolutions.
        dilations: one pre-norm residual block (LayerNorm, 3-tap convolution over time, ReLU) per entry; the
            receptive field is ``1 + 2 * (1 + sum(dilations))`` frames (35 frames, 0.56 s, by default).
        dropout: before the heads, training only.
    """

    n_mels: int = 128
    pitch_low: int = 21
    n_pitches: int = 88
    width: int = 160
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.n_mels <= 0:
            raise ConfigError(f"n_mels must be positive, got {self.n_mels}")
        if not (0 <= self.pitch_low and self.n_pitches > 0 and self.pitch_low + self.n_pitches <= 128):
            raise ConfigError(f"keys pitch_low..pitch_low+n_pitches-1 must lie in MIDI 0..127, got "
                              f"{self.pitch_low}..{self.pitch_low + self.n_pitches - 1}")
        if self.width < 1 or not self.dilations or min(self.dilations) < 1 or not 0 <= self.dropout < 1:
            raise ConfigError(f"need width >= 1, dilations >= 1 (at least one) and 0 <= dropout < 1, got {self}")


@dataclass(frozen=True)
class DecodeConfig:
    """Turning probabilities into notes (:func:`decode_notes`).

    The defaults were chosen on 40 train works of the 10-hour data set (onset thresholds 0.2-0.6 x frame
    thresholds 0.3-0.5; onset F1 0.89 at 0.5/0.5, 0.93 at 0.3/0.4, 0.94 at 0.2/0.4; the higher 0.3 is kept so that
    the noisier generated audio gets fewer spurious notes), never on the validation split.

    Attributes:
        onset_threshold: a note starts where the onset probability rises to this or above.
        frame_threshold: a note lasts while the frame probability stays at this or above.
        min_frames: shortest note, frames (a note is never cut before this).
    """

    onset_threshold: float = 0.3
    frame_threshold: float = 0.4
    min_frames: int = 1

    def __post_init__(self) -> None:
        if not (0 < self.onset_threshold < 1 and 0 < self.frame_threshold < 1 and self.min_frames >= 1):
            raise ConfigError(f"thresholds must be in (0, 1) and min_frames >= 1, got {self}")


@dataclass(frozen=True)
class TranscriberTrainConfig:
    """``train_transcriber``'s settings; unknown keys in JSON are rejected (:func:`lmdm.config.from_dict`).

    Attributes:
        data: a folder built by ``lmdm data build`` (manifest.csv, audio/, midi/).
        run_dir: checkpoints, log and ``final/``.
        export_dir: where the evaluated model is written (None: only ``RUN/final``).
        model, codec, decode: the network, its input features, its decoding.
        steps, batch_size, crop_frames: optimiser steps, crops per step, mel frames per crop.
        onset_frames: frames labelled as onset from a note's first frame on.
        lr, min_lr_ratio, warmup_steps, weight_decay, grad_clip: AdamW, warm-up + cosine decay, clipping.
        ema_decay: EMA of the weights (the saved model).
        threads: torch intra-op threads (0: torch's default).
        seed: initialisation, crop order, dropout.
        log_every, val_every, ckpt_every, val_batches, keep_checkpoints, max_hours: as in ``TrainConfig``.
        eval_max_works: validation works transcribed for the final metrics (0: all).
    """

    data: str = "data/music"
    run_dir: str = "runs/transcriber"
    export_dir: str | None = "data/checkpoints/transcriber"
    model: TranscriberConfig = field(default_factory=TranscriberConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    steps: int = 2500
    batch_size: int = 32
    crop_frames: int = 256
    onset_frames: int = 2
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    threads: int = 0
    seed: int = 0
    log_every: int = 50
    val_every: int = 500
    ckpt_every: int = 500
    val_batches: int = 8
    keep_checkpoints: int = 2
    max_hours: float = 0.0
    eval_max_works: int = 0

    def __post_init__(self) -> None:
        if self.model.n_mels != self.codec.n_mels:
            raise ConfigError(f"model.n_mels ({self.model.n_mels}) must equal codec.n_mels ({self.codec.n_mels})")
        for name in ("steps", "batch_size", "crop_frames", "onset_frames", "log_every", "val_every", "ckpt_every",
                     "val_batches", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


# what ``resume`` may change: the length, intervals, output folders and the final evaluation
CHANGEABLE = {"steps", "max_hours", "log_every", "val_every", "ckpt_every", "run_dir", "export_dir", "eval_max_works"}


# ---- the network -----------------------------------------------------------------------------------------------
class Transcriber(nn.Module):
    """Normalised log-mel ``(B, T, n_mels)`` -> onset and frame logits, each ``(B, T, n_pitches)``.

    A 3-tap convolution over time maps the mel bands to ``width`` channels; residual blocks of dilated 3-tap
    convolutions (WaveNet-style dilations, van den Oord et al. 2016) widen the context; two linear heads give the
    onset and frame logits. Convolutions only: on two CPU cores this trains several times faster than the
    conv2d + BiGRU stack of Onsets and Frames at the same parameter count.
    """

    def __init__(self, cfg: TranscriberConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Conv1d(cfg.n_mels, cfg.width, 3, padding=1)
        self.norms = nn.ModuleList([nn.LayerNorm(cfg.width) for _ in cfg.dilations])
        self.convs = nn.ModuleList([nn.Conv1d(cfg.width, cfg.width, 3, padding=d, dilation=d) for d in cfg.dilations])
        self.out_norm = nn.LayerNorm(cfg.width)
        self.onset_head = nn.Linear(cfg.width, cfg.n_pitches)
        self.frame_head = nn.Linear(cfg.width, cfg.n_pitches)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mel (B, T, n_mels)`` -> ``(onset_logits, frame_logits)``, each ``(B, T, n_pitches)``."""
        x = F.relu(self.inp(mel.transpose(1, 2))).transpose(1, 2)     # (B, T, width)
        for norm, conv in zip(self.norms, self.convs):
            x = x + F.relu(conv(norm(x).transpose(1, 2))).transpose(1, 2)
        x = self.drop(self.out_norm(x))
        return self.onset_head(x), self.frame_head(x)


# ---- targets and decoding (pure functions) ---------------------------------------------------------------------
def note_targets(notes, n_frames: int, frame_rate: float, pitch_low: int = 21,
                 n_pitches: int = 88) -> tuple[np.ndarray, np.ndarray]:
    """Frame and onset targets of a note list, ``pretty_midi.Instrument.get_piano_roll``'s convention.

    Args:
        notes: ``(onset_s, offset_s, midi_pitch)`` triples.
        n_frames: frames to fill (mel frame ``i`` is centred at ``i / frame_rate`` s).
        frame_rate: frames per second.
        pitch_low, n_pitches: the keys (pitches outside are dropped).

    Returns:
        ``(frames, onsets)``, each ``(n_frames, n_pitches)`` bool: a note covers frames ``int(start * fps)`` to
        ``int(end * fps) - 1`` (as ``get_piano_roll``) and its onset is frame ``int(start * fps)``.
    """
    frames = np.zeros((n_frames, n_pitches), dtype=bool)
    onsets = np.zeros((n_frames, n_pitches), dtype=bool)
    for start, end, pitch in notes:
        k = int(pitch) - pitch_low
        a = int(start * frame_rate)
        if not 0 <= k < n_pitches or a >= n_frames:
            continue
        frames[a:int(end * frame_rate), k] = True
        onsets[a, k] = True
    return frames, onsets


def decode_notes(onset_prob: np.ndarray, frame_prob: np.ndarray, frame_rate: float, pitch_low: int = 21,
                 cfg: DecodeConfig = DecodeConfig()) -> list[tuple[float, float, int]]:
    """Notes from onset and frame probabilities.

    A note of key ``k`` starts at every frame ``t`` where ``onset_prob[t, k] >= onset_threshold`` and
    ``onset_prob[t - 1, k] < onset_threshold`` (the first frame of each run above the threshold); it ends at the
    first later frame where ``frame_prob < frame_threshold`` or the next onset of the key, whichever comes first,
    but lasts at least ``min_frames``. Times are frame indices over ``frame_rate``.

    Args:
        onset_prob, frame_prob: ``(T, n_pitches)`` probabilities in [0, 1].
        frame_rate: frames per second.
        pitch_low: MIDI pitch of column 0.
        cfg: the thresholds.

    Returns:
        ``[(onset_s, offset_s, midi_pitch), ...]`` sorted by onset then pitch.

    Raises:
        UsageError: the two arrays differ in shape or are not 2-D.
    """
    on, fr = np.asarray(onset_prob), np.asarray(frame_prob)
    if on.shape != fr.shape or on.ndim != 2:
        raise UsageError(f"onset_prob and frame_prob must both be (T, pitches), got {on.shape} and {fr.shape}")
    t_len = on.shape[0]
    above = on >= cfg.onset_threshold
    starts = above & ~np.vstack([np.zeros((1, on.shape[1]), dtype=bool), above[:-1]])
    off = fr < cfg.frame_threshold
    notes = []
    for k in np.flatnonzero(starts.any(axis=0)):
        s = np.flatnonzero(starts[:, k])
        offs = np.flatnonzero(off[:, k])
        for i, t in enumerate(s):
            nxt = s[i + 1] if i + 1 < len(s) else t_len  # the next onset of the key cuts the note
            j = np.searchsorted(offs, t + 1)  # the onset frame itself always sounds
            end = min(offs[j] if j < len(offs) else t_len, nxt)
            end = max(end, min(t + cfg.min_frames, nxt))
            notes.append((int(t) / frame_rate, int(end) / frame_rate, int(k) + pitch_low))
    notes.sort(key=lambda n: (n[0], n[2]))
    return notes


def evaluate_notes(ref, est, frame_rate: float = 62.5, onset_tolerance: float = 0.05) -> dict:
    """Note-onset and frame scores of an estimated note list against a reference.

    Onsets: ``mir_eval.transcription.precision_recall_f1_overlap`` with ``offset_ratio=None`` (a note is right
    when its pitch is within 50 cents and its onset within ``onset_tolerance`` s; offsets ignored). Frames: both
    lists drawn as piano rolls (:func:`note_targets` over all 128 pitches at ``frame_rate``) and compared cell by
    cell (the "frame" metric of Onsets and Frames, on the decoded notes).

    Args:
        ref, est: ``(onset_s, offset_s, midi_pitch)`` triples (notes with ``offset <= onset`` are dropped).
        frame_rate: frames per second of the rolls.
        onset_tolerance: seconds.

    Returns:
        ``{"onset_precision", "onset_recall", "onset_f1", "frame_precision", "frame_recall", "frame_f1"}`` in
        [0, 1], plus counts ``"n_ref", "n_est", "onset_tp", "frame_tp", "frame_fp", "frame_fn"`` for pooling.
        An empty list gives 0 for its side's scores (1.0 when both are empty).

    Raises:
        UsageError: a bad note list (``lmdm.eval.notes.as_note_array``).
    """
    import mir_eval

    from lmdm.eval.notes import as_note_array

    r, e = as_note_array(ref), as_note_array(est)
    r, e = r[r[:, 1] > r[:, 0]], e[e[:, 1] > e[:, 0]]
    out = {"n_ref": len(r), "n_est": len(e)}
    if len(r) and len(e):
        p, rc, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
            r[:, :2], mir_eval.util.midi_to_hz(r[:, 2]), e[:, :2], mir_eval.util.midi_to_hz(e[:, 2]),
            onset_tolerance=onset_tolerance, offset_ratio=None)
        tp = round(rc * len(r))
    else:
        p = rc = f = 1.0 if not len(r) and not len(e) else 0.0
        tp = 0
    out.update(onset_precision=float(p), onset_recall=float(rc), onset_f1=float(f), onset_tp=tp)
    n = math.ceil(max([1e-9, *r[:, 1], *e[:, 1]]) * frame_rate) + 1
    fr, _ = note_targets(r, n, frame_rate, 0, 128)
    fe, _ = note_targets(e, n, frame_rate, 0, 128)
    tp_f, fp_f, fn_f = int((fr & fe).sum()), int((~fr & fe).sum()), int((fr & ~fe).sum())
    out.update(frame_tp=tp_f, frame_fp=fp_f, frame_fn=fn_f, **_prf("frame", tp_f, fp_f, fn_f))
    return out


def _prf(prefix: str, tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else float(fn == 0)
    r = tp / (tp + fn) if tp + fn else float(fp == 0)
    return {f"{prefix}_precision": p, f"{prefix}_recall": r, f"{prefix}_f1": 2 * p * r / (p + r) if p + r else 0.0}


# ---- the data set ----------------------------------------------------------------------------------------------
@dataclass
class NoteSet:
    """Mel frames and note targets of every work of a data set, back to back.

    Attributes:
        mel: ``(total_frames, n_mels)`` float16 normalised log-mel.
        targets: ``(total_frames, n_pitches)`` uint8: bit 0 = the key sounds, bit 1 = a note of it starts.
        work_start, work_frames: ``(n_works,)`` int64.
        work_ids, splits, midi: per work (``midi``: the MIDI path relative to the data folder).
    """

    mel: torch.Tensor
    targets: torch.Tensor
    work_start: torch.Tensor
    work_frames: torch.Tensor
    work_ids: list[str]
    splits: list[str]
    midi: list[str]

    def valid_starts(self, split: str, frames: int) -> torch.Tensor:
        """Global frame indices where a crop of ``frames`` fits inside one work of ``split``.

        Raises:
            DataError: no work of the split is long enough.
        """
        from lmdm.train.dataset import crop_starts

        return crop_starts(self.work_start, self.work_frames, self.splits, split, frames, "mel frames",
                           "use a smaller crop_frames")

    def sample(self, starts: torch.Tensor, batch: int, frames: int, onset_frames: int, generator: torch.Generator):
        """Random crops: ``mel (B, frames, n_mels)`` float32, ``frame_target, onset_target (B, frames, keys)``
        float32 (onsets widened to ``onset_frames`` frames)."""
        idx = starts[torch.randint(len(starts), (batch,), generator=generator)]
        rows = idx[:, None] + torch.arange(frames)
        tg = self.targets[rows]
        onset = (tg & 2) > 0
        widened = onset.clone()
        for d in range(1, onset_frames):
            widened[:, d:] |= onset[:, :-d]
        return self.mel[rows].float(), (tg & 1).float(), widened.float()


def _fingerprint(codec: CodecConfig, pitch_low: int, n_pitches: int, rows: list[dict]) -> str:
    keys = [(r["work_id"], r["seconds"], r["split"], str(r.get("midi", ""))) for r in rows]
    blob = json.dumps({"codec": to_dict(codec), "keys": [pitch_low, n_pitches], "rows": keys, "v": 1},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_note_set(data_dir: str | Path, codec_cfg: CodecConfig | None = None, pitch_low: int = 21,
                  n_pitches: int = 88, progress: bool = True) -> NoteSet:
    """Mel frames and note targets of a built data set, cached in ``DATA/cache/notes-<hash>.safetensors``.

    The hash covers the codec (default: ``CodecConfig()``), the keys and the manifest rows; the cache is written
    atomically.

    Raises:
        DataError: no manifest, or a work without its MIDI file.
    """
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from lmdm.audio.io import load_audio
    from lmdm.control.features import midi_notes
    from lmdm.train.dataset import DataError, read_manifest

    codec_cfg = codec_cfg or CodecConfig()
    data_dir = Path(data_dir)
    rows = read_manifest(data_dir)
    cache = data_dir / "cache" / f"notes-{_fingerprint(codec_cfg, pitch_low, n_pitches, rows)}.safetensors"
    meta = {"work_ids": [r["work_id"] for r in rows], "splits": [r["split"] for r in rows],
            "midi": [str(r.get("midi", "")) for r in rows]}
    if cache.is_file():
        t = load_file(str(cache))
        return NoteSet(mel=t["mel"], targets=t["targets"], work_start=t["work_start"], work_frames=t["work_frames"],
                       **meta)
    codec = MelCodec(codec_cfg)
    mels, tgts, lengths = [], [], []
    for r, midi in tqdm(list(zip(rows, meta["midi"])), desc="mel + note targets", unit="work", disable=not progress):
        if not midi or not (data_dir / midi).is_file():
            raise DataError(f"{r['work_id']}: no MIDI file {data_dir / midi}; rebuild with `lmdm data build`")
        audio = load_audio(data_dir / r["audio"], codec_cfg.sample_rate)
        with torch.no_grad():
            mel = codec.audio_to_mel(torch.from_numpy(audio)[None])[0]
        fr, on = note_targets(midi_notes(str(data_dir / midi)), mel.shape[0], codec_cfg.sample_rate / codec_cfg.hop,
                              pitch_low, n_pitches)
        mels.append(mel.half())
        tgts.append(torch.from_numpy(fr.astype(np.uint8) | (on.astype(np.uint8) << 1)))
        lengths.append(mel.shape[0])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tensors = {"mel": torch.cat(mels), "targets": torch.cat(tgts), "work_start": torch.from_numpy(starts),
               "work_frames": torch.tensor(lengths, dtype=torch.int64)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache) as tmp:
        save_file(tensors, str(tmp))
    return NoteSet(**tensors, **meta)


# ---- saving, loading, transcribing -----------------------------------------------------------------------------
def default_transcriber_path() -> Path:
    """The bundled transcriber: ``data/checkpoints/transcriber`` of the checkout."""
    return repo_root() / "data" / "checkpoints" / "transcriber"


@dataclass
class LoadedTranscriber:
    """A transcriber ready to run: the network (eval mode, float32), its codec and decoding, and its info."""

    model: Transcriber
    codec: CodecConfig
    decode: DecodeConfig
    info: dict = field(default_factory=dict)

    @property
    def frame_rate(self) -> float:
        """Mel frames per second."""
        return self.codec.sample_rate / self.codec.hop

    @torch.no_grad()
    def probabilities(self, mel: torch.Tensor, segment: int = 2048, context: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Onset and frame probabilities ``(T, n_pitches)`` of a mel ``(T, n_mels)``, run in segments of
        ``segment`` frames with ``context`` frames of overlap on each side (bounded memory for long audio; the
        result equals one pass over the whole mel when ``context`` covers the receptive field, which it is raised
        to)."""
        self.model.eval()
        context = max(context, 1 + sum(self.model.cfg.dilations))
        t = mel.shape[0]
        onset = np.zeros((t, self.model.cfg.n_pitches), dtype=np.float32)
        frame = np.zeros_like(onset)
        for a in range(0, max(t, 1), segment):
            lo, hi = max(0, a - context), min(t, a + segment + context)
            o, f = self.model(mel[None, lo:hi].float())
            b = min(t, a + segment)
            onset[a:b] = torch.sigmoid(o[0, a - lo:b - lo]).numpy()
            frame[a:b] = torch.sigmoid(f[0, a - lo:b - lo]).numpy()
        return onset, frame

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> list[tuple[float, float, int]]:
        """Notes of mono or stereo audio; see :func:`transcribe`."""
        from lmdm.audio.io import to_mono_float

        a = to_mono_float(np.asarray(audio), sample_rate, self.codec.sample_rate)
        mel = MelCodec(self.codec).audio_to_mel(torch.from_numpy(a)[None])[0]
        onset, frame = self.probabilities(mel)
        return decode_notes(onset, frame, self.frame_rate, self.model.cfg.pitch_low, self.decode)


def save_transcriber(path: str | Path, model: Transcriber, codec: CodecConfig, decode: DecodeConfig,
                     info: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write a transcriber folder atomically (``lmdm.atomic.atomic_folder``): ``model.safetensors`` (floating
    weights stored as ``dtype``, float16 by default: about 1 MB) and ``config.json`` ``{"format", "version",
    "model", "codec", "decode", "info"}``. Returns ``path``."""
    from safetensors.torch import save

    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, "model": to_dict(model.cfg), "codec": to_dict(codec),
            "decode": to_dict(decode), "info": info or {}}
    with atomic_folder(path) as tmp:
        # bytes through write_bytes: safetensors' save_file creates its files 0600 whatever the umask
        (tmp / "model.safetensors").write_bytes(save(state, metadata={"format": FORMAT}))
        (tmp / "config.json").write_text(json.dumps(meta, indent=1))
    return Path(path)


def load_transcriber(path: str | Path | None = None) -> LoadedTranscriber:
    """Load a transcriber folder (default: :func:`default_transcriber_path`).

    Raises:
        TranscriberError: the folder or a file is missing, the config is not a transcriber's, or the weights do
            not fit (build one with ``train_transcriber``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_transcriber_path()
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise TranscriberError(f"no transcriber at {path} (config.json and model.safetensors); train one with "
                               "lmdm.eval.transcriber.train_transcriber")
    meta = read_json(path / "config.json", TranscriberError, "transcriber config")
    valid = {"format", "version", "model", "codec", "decode", "info"}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or set(meta) - valid:
        raise TranscriberError(f"{path}/config.json is not a transcriber config (format {FORMAT!r}, keys "
                               f"{sorted(valid)})")
    try:
        cfg = from_dict(TranscriberConfig, meta["model"], f"{path}/config.json:model")
        codec = from_dict(CodecConfig, meta["codec"], f"{path}/config.json:codec")
        decode = from_dict(DecodeConfig, meta["decode"], f"{path}/config.json:decode")
    except (ConfigError, KeyError) as e:
        raise TranscriberError(f"invalid transcriber config in {path}: {e}") from e
    model = Transcriber(cfg)
    try:
        state = load_file(str(path / "model.safetensors"))
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()})
    except (SafetensorError, RuntimeError, KeyError) as e:
        raise TranscriberError(f"{path}/model.safetensors does not fit the transcriber config: {e}") from e
    return LoadedTranscriber(model=model.eval().requires_grad_(False), codec=codec, decode=decode,
                             info=meta.get("info", {}))


@lru_cache(maxsize=2)
def _bundled(path: str) -> LoadedTranscriber:
    return load_transcriber(path)


def transcribe(audio: np.ndarray, sample_rate: int,
               transcriber: LoadedTranscriber | str | Path | None = None) -> list[tuple[float, float, int]]:
    """Transcribe audio into notes.

    Args:
        audio: ``(samples,)`` mono or ``(samples, channels)`` float audio (resampled to the codec's rate).
        sample_rate: Hz.
        transcriber: a loaded transcriber, a folder, or None for the bundled one (loaded once per process).

    Returns:
        ``[(onset_s, offset_s, midi_pitch), ...]`` sorted by onset: onsets where the onset probability rises above
        its threshold, offsets where the frame probability falls below its threshold (:func:`decode_notes`).

    Raises:
        TranscriberError: no transcriber at the folder.
        AudioError: audio that cannot be repaired into mono float (``lmdm.audio.io.to_mono_float``).
    """
    if not isinstance(transcriber, LoadedTranscriber):
        transcriber = _bundled(str(Path(transcriber) if transcriber is not None else default_transcriber_path()))
    return transcriber.transcribe(audio, sample_rate)


def evaluate_transcriber(data_dir: str | Path, transcriber: LoadedTranscriber | str | Path | None = None,
                         split: str = "val", through_codec: bool = False, max_works: int = 0,
                         gl_iters: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Note-onset and frame F1 of a transcriber on one split of a built data set, against the exact MIDI.

    Args:
        data_dir: a folder built by ``lmdm data build``.
        transcriber: loaded, a folder, or None for the bundled one.
        split: "val" (the honest number) or "train".
        through_codec: send each work's audio through the codec and its Griffin-Lim decoder
            (``MelCodec.encode`` then ``decode``) first: the "vocoder ceiling" a generated piece can reach.
        max_works: transcribe only the first ``max_works`` works of the split (0: all).
        gl_iters: Griffin-Lim iterations (default: the codec's).
        seed: Griffin-Lim's random initial phase.
        progress: tqdm bar.

    Returns:
        ``{"split", "through_codec", "works", "seconds", "onset_f1", "onset_precision", "onset_recall",
        "frame_f1", "frame_precision", "frame_recall", "per_work"}``: note scores are means over works of
        :func:`evaluate_notes` (the mir_eval convention), frame scores are pooled over all frames;
        ``per_work`` lists each work's scores.

    Raises:
        DataError: no manifest or no work in ``split``.
        TranscriberError: no transcriber.
    """
    from tqdm.auto import tqdm

    from lmdm.audio.io import load_audio
    from lmdm.control.features import midi_notes
    from lmdm.train.dataset import DataError, read_manifest

    if not isinstance(transcriber, LoadedTranscriber):
        transcriber = load_transcriber(transcriber)
    data_dir = Path(data_dir)
    rows = [r for r in read_manifest(data_dir) if r["split"] == split]
    if not rows:
        raise DataError(f"{data_dir} has no {split!r} works")
    rows = rows[:max_works] if max_works else rows
    codec = MelCodec(transcriber.codec)
    per_work, seconds = [], 0.0
    for r in tqdm(rows, desc=f"transcribing {split}", unit="work", disable=not progress):
        audio = load_audio(data_dir / r["audio"], transcriber.codec.sample_rate)
        seconds += len(audio) / transcriber.codec.sample_rate
        if through_codec:
            with torch.no_grad():
                z = codec.encode(torch.from_numpy(audio)[None])
                audio = codec.decode(z, generator=torch.Generator().manual_seed(seed), n_iter=gl_iters)[0].numpy()
        est = transcriber.transcribe(audio, transcriber.codec.sample_rate)
        scores = evaluate_notes(midi_notes(str(data_dir / r["midi"])), est, transcriber.frame_rate)
        per_work.append({"work_id": r["work_id"], **scores})
    mean = {k: float(np.mean([w[k] for w in per_work])) for k in ("onset_f1", "onset_precision", "onset_recall")}
    pooled = _prf("frame", *(sum(w[k] for w in per_work) for k in ("frame_tp", "frame_fp", "frame_fn")))
    return {"split": split, "through_codec": through_codec, "works": len(per_work), "seconds": round(seconds, 1),
            **mean, **pooled, "per_work": per_work}


# ---- training --------------------------------------------------------------------------------------------------
def transcriber_loss(model: Transcriber, mel: torch.Tensor, frame_target: torch.Tensor,
                     onset_target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Binary cross-entropy of both heads (Hawthorne et al. 2018, section 2), summed; returns the loss and its
    parts as floats. Shapes: ``mel (B, T, n_mels)``, targets ``(B, T, n_pitches)``."""
    onset_logits, frame_logits = model(mel)
    lo = F.binary_cross_entropy_with_logits(onset_logits, onset_target)
    lf = F.binary_cross_entropy_with_logits(frame_logits, frame_target)
    return lo + lf, {"onset_loss": lo.item(), "frame_loss": lf.item()}


def train_transcriber(cfg: TranscriberTrainConfig | None = None, resume: bool = False, progress: bool = True,
                      run_dir: str | Path | None = None, overrides: dict | None = None,
                      evaluate: bool = True) -> dict:
    """Train (or resume) the transcriber on a built data set's train split with :func:`lmdm.train.loop.run_loop`,
    then evaluate it on the validation split and save it to ``export_dir``.

    Args:
        cfg: the config; with ``resume`` it may be None (the run's ``config.json`` is used).
        resume: continue the run's latest checkpoint (weights, optimiser, EMA, RNG) if there is one.
        progress: tqdm bars.
        run_dir: overrides ``cfg.run_dir``.
        overrides: fields to change after the config is settled (on resume only ``CHANGEABLE``).
        evaluate: transcribe the validation works (:func:`evaluate_transcriber`) and store the scores in the
            saved model's info.

    Returns:
        ``{"step", "hours", "final_dir", "export_dir", "val_loss", "params", "eval"}`` (``eval``: the
        :func:`evaluate_transcriber` result without ``per_work``, or None).

    Raises:
        TranscriberError: a fresh run into a folder with checkpoints, or a resume that changes the config.
        DataError: the data folder is missing, lacks MIDI, or has no long-enough train works.
        ConfigError: an override names an unknown field.
    """
    from lmdm.train.dataset import DataError
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

    cfg, run, existing = settle_config(TranscriberTrainConfig, cfg, resume=resume, run_dir=run_dir,
                                       overrides=overrides, changeable=CHANGEABLE, error=TranscriberError)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_note_set(cfg.data, cfg.codec, cfg.model.pitch_low, cfg.model.n_pitches, progress=progress)
    train_starts = data.valid_starts("train", cfg.crop_frames)
    try:
        val_starts = data.valid_starts("val", cfg.crop_frames)
    except DataError:
        val_starts = train_starts  # tiny data sets (tests) may have no validation work
    torch.manual_seed(cfg.seed)
    model = Transcriber(cfg.model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)

    def train_step(state: LoopState) -> dict:
        mel, fr, on = data.sample(train_starts, cfg.batch_size, cfg.crop_frames, cfg.onset_frames, gen)
        model.train()
        loss, parts = transcriber_loss(model, mel, fr, on)
        if not torch.isfinite(loss):
            raise TranscriberError(f"loss became {loss.item()} at step {state.step}; lower lr")
        lr = optimizer_step(loss, opt, model.parameters(), cfg.grad_clip)
        return {"loss": loss.item(), **parts, "lr": lr, "train_loss": smoothed_loss(state, loss.item()), "frames": mel.shape[0] * mel.shape[1]}

    def validate(state: LoopState) -> dict | None:
        if state.step % cfg.val_every and state.step != cfg.steps:
            return None
        g = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # the same crops every time
        state.ema.eval()
        losses = []
        with torch.no_grad():
            for _ in range(cfg.val_batches):
                mel, fr, on = data.sample(val_starts, cfg.batch_size, cfg.crop_frames, cfg.onset_frames, g)
                losses.append(transcriber_loss(state.ema, mel, fr, on)[0].item())
        return {"train_loss": state.latest["train_loss"], "val_loss": float(np.mean(losses))}

    train_frames = sum(n for n, s in zip(data.work_frames.tolist(), data.splits) if s == "train")

    def export_info(state: LoopState) -> dict:
        return {"step": state.step, "train_minutes_cpu": round(state.elapsed_s / 60, 2),
                "val_loss": state.latest.get("val_loss"), "data": cfg.data,
                "train_hours_audio": round(train_frames / (cfg.codec.sample_rate / cfg.codec.hop) / 3600, 3),
                "train_config": to_dict(cfg)}

    task = Task(modules={"model": model}, optimizers={"": opt}, generator=gen, train_step=train_step,
                save_model=lambda path, m, info: save_transcriber(path, m, cfg.codec, cfg.decode, info),
                export_info=export_info, ema_decay=lambda n: min(cfg.ema_decay, (1 + n) / (10 + n)),
                lr_factor={"": lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)},
                validate=validate)
    settings = LoopSettings(run_dir=run, steps=cfg.steps, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                            keep_checkpoints=cfg.keep_checkpoints, max_hours=cfg.max_hours, export_dir=None,
                            columns=(("loss", ".5f"), ("onset_loss", ".5f"), ("frame_loss", ".5f"), ("lr", ".3e"),
                                     ("val_loss", ".5f")),
                            throughput="frames", postfix=(("loss", "train_loss"), ("val", "val_loss")),
                            desc="training transcriber", unit="step", progress=progress)
    write_config(run, cfg)
    out = run_loop(settings, task, resume_from=existing)
    final = load_transcriber(out.final_dir)
    scores = None
    if evaluate:
        split = "val" if "val" in data.splits else "train"
        scores = evaluate_transcriber(cfg.data, final, split=split, max_works=cfg.eval_max_works, progress=progress)
        scores = {k: v for k, v in scores.items() if k != "per_work"}
        final.info["eval"] = scores
        save_transcriber(out.final_dir, final.model, final.codec, final.decode, final.info)
    if cfg.export_dir:
        save_transcriber(cfg.export_dir, final.model, final.codec, final.decode, final.info)
    return {"step": out.state.step, "hours": out.hours, "final_dir": str(out.final_dir), "export_dir": cfg.export_dir,
            "val_loss": out.state.latest.get("val_loss"), "params": sum(p.numel() for p in model.parameters()),
            "eval": scores}
