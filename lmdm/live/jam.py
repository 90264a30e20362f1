"""``lmdm jam``: a recording through the live engine, chunk by chunk as if live — the generative delay, offline.

The engine is exactly the one the microphone widget drives; here its clock is simulated (input arrives in real
time, each block takes the compute time it took on this machine), so latency, real-time factor and underruns
are what a live session on this machine would see, and the audio is deterministic for a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmdm.audio.io import to_mono_float
from lmdm.checkpoint import Checkpoint
from lmdm.errors import UsageError
from lmdm.live.engine import EngineConfig, EngineStats, LiveEngine


@dataclass
class JamResult:
    """Input and answer on one timeline.

    Attributes:
        input: ``(samples,)`` the input, resampled to the model rate and padded to the output length.
        output: ``(samples,)`` the model's answer; sample ``s`` plays together with input sample ``s`` and
            answers what was played ``stats.delay_s`` seconds earlier.
        sample_rate: Hz.
        stats: engine statistics (latency, RTF, underruns, the per-block timeline).
        level_guard: the level guard's ``summary()`` (blocks turned down, the largest cut in dB) where
            ``EngineConfig.level_guard`` was on, else None.
    """

    input: np.ndarray
    output: np.ndarray
    sample_rate: int
    stats: EngineStats
    level_guard: dict | None = None

    def mix(self, input_gain: float = 0.7, output_gain: float = 0.7) -> np.ndarray:
        """Stereo ``(samples, 2)``: the input on the left, the answer on the right."""
        return np.stack([self.input * input_gain, self.output * output_gain], axis=1)


def jam(ckpt: Checkpoint, audio: np.ndarray, sample_rate: int, cfg: EngineConfig = EngineConfig(mode="jam"),
        chunk_seconds: float = 0.1) -> JamResult:
    """Run ``audio`` through a jam-mode engine in chunks of ``chunk_seconds``.

    After the input ends, silence is fed for one more delay so the answer to the last notes is included.

    Args:
        ckpt: the loaded checkpoint.
        audio: ``(samples,)`` or ``(samples, channels)`` (any real dtype; see ``lmdm.audio.sanitize``).
        sample_rate: Hz of ``audio``; resampled to the model's rate.
        cfg: a jam-mode engine config (``EngineConfig(mode="jam", prompt=..., sampler=SamplerConfig(...))``).
        chunk_seconds: size of the chunks fed to the engine.

    Raises:
        UsageError: ``cfg.mode`` is not "jam", or ``chunk_seconds`` is not positive.
        AudioError: the audio cannot be used (see ``lmdm.audio.sanitize``).
    """
    if cfg.mode != "jam":
        raise UsageError(f"jam needs an engine in jam mode, got {cfg.mode!r}")
    if not chunk_seconds > 0:
        raise UsageError(f"chunk_seconds must be positive, got {chunk_seconds}")
    engine = LiveEngine(ckpt, cfg, realtime=False)
    engine.warmup()
    x = to_mono_float(audio, sample_rate, engine.sr)
    chunk = max(1, int(chunk_seconds * engine.sr))
    total = len(x) + engine.delay
    n_blocks = -(-total // engine.block_samples)
    padded = np.concatenate([x, np.zeros(n_blocks * engine.block_samples + engine.delay - len(x), np.float32)])
    out = []
    for i in range(0, len(padded), chunk):
        engine.push_input(padded[i : i + chunk])
        while engine.block_index < n_blocks and engine.step():
            pass
        out.append(engine.read_output())
    out.append(engine.read_output())
    out.append(engine.flush_output())
    output = np.concatenate(out)[:total]
    inp = np.zeros(total, dtype=np.float32)
    inp[: len(x)] = x
    guard = None if engine.level_guard is None else engine.level_guard.summary()
    return JamResult(input=inp, output=output, sample_rate=engine.sr, stats=engine.stats(), level_guard=guard)
