"""The live engine: bad input never stops it, it keeps output contiguous under load, a block in progress is
abandoned on stop, and the offline jam is deterministic.

No test waits a guessed time: the threaded test waits on conditions (with generous timeouts for a busy machine),
the rest drive the engine step by step on its simulated clock."""
import math
import threading
import time

import numpy as np
import pytest
import torch

from lmdm.audio.sanitize import sanitize
from lmdm.config import ConfigError
from lmdm.errors import LmdmError
from lmdm.live.engine import ENGINE_SAMPLER, EngineConfig, InputError, LiveEngine
from lmdm.live.jam import jam
from lmdm.live.ringbuffer import RingBuffer
from lmdm.streaming.streamer import SamplerConfig, Streamer

SR = 16000


def sampler(steps=2, seed=0):
    return SamplerConfig(steps=steps, sampler="pingpong", cfg_scale=1.0, seed=seed)


def wait_for(condition, timeout=60.0, what="condition"):
    """Wait until ``condition()`` is true (polling every 10 ms); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


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


def test_engine_config_holds_a_sampler_config_and_refuses_bad_settings():
    assert EngineConfig().sampler == ENGINE_SAMPLER == SamplerConfig(steps=4, sampler="pingpong", cfg_scale=1.0, seed=0)
    for bad, match in [(dict(mode="karaoke"), "unknown mode"), (dict(tracker="crepe"), "pitch tracker"),
                       (dict(sampler="pingpong"), "SamplerConfig"), (dict(margin_s=-1), "margin_s=-1"),
                       (dict(gl_iters=0), "gl_iters=0"), (dict(input_seconds=float("inf")), "input_seconds"),
                       (dict(crossfade_s="long"), "crossfade_s"), (dict(prompt=3), "prompt must be text")]:
        with pytest.raises(ConfigError, match=match):
            EngineConfig(**bad)
    with pytest.raises(ValueError, match="steps"):  # the sampler's own ranges are SamplerConfig's
        EngineConfig(sampler=SamplerConfig(steps=0))
    with pytest.raises(ConfigError, match="decoder_lookahead"):
        EngineConfig(decoder_lookahead=1.5)


def test_an_engine_whose_decoder_would_hold_back_a_whole_block_is_refused(tiny_ckpt):
    """The decoder's lookahead and crossfade must leave part of each block to play: a clear error at creation,
    not a session of silent blocks."""
    block_mel = tiny_ckpt.model.cfg.block_frames * tiny_ckpt.codec.cfg.patch
    with pytest.raises(ConfigError, match="hold back .* not less than a block"):
        LiveEngine(tiny_ckpt, EngineConfig(decoder_lookahead=block_mel, sampler=sampler()))
    LiveEngine(tiny_ckpt, EngineConfig(decoder_lookahead=block_mel // 2, sampler=sampler()))  # fits: no error


def test_bad_input_is_repaired_or_refused_and_the_engine_keeps_going(tiny_ckpt):
    eng = LiveEngine(tiny_ckpt, EngineConfig(mode="jam", sampler=sampler()))
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
    assert repairs == {"non-finite samples zeroed": 1, "clipped to [-1, 1]": 1, "downmixed to mono": 2,
                       "integer PCM scaled": 1, "resampled from 44100 Hz": 4}
    for bad, match in [(["a", "b"], "real numbers"), (np.zeros((2, 2, 2)), "shape"), (np.zeros(4), "sample rate"),
                       (np.zeros(int(61 * SR)), "over the")]:
        with pytest.raises(InputError, match=match) as e:
            eng.push_input(bad, sample_rate=7 if match == "sample rate" else None)
        assert isinstance(e.value, LmdmError)
    assert eng.stats().rejected == 4 and "over the" in eng.stats().last_error
    made = 0
    while made < 6 and eng.step():  # the input holds ~50 blocks; a few show the session goes on
        made += 1
    assert made == 6 and np.isfinite(eng.read_output()).all()


def test_input_chunks_are_resampled_as_one_stream(tiny_ckpt):
    """The engine resamples statefully: chunked input equals the one-shot resampling of the whole recording."""
    eng = LiveEngine(tiny_ckpt, EngineConfig(mode="jam", sampler=sampler()))
    x = melody(1.0, 48000)
    for i in range(0, len(x), 1000):
        eng.push_input(x[i : i + 1000], sample_rate=48000)
    whole = sanitize(x, 48000, SR).audio
    got = eng._input.read(0, eng._input.total)
    held_back = len(whole) - len(got)  # soxr's filter delay, emitted with the next chunks
    assert 0 <= held_back < 0.05 * SR
    np.testing.assert_allclose(got, whole[: len(got)], atol=1e-6)


class GatedStreamer(Streamer):
    """A stub model whose blocks take at least ``min_compute_s`` (slower than real time) and whose block number
    ``park_at`` never finishes on its own: it waits, one denoising step every 10 ms, until the engine stops it."""

    def __init__(self, ckpt, min_compute_s, park_at):
        super().__init__(ckpt.model)
        self.min_compute_s, self.park_at = min_compute_s, park_at
        self.parked = threading.Event()

    def next_block(self, controls=None, on_step=None):
        n = len(self._blocks)
        start, i = time.perf_counter(), 0
        while n == self.park_at or time.perf_counter() - start < self.min_compute_s:
            if n == self.park_at:
                self.parked.set()
            time.sleep(0.01)  # "compute"; the engine may abandon the block at any step
            if on_step is not None:
                on_step(i)
            i += 1
        block = torch.full((1, self.B, self.ch), -1.0)
        self._blocks.append(block)
        return block


def test_under_load_underruns_are_counted_output_stays_contiguous_and_stop_is_prompt(tiny_ckpt):
    block_s = tiny_ckpt.model.cfg.block_frames * tiny_ckpt.codec.samples_per_frame / tiny_ckpt.codec.sample_rate
    slow = 2.5 * block_s  # every block takes 2.5x its own duration: slower than real time, by construction
    streamer = GatedStreamer(tiny_ckpt, min_compute_s=slow, park_at=2)
    eng = LiveEngine(tiny_ckpt, EngineConfig(mode="generate", lookahead_blocks=0), streamer=streamer)
    eng.start()
    chunks = []

    def keep_reading():
        chunks.append(eng.read_output())
        return streamer.parked.is_set()

    wait_for(keep_reading, what="two slow blocks")  # reads while blocks are computed: the caller is never blocked
    assert eng.running and eng.block_index == 2
    thread = eng._thread
    finished = eng.stop(timeout=30.0)  # block 2 never finishes by itself: only the stop request can end it
    assert finished and not thread.is_alive() and not eng.running  # the thread itself is gone, not just forgotten
    stats = eng.stats()
    assert stats.blocks == 2 and stats.rtf > 2
    late = [t["late_s"] for t in stats.timeline]
    # block 0 starts playback (never late); block 1 is due one block after it and took 2.5 blocks
    assert late[0] == 0 and stats.underruns == sum(x > 0 for x in late) == 1 and late[1] >= slow - block_s
    # the slow block slept: its wall time is neither the thread's CPU time nor a wait for a core
    t1 = stats.timeline[1]
    assert t1["cpu_s"] < 0.5 * t1["compute_s"] and t1["run_queue_s"] < 0.5 * t1["compute_s"], t1
    out = np.concatenate(chunks + [eng.read_output()])
    assert len(out) == stats.blocks * eng.block_samples - eng.decoder.latency_samples  # no gap, no repeat: every block, in order
    streamer.parked.clear()
    eng.start()  # a fresh session after a stop: the stream starts again from block 0
    wait_for(lambda: eng.stats().blocks >= 1, what="a block of the new session")
    assert eng.stop(timeout=30.0) and eng.stats().timeline[0]["block"] == 0


def test_prompt_change_applies_at_the_next_block(tiny_ckpt):
    def run(change):
        eng = LiveEngine(tiny_ckpt, EngineConfig(mode="generate", sampler=sampler(), prompt="solo flute"))
        blocks = []
        for i in range(3):
            if change and i == 2:
                eng.set_prompt("church organ")
            eng.step()
            blocks.append(eng.streamer.history[:, -eng.B :].clone())
        return blocks, [t["prompt"] for t in eng.stats().timeline]

    (a, prompts_a), (b, prompts_b) = run(False), run(True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[2], b[2])
    assert prompts_a == ["solo flute"] * 3 and prompts_b == ["solo flute", "solo flute", "church organ"]


def test_offline_jam_is_deterministic_and_aligned(tiny_ckpt):
    x = melody(3.0)
    cfg = EngineConfig(mode="jam", prompt="string ensemble", sampler=sampler(seed=3))
    r1, r2 = jam(tiny_ckpt, x, SR, cfg), jam(tiny_ckpt, x, SR, cfg)
    assert np.array_equal(r1.output, r2.output)
    assert len(r1.output) == len(r1.input) == len(x) + int(r1.stats.delay_s * SR)
    assert r1.mix().shape == (len(r1.output), 2)
    other = jam(tiny_ckpt, x, SR, EngineConfig(mode="jam", prompt="string ensemble", sampler=sampler(seed=4)))
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
    import lmdm.live.jam as jam_module
    from lmdm.live.jam import jam as run_jam

    class Engine(LiveEngine):
        def __init__(self, ckpt, cfg, realtime=False):
            super().__init__(ckpt, cfg, streamer=LoudnessEcho(ckpt.model), realtime=realtime)

    original = jam_module.LiveEngine
    jam_module.LiveEngine = Engine
    try:
        r = run_jam(tiny_ckpt, x, sr, EngineConfig(mode="jam", sampler=sampler()))
    finally:
        jam_module.LiveEngine = original
    rms = lambda a, b: float(np.sqrt(np.mean(r.output[int(a * sr) : int(b * sr)] ** 2)))
    d, blk = r.stats.delay_s, 4 * 1024 / sr  # delay = one block + margin; the tiny model's blocks are 4 frames
    assert abs(d - (blk + EngineConfig().margin_s)) < 1e-3
    # the input is loud from 2 s to 4 s: the answer is loud one delay later (to within a block), quiet elsewhere
    loud = rms(2 + d + blk, 4 + d - blk)
    assert loud > 10 * rms(0.3, 2 + d - blk) and loud > 10 * rms(4 + d + blk, 6.0)


def test_wait_for_gap_lets_side_work_run_between_blocks_only(tiny_ckpt):
    eng = LiveEngine(tiny_ckpt, EngineConfig(mode="jam", sampler=sampler()))
    assert eng.seconds_to_next_block() == math.inf and eng.wait_for_gap(0.3, timeout=0.0)  # no session
    eng.start()
    try:
        # the first blocks need no input (the delay covers them); then the engine waits for input it never gets
        wait_for(lambda: eng.needed_input(eng.block_index) > 0 and not eng.computing.is_set(),
                 what="the first block that needs input")
        # without input, the next block is exactly that input's duration away
        need = eng.needed_input(eng.block_index) / eng.sr
        assert eng.seconds_to_next_block() == pytest.approx(need) and eng.wait_for_gap(need - 0.01, timeout=0.0)
        assert not eng.wait_for_gap(need + 0.01, timeout=0.05)  # too close, and no input arrives: timed out
        eng.push_input(np.zeros(eng.needed_input(eng.block_index), np.float32))
        assert eng.seconds_to_next_block() == 0.0  # its input is there: it starts now
    finally:
        eng.stop(timeout=30.0)


def test_run_queue_wait_counts_the_time_a_busy_thread_waits_for_a_core():
    import os
    import subprocess
    import sys

    from lmdm.streaming.threads import run_queue_wait

    def spin(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    w0 = run_queue_wait()
    spin(0.2)
    quiet = run_queue_wait() - w0
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        time.sleep(0.3)
        w0, t0 = run_queue_wait(), time.perf_counter()
        spin(0.2)  # 0.2 s of CPU among 2x as many busy processes as cores: about as long again waiting
        loaded, wall = run_queue_wait() - w0, time.perf_counter() - t0
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert loaded > 0.1 and loaded > quiet and loaded <= wall, (quiet, loaded, wall)


def test_a_realtime_thread_waits_for_no_busy_process_where_the_system_permits_it():
    """``request_realtime`` moves only the calling thread; where granted (root, CAP_SYS_NICE or RLIMIT_RTPRIO), a
    spinning real-time thread among 2x as many busy processes as cores hardly waits for a core."""
    import os
    import subprocess
    import sys
    import threading

    from lmdm.streaming.threads import is_realtime, request_realtime, run_queue_wait
    from tests.support.realtime import may_realtime

    with pytest.raises(ValueError, match="from 1 to 99"):
        request_realtime(0)
    may = may_realtime(3)
    out = {}

    def rt_thread():
        out["granted"] = request_realtime(3)
        out["is_rt"] = is_realtime()
        w0, end = run_queue_wait(), time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        out["waited"] = run_queue_wait() - w0

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        time.sleep(0.3)
        t = threading.Thread(target=rt_thread)
        t.start()
        t.join()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert out["granted"] is may and out["is_rt"] is may and not is_realtime()  # this thread was left as it was
    if may:  # with real-time priority it runs as soon as it is runnable: (nearly) no run-queue wait
        assert out["waited"] < 0.02, out
