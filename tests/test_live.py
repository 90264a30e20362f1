"""The live engine: bad input never stops it, it keeps output contiguous under load, stops within one block,
and the offline jam is deterministic."""
import time

import numpy as np
import pytest
import torch

from lmdm.checkpoint import Checkpoint
from lmdm.audio.codec import CodecConfig
from lmdm.live.jam import jam
from lmdm.live.engine import EngineConfig, InputError, LiveEngine
from lmdm.live.ringbuffer import RingBuffer
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.streaming.streamer import Streamer

SR = 16000


@pytest.fixture(scope="module")
def tiny_ckpt():
    torch.manual_seed(0)
    model = DiT(DiTConfig(d_model=32, n_layers=2, n_heads=2, block_frames=4, window_chunks=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Checkpoint(model=model.requires_grad_(False), codec=CodecConfig())


def melody(seconds=3.0, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    f = np.where(t % 1.0 < 0.5, 330.0, 440.0)
    return (0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr)).astype(np.float32)


def test_ring_buffer_any_chunk_size_and_wraparound():
    rb = RingBuffer(10)
    data = np.arange(27, dtype=np.float32)
    i = 0
    for size in (1, 3, 7, 1, 15):
        rb.write(data[i : i + size])
        i += size
    assert rb.total == 27
    assert rb.read(17, 27).tolist() == list(range(17, 27))
    assert rb.read(15, 20).tolist() == [0, 0, 17, 18, 19]  # 15, 16 were overwritten
    assert rb.read(25, 30).tolist() == [25, 26, 0, 0, 0]  # not written yet


def test_bad_input_is_repaired_or_refused_and_the_engine_keeps_going(tiny_ckpt):
    eng = LiveEngine(tiny_ckpt, EngineConfig(mode="jam", steps=2))
    clean = melody(0.5)
    x = clean.copy()
    x[10], x[20] = np.nan, np.inf
    eng.push_input(x)
    eng.push_input(clean * 5.0)  # clipping
    eng.push_input(np.stack([clean, clean], 1))  # stereo
    before = eng._input.total
    pcm = (clean * 20000).astype(np.int16)
    eng.push_input(np.stack([pcm, pcm], 1))  # 16-bit PCM stereo: scaled to [-1, 1], then downmixed
    got = eng._input.read(before, before + len(pcm))
    assert np.allclose(got, pcm / 32767.0, atol=1e-6)
    # another rate, resampled with soxr as a stream (it holds back its filter delay, then catches up)
    n = sum(eng.push_input(melody(0.5, 44100), sample_rate=44100) for _ in range(4))
    assert abs(n - 4 * 8000) < 1000
    for _ in range(300):
        eng.push_input(np.zeros(1, np.float32))  # 1-sample chunks
    eng.push_input(np.zeros(10 * SR, np.float32))  # a 10 s chunk
    eng.push_input(np.zeros(0, np.float32))  # an empty one
    repairs = eng.stats().repairs
    assert {"non-finite samples zeroed", "clipped to [-1, 1]", "stereo downmixed", "resampled from 44100 Hz"} <= set(repairs)
    for bad, match in [(["a", "b"], "numbers"), (np.zeros((2, 2, 2)), "shape"), (np.zeros(4), "sample rate"),
                       (np.zeros(int(61 * SR)), "over the")]:
        with pytest.raises(InputError, match=match):
            eng.push_input(bad, sample_rate=7 if match == "sample rate" else None)
    assert eng.stats().rejected == 4
    made = 0
    while eng.step():
        made += 1
    assert made >= 3 and np.isfinite(eng.read_output()).all()


class SlowStreamer(Streamer):
    """A deliberately slow model: each block takes 16 steps of 0.1 s (slower than real time)."""

    def __init__(self, ckpt):
        super().__init__(ckpt.model)

    def next_block(self, controls=None, on_step=None):
        for i in range(16):
            time.sleep(0.1)
            if on_step is not None:
                on_step(i)
        block = torch.full((1, self.B, self.ch), -1.0)
        self._blocks.append(block)
        return block


def test_under_load_underruns_are_counted_output_stays_contiguous_and_stop_is_prompt(tiny_ckpt):
    eng = LiveEngine(tiny_ckpt, EngineConfig(mode="generate", lookahead_blocks=0), streamer=SlowStreamer(tiny_ckpt))
    assert eng.block_s < 1.6
    eng.start()
    chunks = []
    deadline = time.perf_counter() + 4.5
    while time.perf_counter() < deadline:
        chunks.append(eng.read_output())  # the caller is never blocked
        time.sleep(0.05)
    thread = eng._thread
    t = time.perf_counter()
    finished = eng.stop(timeout=eng.block_s)
    stopped_in = time.perf_counter() - t
    assert finished and not thread.is_alive() and not eng.running  # the thread itself is gone, not just forgotten
    assert stopped_in < eng.block_s
    stats = eng.stats()
    assert stats.blocks >= 2 and stats.underruns >= 1 and stats.rtf > 1
    out = np.concatenate(chunks + [eng.read_output()])
    assert len(out) == stats.blocks * eng.block_samples - eng.xf  # no gap, no repeat: every block, in order


def test_prompt_change_applies_at_the_next_block(tiny_ckpt):
    def run(change):
        eng = LiveEngine(tiny_ckpt, EngineConfig(mode="generate", steps=2, prompt="solo flute"))
        blocks = []
        for i in range(3):
            if change and i == 2:
                eng.set_prompt("church organ")
            eng.step()
            blocks.append(eng.streamer.history[:, -eng.B :].clone())
        return blocks

    a, b = run(False), run(True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[2], b[2])


def test_offline_jam_is_deterministic_and_aligned(tiny_ckpt):
    x = melody(3.0)
    cfg = EngineConfig(mode="jam", prompt="string ensemble", steps=2, seed=3)
    r1, r2 = jam(tiny_ckpt, x, SR, cfg), jam(tiny_ckpt, x, SR, cfg)
    assert np.array_equal(r1.output, r2.output)
    assert len(r1.output) == len(r1.input) == len(x) + int(r1.stats.delay_s * SR)
    assert r1.mix().shape == (len(r1.output), 2)
    other = jam(tiny_ckpt, x, SR, EngineConfig(mode="jam", prompt="string ensemble", steps=2, seed=4))
    assert not np.array_equal(r1.output, other.output)
    assert r1.stats.latency_s and all(t["input_heard_s"] <= t["generated_s"] for t in r1.stats.timeline)


class LoudnessEcho(Streamer):
    """A stub model whose block is loud exactly when the block's loudness control is: the engine's timing is
    then visible in the output."""

    def next_block(self, controls=None, on_step=None):
        loud = float(controls[0, :, 3].mean()) if controls is not None else -3.0  # the loudness feature
        level = 1.0 if loud > -1.0 else -2.5
        block = torch.full((1, self.B, self.ch), level)
        self._blocks.append(block)
        return block


def test_jam_answers_the_input_one_delay_later(tiny_ckpt):
    sr = SR
    x = np.zeros(6 * sr, np.float32)
    t = np.arange(2 * sr) / sr
    x[2 * sr : 4 * sr] = 0.4 * np.sin(2 * np.pi * 330 * t)  # loud from 2 s to 4 s, silent elsewhere
    from lmdm.live.jam import jam as run_jam
    import lmdm.live.jam as jam_module

    class Engine(LiveEngine):
        def __init__(self, ckpt, cfg, realtime=False):
            super().__init__(ckpt, cfg, streamer=LoudnessEcho(ckpt.model), realtime=realtime)

    original = jam_module.LiveEngine
    jam_module.LiveEngine = Engine
    try:
        r = run_jam(tiny_ckpt, x, sr, EngineConfig(mode="jam", steps=2))
    finally:
        jam_module.LiveEngine = original
    rms = lambda a, b: float(np.sqrt(np.mean(r.output[int(a * sr) : int(b * sr)] ** 2)))
    d, blk = r.stats.delay_s, 4 * 1024 / sr  # delay = one block + margin; the tiny model's blocks are 4 frames
    assert abs(d - (blk + 0.1)) < 1e-3
    # the input is loud from 2 s to 4 s: the answer is loud one delay later (to within a block), quiet elsewhere
    loud = rms(2 + d + blk, 4 + d - blk)
    assert loud > 10 * rms(0.3, 2 + d - blk) and loud > 10 * rms(4 + d + blk, 6.0)
