"""The widgets' Python half without a browser: message validation, state traits, stroke -> contour, audio in."""
import math

import numpy as np
import pytest
import torch

from lmdm.checkpoint import Checkpoint
from lmdm.audio.codec import CodecConfig
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.widgets import MicJam, PromptPanel, SketchPad
from lmdm.widgets.messages import (Limits, MessageError, RateLimiter, audio_from_message, strokes_from_message,
                                   text_from_message)


@pytest.fixture(scope="module")
def tiny_ckpt():
    torch.manual_seed(0)
    model = DiT(DiTConfig(d_model=32, n_layers=2, n_heads=2, block_frames=4, window_chunks=2)).eval()
    return Checkpoint(model=model.requires_grad_(False), codec=CodecConfig())


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
    jam = MicJam(tiny_ckpt)
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
    jam._on_msg(jam, {"type": "audio", "rate": sr}, [b"xyz"])
    assert "multiple of 4" in jam.error
    jam._on_msg(jam, "hostile", [])
    assert "unexpected message" in jam.error
    jam._on_msg(jam, {"type": "ping", "t": 5.0}, [])
    assert sent[-1] == {"type": "pong", "t": 5.0}


def test_prompt_panel_starts_streams_and_stops(tiny_ckpt):
    panel = PromptPanel(tiny_ckpt, steps=2, cfg_scale=1.0)
    chunks = []
    panel.send = lambda content, buffers=None: chunks.append(content)
    panel.running = True  # what the start button does
    import time

    deadline = time.time() + 20
    while time.time() < deadline and not any(c.get("type") == "audio" for c in chunks):
        time.sleep(0.05)
    panel.prompt = "church organ"  # applies from the next block
    panel.running = False
    assert any(c.get("type") == "audio" for c in chunks)
    assert not panel.engine.running and panel.stats["blocks"] >= 1
    panel.steps = 1000
    assert panel.steps == 2 and "steps" in panel.error
