"""The widgets' Python half without a browser: message validation, state traits, stroke -> contour, audio in, and
a prompt change during a live session taking effect from the next block."""
import math
import time

import numpy as np
import pytest
import torch

from lmdm.audio.sanitize import sanitize
from lmdm.live.engine import LiveEngine
from lmdm.streaming.streamer import SamplerConfig
from lmdm.streaming.threads import WORKER_POLICY
from lmdm.text import encode_prompts
from lmdm.widgets import MicJam, PromptPanel, SketchPad
from lmdm.widgets.messages import MessageError, RateLimiter, audio_from_message, strokes_from_message, text_from_message


def wait_for(condition, timeout=120.0, what="condition"):
    """Wait until ``condition()`` is true (polling every 10 ms); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def f32(x):
    return np.asarray(x, dtype="<f4").tobytes()


def test_audio_messages_are_validated():
    audio, rate = audio_from_message({"type": "audio", "rate": 48000}, [f32([0.1, -0.2])])
    assert rate == 48000 and audio.dtype == np.float32 and audio.tolist() == pytest.approx([0.1, -0.2])
    bad = [
        ({"type": "text"}, [f32([0])], "expected an audio message"),
        ({"type": "audio", "rate": "fast"}, [f32([0])], "integer number of Hz"),
        ({"type": "audio", "rate": 100}, [f32([0])], "outside"),
        ({"type": "audio", "rate": 16000}, [], "exactly one buffer"),
        ({"type": "audio", "rate": 16000}, [b"abc"], "multiple of 4"),
        ({"type": "audio", "rate": 16000}, [f32(np.zeros(16000 * 3))], "longer than"),
        ({"type": "audio", "rate": 16000}, ["not bytes"], "binary"),
    ]
    for content, buffers, match in bad:
        with pytest.raises(MessageError, match=match):
            audio_from_message(content, buffers)


def test_strokes_text_and_rate_are_validated():
    assert strokes_from_message([[[0, 0.5], [1.0, 0.7]]]) == [[[0.0, 0.5], [1.0, 0.7]]]
    for bad, match in [("x", "list of strokes"), ([[1, 2]], "number pairs"), ([[["a", 1]]], "number pairs"),
                       ([[]] * 100, "too many strokes"), ([[[0, 0]] * 5000], "too many points")]:
        with pytest.raises(MessageError, match=match):
            strokes_from_message(bad)
    with pytest.raises(MessageError, match="over the"):
        text_from_message("x" * 2000)
    t = [0.0]
    rl = RateLimiter(3, clock=lambda: t[0])
    for _ in range(3):
        rl.check()
    with pytest.raises(MessageError, match="too many messages"):
        rl.check()
    t[0] = 1.5
    rl.check()


def test_sketch_pad_turns_strokes_into_a_contour(tiny_ckpt):
    pad = SketchPad(tiny_ckpt, duration=2.0, pitch_range=[60, 72], scale="C major")
    assert not any(pad.contour)
    pad.strokes = [[[0.0, 0.0], [1.0, 1.0]]]  # what the browser sets on pointer-up
    assert pad.strokes_received == 1 and pad.error == ""
    c = np.array(pad.contour)
    assert len(c) == math.ceil(2.0 * 15.625) and c[0] == 60 and c[15] >= 71 and c[-1] == 0
    pad.strokes = [[["bad", 1]]]
    assert "number pairs" in pad.error  # refused, shown, nothing breaks
    pad.strokes = [[[0.5, 0.5], [1.5, 0.5]]]
    assert pad.error == "" and np.array(pad.contour)[10] > 0


def test_sketch_pad_generate_renders_and_scores(tiny_ckpt):
    pad = SketchPad(tiny_ckpt, duration=2.0)
    sent = []
    pad.send = lambda content, buffers=None: sent.append((content, buffers))
    pad.strokes = [[[0.2, 0.3], [1.8, 0.8]]]
    pad.generate(wait=True)
    assert not pad.busy and pad.error == ""
    assert sent and sent[0][0]["type"] == "audio" and len(sent[0][1][0]) == 4 * 32000
    assert len(pad.tracked) == len(pad.contour)


def test_mic_jam_takes_audio_messages_and_survives_bad_ones(tiny_ckpt):
    jam = MicJam(tiny_ckpt, warm=False)
    sent = []
    jam.send = lambda content, buffers=None: sent.append(content)
    sr = 48000
    t = np.arange(sr // 2) / sr
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for i in range(0, len(tone), 2048):
        jam._last_input_stats = 0.0
        jam._on_msg(jam, {"type": "audio", "rate": sr}, [f32(tone[i : i + 2048])])
    s = jam.input_stats
    assert s["seconds"] == pytest.approx(0.5, abs=0.01)
    assert s["rms"] == pytest.approx(0.2 / math.sqrt(2), rel=0.1)
    assert s["dominant_hz"] == pytest.approx(440, abs=10)
    assert s["repairs"] == {"resampled from 48000 Hz": 12}
    # chunks are resampled as one stream: what was kept equals resampling the whole tone at once (no clicks)
    kept = jam.received.read(0, jam.received.total)
    whole = sanitize(tone, sr, 16000).audio
    assert 7000 < len(kept) <= len(whole)
    np.testing.assert_allclose(kept, whole[: len(kept)], atol=1e-6)
    # hostile messages: a clear error in the widget, nothing kept, nothing raised
    total = jam.received.total
    for content, buffers, match in [
        ({"type": "audio", "rate": sr}, [b"xyz"], "multiple of 4"),                        # not float32
        ({"type": "audio", "rate": sr}, [f32(np.zeros(sr * 3))], "longer than"),           # oversized buffer
        ({"type": "audio", "rate": sr}, [f32([0.1]), f32([0.2])], "exactly one buffer"),
        ("hostile", [], "unexpected message"),
        ({"type": "start_worker", "cmd": "rm -rf /"}, [], "unexpected message"),           # unknown command
    ]:
        jam._on_msg(jam, content, buffers)
        assert match in jam.error
    assert jam.received.total == total
    jam._on_msg(jam, {"type": "audio", "rate": sr}, [f32([np.nan] * 480)])  # NaN audio: repaired and counted
    assert jam.repairs["non-finite samples zeroed"] == 1
    jam._on_msg(jam, {"type": "ping", "t": 5.0}, [])
    assert sent[-1] == {"type": "pong", "t": 5.0}
    jam._on_msg(jam, {"type": "rtt", "ms": 12.5}, [])
    assert jam.rtt_ms == 12.5
    assert jam.worker is None  # warm=False: no worker until the first start
    jam.close()


def _recording(widget):
    """Replace ``widget.send`` with a recorder; returns the list of (content, buffers) it receives."""
    sent = []
    widget.send = lambda content, buffers=None: sent.append((content, buffers))
    return sent


def test_mic_jam_warms_up_before_start_and_feeds_its_worker(tiny_ckpt):
    jam = MicJam(tiny_ckpt)
    sent = _recording(jam)
    try:
        assert jam.status in ("loading", "ready")
        wait_for(lambda: jam.status == "ready", what="the worker to warm up")  # before anyone pressed start
        jam.running = True  # what the start button does
        wait_for(lambda: jam.status == "running", timeout=10, what="the session to start")
        sr = 48000
        tone = (0.3 * np.sin(2 * np.pi * 330 * np.arange(sr) / sr)).astype(np.float32)
        for i in range(0, len(tone), 4800):
            jam._on_msg(jam, {"type": "audio", "rate": sr}, [f32(tone[i : i + 4800])])
        assert jam.repairs["resampled from 48000 Hz"] == 10 and jam.error == ""
        jam._on_msg(jam, {"type": "audio", "rate": sr}, [f32([np.nan] * 480)])
        assert jam.error == "" and jam.repairs["non-finite samples zeroed"] == 1
        # the worker got the input (its engine counts it) and answers: audio, block marks, input and answer views
        wait_for(lambda: (jam.stats.get("input_s") or 0) >= 0.95,  # 1 s less the resampler's delay
                 what="the worker to receive 1 s of input")
        wait_for(lambda: {c.get("source") for c, _ in sent if c.get("type") == "view"} >= {"input", "output"},
                 what="input and output views")
        kinds = {c["type"] for c, _ in sent}
        assert {"audio", "block", "view"} <= kinds
        view = next(c for c, b in sent if c.get("type") == "view")
        assert len(next(b for c, b in sent if c.get("type") == "view")[0]) == view["frames"] * view["mels"]
    finally:
        jam.running = False
    wait_for(lambda: jam.status == "stopped", timeout=10, what="the session to stop")
    assert not jam.running and jam.worker.alive  # stopped, still warm for the next start
    pid = jam.worker.pid
    jam.close()
    assert not jam.worker.alive and jam.status == "closed"
    assert not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_crashed_worker_is_shown_and_restarted(tiny_ckpt):
    import os
    import signal

    panel = PromptPanel(tiny_ckpt, steps=2, cfg_scale=1.0)
    _recording(panel)
    try:
        wait_for(lambda: panel.status == "ready", what="the worker to warm up")
        panel.running = True
        wait_for(lambda: len(panel.timeline) >= 1, what="a block")
        os.kill(panel.worker.pid, signal.SIGKILL)
        wait_for(lambda: panel.status == "crashed", timeout=10, what="the crash to be noticed")
        assert "exit" in panel.error and "-9" in panel.error and not panel.running
        panel.running = True  # start again: a fresh worker, warm, then the session
        wait_for(lambda: len(panel.timeline) >= 2, what="blocks from the restarted worker")
        assert panel.status == "running" and panel.error == ""
    finally:
        panel.close()


def test_prompt_panel_ranges_are_the_sampler_configs(tiny_ckpt):
    panel = PromptPanel(tiny_ckpt, steps=2, cfg_scale=1.0, warm=False)
    panel.steps = 100  # beyond the panel's old private limit of 64; SamplerConfig takes up to 1000
    assert panel.steps == 100 and panel.error == ""
    for name, value, field in [("steps", 1001, "steps"), ("steps", 0, "steps"), ("cfg_scale", 60.0, "cfg_scale")]:
        with pytest.raises(ValueError) as refused:
            SamplerConfig(**{"steps": 100, "cfg_scale": 1.0, field: value})
        setattr(panel, name, value)
        assert getattr(panel, name) == {"steps": 100, "cfg_scale": 1.0}[name]  # refused: the old value stays
        assert panel.error == str(refused.value)  # SamplerConfig's own message, shown in the widget
    panel.cfg_scale = 3.0
    assert panel.cfg_scale == 3.0 and panel.error == ""  # a valid value clears the settings error
    assert panel.sampler == SamplerConfig(steps=100, sampler="pingpong", cfg_scale=3.0, seed=0)
    assert panel.engine_config().sampler == panel.sampler
    panel._on_msg(panel, {"type": "audio"}, [])
    assert "unexpected message" in panel.error


def test_prompt_panel_prompt_change_takes_effect_from_the_next_block(tiny_ckpt):
    """A live session in the worker: the prompt changes while blocks stream; the blocks before the change are
    exactly those of the old prompt, and from the block after the change on the stream is exactly an offline
    session that switched prompt there (so the new prompt reached the model, and nothing else changed)."""
    panel = PromptPanel(tiny_ckpt, prompt="solo flute", steps=2, cfg_scale=1.0, seed=5)
    sent = _recording(panel)
    cfg = panel.engine_config()
    block_samples = tiny_ckpt.model.cfg.block_frames * tiny_ckpt.codec.samples_per_frame
    # the decoder holds back its lookahead and the crossfade until the next block
    held = cfg.decoder_lookahead * tiny_ckpt.codec.cfg.hop + int(round(cfg.crossfade_s * tiny_ckpt.codec.sample_rate))
    try:
        wait_for(lambda: panel.status == "ready", what="the worker to warm up")
        panel.running = True  # what the start button does
        wait_for(lambda: len(panel.timeline) >= 2, what="two blocks")
        before = len(panel.timeline)
        panel.prompt = "church organ"  # applies from the next block
        wait_for(lambda: [t["prompt"] for t in panel.timeline].count("church organ") >= 2,
                 what="two blocks with the new prompt")
    finally:
        panel.running = False
    wait_for(lambda: panel.status == "stopped", timeout=10, what="the session to stop")
    time.sleep(0.2)
    panel.pump.pump_once()  # whatever was still in flight
    timeline = panel.timeline
    prompts = [t["prompt"] for t in timeline]
    out = np.concatenate([np.frombuffer(b[0], "<f4") for c, b in sent if c["type"] == "audio"])
    stats = dict(panel.stats)
    panel.close()
    # the readout's figures: the longest wait between two forwards (at least the pump's 20 ms period), and the
    # worker's scheduling (WORKER_POLICY asks for real-time priority; granted or not, it is reported)
    assert 20 <= stats["pump_gap_ms"] < 60_000 and stats["realtime"]["requested"] == 1, stats
    m = prompts.index("church organ")
    assert prompts == ["solo flute"] * m + ["church organ"] * (len(prompts) - m)
    assert [t["block"] for t in timeline] == list(range(len(prompts)))
    assert m <= before + 3  # at most the block in progress and the look-ahead keep the old prompt
    assert len(out) == len(prompts) * block_samples - held  # every block reached the browser, in order

    def offline(switch_at):
        eng = LiveEngine(tiny_ckpt, cfg)  # the session's settings, started with the old prompt
        for n in range(len(prompts)):
            if n == switch_at:
                eng.set_prompt("church organ")
            eng.step()
        return eng.read_output()

    # at the worker's thread count: where a BLAS splits its sums by thread (MKL held to AVX2), rounding differs
    # with the count, and Griffin-Lim grows 1e-6 in the latents to whole units in the audio
    threads = torch.get_num_threads()
    torch.set_num_threads(WORKER_POLICY.threads)
    try:
        same_prompt, switched = offline(None), offline(m)
    finally:
        torch.set_num_threads(threads)
    seam = m * block_samples - held  # audio before this was emitted before block m was made
    np.testing.assert_allclose(out, switched, atol=1e-4)
    np.testing.assert_allclose(out[:seam], same_prompt[:seam], atol=1e-4)
    assert np.abs(out[seam:] - same_prompt[seam:]).max() > 1e-3  # the new prompt changed what was generated


def test_a_session_that_cannot_start_shows_why_and_stays_stopped(tiny_ckpt, monkeypatch):
    from lmdm.config import ConfigError

    panel = PromptPanel(tiny_ckpt, warm=False)

    def refuse():
        raise ConfigError("invalid engine settings: margin_s=-1")

    monkeypatch.setattr(panel, "engine_config", refuse)
    panel.running = True  # what the start button does
    assert not panel.running and panel.error == "invalid engine settings: margin_s=-1" and panel.worker is None


def test_the_level_guard_box_applies_from_the_next_start_and_the_stats_say_how_often_it_cut(tiny_ckpt):
    """The widgets' ``level_guard`` trait reaches the worker's engine at the next start: off, the stats carry no
    guard; on, with a stored ceiling below everything the tiny model makes, every block of the session is turned
    down and the stats say so; a checkpoint without a stored ceiling shows the one-line reason in ``error``."""
    import dataclasses

    from lmdm.live.engine import EngineConfig

    low = dataclasses.replace(tiny_ckpt, info={"level_ceiling": -3.0})
    panel = PromptPanel(low, steps=2, cfg_scale=1.0)

    def session():
        panel.running = True
        n = len(panel.timeline)
        wait_for(lambda: len(panel.timeline) >= n + 2, what="two blocks")
        panel.running = False
        wait_for(lambda: panel.status == "stopped", timeout=10, what="the session to stop")
        wait_for(lambda: "level_guard" in panel.stats and not panel.stats["running"], timeout=10,
                 what="the stats after the stop")
        return dict(panel.stats)

    try:
        wait_for(lambda: panel.status == "ready", what="the worker to warm up")
        assert session()["level_guard"] is None
        panel.level_guard = True  # what the box does
        assert panel.engine_config().level_guard
        stats = session()
        g = stats["level_guard"]
        assert g["blocks"] == g["cut_blocks"] == stats["blocks"] >= 2 and g["max_cut_db"] > 3, stats
    finally:
        panel.close()
    jam = MicJam(low, config=EngineConfig(mode="jam", level_guard=True), warm=False)
    assert jam.level_guard and jam.engine_config().level_guard
    jam.level_guard = False
    assert not jam.engine_config().level_guard
    jam.close()
    bare = PromptPanel(tiny_ckpt, warm=False, level_guard=True)
    try:
        bare.running = True
        wait_for(lambda: "stores no level_ceiling" in bare.error, what="the reason in error")
        assert bare.error.count("\n") == 0
    finally:
        bare.close()
