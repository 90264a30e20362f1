"""The live view's message (lmdm.live.view) reads what the codec sees and what pyloudnorm measures, survives bad
audio, and stays cheap; its browser half (live_view.js) draws a fake 12-block stream in headless Chromium (skipped
without Chromium), which also leaves a screenshot in test-artifacts/live_view.png."""
import base64
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import torch

from lmdm.audio.codec import MelCodec
from lmdm.live.view import DB_MAX, DB_MIN, LEVELS, block_view, parse_view
from lmdm.widgets.base import STATIC, asset
from tests.support.lab import CHROMIUM_ARGS, chromium_path

ROOT = Path(__file__).resolve().parent.parent
SR = 16000
BLOCK = 16 * 1024  # the default model's block: block_frames 16 x samples_per_frame 1024 = 1.024 s
STEP_DB = (DB_MAX - DB_MIN) / LEVELS


@pytest.fixture(scope="module")
def codec():
    return MelCodec()


def music(seconds: float, seed: int = 0, rms_dbfs: float = -20.0) -> np.ndarray:
    """Music-like test audio: a chord progression of decaying harmonic tones (a new chord every 0.5 s) and a
    little noise, scaled to ``rms_dbfs`` RMS; float32 ``(samples,)`` at 16 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = np.zeros(n)
    for start in np.arange(0, seconds, 0.5):
        i0 = int(start * SR)
        tt = t[i0:] - start
        for midi in rng.choice(np.arange(45, 80), 3, replace=False):
            f0 = 440 * 2 ** ((midi - 69) / 12)
            for k in range(1, 8):
                if k * f0 < SR / 2:
                    x[i0:] += np.exp(-3 * tt) * np.sin(2 * np.pi * k * f0 * tt) / k
    x += 0.02 * rng.standard_normal(n)
    return (x * 10 ** (rms_dbfs / 20) / np.sqrt(np.mean(x**2))).astype(np.float32)


def codec_db(codec, audio) -> np.ndarray:
    """The codec's own log-mel of ``audio`` in dB, ``(frames, mels)``."""
    mel = codec.audio_to_mel(torch.from_numpy(audio)[None])[0].numpy()
    return (mel * codec.cfg.std + codec.cfg.mean) * 20 / math.log(10)


def test_header_fields_and_payload_size(codec):
    header, payload = block_view(3, music(1.024), codec, "output")
    assert header["type"] == "view" and header["source"] == "output" and header["block"] == 3
    assert (header["frames"], header["mels"]) == (64, 128)  # 16 latent frames x patch 4; 128 bands
    assert len(payload) == 64 * 128 and isinstance(payload, bytes)
    assert header["seconds"] == pytest.approx(1.024)
    assert (header["db_min"], header["db_max"]) == (DB_MIN, DB_MAX)
    assert header["clipped"] == 0 and header["nonfinite"] == 0 and header["repaired"] is False
    assert -23 < header["lufs"] < -17  # -20 dBFS RMS music
    assert json.loads(json.dumps(header)) == header  # JSON-ready: plain types only
    assert header["seam_s"] == 0.0


def test_the_seam_says_where_the_block_begins_in_its_chunk(codec):
    """An answer's chunk begins with the previous block's held-back tail: the header carries where the block's
    seam lies, and a seam outside the audio is refused."""
    assert block_view(3, music(1.024), codec, "output", seam_s=0.068)[0]["seam_s"] == pytest.approx(0.068)
    for bad in (-0.01, 1.1):
        with pytest.raises(ValueError, match="seam_s must lie within the audio"):
            block_view(3, music(1.024), codec, "output", seam_s=bad)


def test_round_trip_matches_the_codec_log_mel_within_half_a_step(codec):
    audio = music(1.024, seed=1)
    header, payload = block_view(0, audio, codec, "input")
    seen = parse_view(header, payload)
    want = np.clip(codec_db(codec, audio), DB_MIN, DB_MAX)
    assert seen.shape == want.shape == (64, 128) and seen.dtype == np.float32
    assert np.abs(seen - want).max() <= STEP_DB / 2 + 1e-3
    assert want.min() < -60 and want.max() > 0  # the range is exercised, not a flat image
    # low bands first: the chords' energy is in the bottom half of the bands
    assert seen[:, :64].mean() > seen[:, 64:].mean() + 10


def test_lufs_matches_pyloudnorm_and_doubling_adds_six_db(codec):
    t = np.arange(BLOCK) / SR
    sine = (0.1 * math.sqrt(2) * np.sin(2 * np.pi * 997 * t)).astype(np.float32)  # -20 dBFS RMS
    lufs = block_view(0, sine, codec, "output")[0]["lufs"]
    assert lufs == pytest.approx(pyloudnorm.Meter(SR).integrated_loudness(sine.astype(np.float64)), abs=1e-9)
    assert lufs == pytest.approx(-20.0, abs=0.5)  # a 997 Hz sine reads its RMS level (BS.1770 calibration)
    doubled = block_view(1, 2 * sine, codec, "output")[0]["lufs"]
    assert doubled - lufs == pytest.approx(20 * math.log10(2), abs=1e-6)


def test_clipped_samples_are_counted_and_peak_reads_over_one(codec):
    audio = music(1.024, seed=2)
    audio[1000:1037] = 1.0
    audio[2000:2005] = -1.4  # over full scale: counted, and the sanitiser clips it (a repair)
    header, _ = block_view(0, audio, codec, "output")
    assert header["clipped"] == 42
    assert header["peak"] == pytest.approx(1.4)
    assert header["repaired"] is True and header["repairs"] == ["clipped to [-1, 1]"]


def test_silence_has_no_loudness_and_sits_at_the_floor(codec):
    header, payload = block_view(0, np.zeros(BLOCK, np.float32), codec, "output")
    assert header["lufs"] is None and header["peak"] == 0.0 and header["clipped"] == 0
    assert set(payload) == {0}
    assert np.all(parse_view(header, payload) == DB_MIN)


def test_a_block_shorter_than_one_gating_block_has_no_loudness(codec):
    header, payload = block_view(0, music(0.3), codec, "output")
    assert header["lufs"] is None and header["seconds"] == pytest.approx(0.3)
    assert len(payload) == header["frames"] * header["mels"]


def test_nan_and_inf_do_not_raise_and_are_reported(codec):
    audio = music(1.024, seed=3)
    clean_header, clean_payload = block_view(0, audio, codec, "output")
    bad = audio.copy()
    bad[[10, 500, 9000]] = [np.nan, np.inf, -np.inf]
    header, payload = block_view(0, bad, codec, "output")
    assert header["repaired"] is True and header["nonfinite"] == 3
    assert header["repairs"] == ["non-finite samples zeroed"]
    assert header["peak"] == clean_header["peak"] and math.isfinite(header["lufs"])
    zeroed = audio.copy()
    zeroed[[10, 500, 9000]] = 0.0  # what the sanitiser does
    assert payload == block_view(0, zeroed, codec, "output")[1]
    all_nan = block_view(1, np.full(BLOCK, np.nan, np.float32), codec, "output")[0]
    assert all_nan["nonfinite"] == BLOCK and all_nan["lufs"] is None and all_nan["peak"] == 0.0


@pytest.mark.parametrize("source", ["Output", "mic", "", None])
def test_a_bad_source_raises_a_one_line_value_error(codec, source):
    with pytest.raises(ValueError, match="source must be one of output, input") as e:
        block_view(0, music(1.024), codec, source)
    assert "\n" not in str(e.value)


def test_a_bad_block_index_and_a_bad_payload_raise(codec):
    with pytest.raises(ValueError, match="block must be an int"):
        block_view(-1, music(1.024), codec, "output")
    header, payload = block_view(0, music(1.024), codec, "output")
    with pytest.raises(ValueError, match="payload has 8191 bytes"):
        parse_view(header, payload[:-1])
    with pytest.raises(ValueError, match="not a live-view header"):
        parse_view({"type": "audio"}, payload)


def test_a_one_second_block_is_cheap(codec):
    audio = music(1.024, seed=4)
    block_view(0, audio, codec, "output")  # warm: the filterbank, the meter
    times = []
    for i in range(10):
        t0 = time.perf_counter()
        block_view(i, audio, codec, "output")
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 0.020, times  # measured about 1 ms; a guard against something absurd


def test_the_js_asset_ships_as_package_data():
    js = asset("live_view.js")
    assert "class LiveView" in js
    assert not re.search(r"^\s*(import|export)\b", js, re.M)  # concatenated before a widget's module
    assert (STATIC / "live_view.js").read_text(encoding="utf-8") == js
    css = asset("widgets.css")
    for cls in (".lmdm-view-canvas", ".lmdm-view-lufs", ".lmdm-view-clip.lit"):
        assert cls in css


# ---- the browser half ------------------------------------------------------------------------------------------

CHROMIUM = chromium_path()


def fake_stream(codec, blocks: int = 12) -> list[tuple[dict, str]]:
    """12 blocks heard ("input": music) and generated ("output": the same music with a noise floor that rises
    block by block, as accumulated error would; block 7 overdriven so it clips, block 9 with NaNs), as
    (header, base64 payload)."""
    rng = np.random.default_rng(5)
    heard = music(blocks * BLOCK / SR, seed=6)
    out = []
    for b in range(blocks):
        x = heard[b * BLOCK:(b + 1) * BLOCK]
        y = x + (0.002 * 1.45**b) * rng.standard_normal(BLOCK).astype(np.float32)
        if b == 7:
            y = 8 * y
        if b == 9:
            y[::997] = np.nan
        for source, audio in (("input", x), ("output", y)):
            h, p = block_view(b, audio, codec, source)
            out.append((h, base64.b64encode(p).decode()))
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: sudo apt-get install chromium")
def test_live_view_draws_a_fake_stream_in_chromium(codec):
    from playwright.sync_api import sync_playwright

    stream = fake_stream(codec)
    clipped = [h for h, _ in stream if h["clipped"]]
    assert [(h["source"], h["block"]) for h in clipped] == [("output", 7)]
    html = f"""<!doctype html><html><head><meta charset="utf-8"><style>{asset("widgets.css")}
      body {{ margin: 8px; background: #fff; }} #host {{ width: 900px; }}</style></head>
      <body><div id="host" class="lmdm-widget"></div><script>{asset("live_view.js")}
      const view = new LiveView({{ rows: ["input", "output"], seconds: 12 }});
      document.getElementById("host").append(view.el);
      const bytes = (b64) => {{ const s = atob(b64); const u = new Uint8Array(s.length);
        for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i); return new DataView(u.buffer); }};
      window.feed = (messages) => messages.forEach(([h, p]) => view.add(h, bytes(p)));
      window.view = view;</script></body></html>"""
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1100, "height": 420})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_content(html)
        page.evaluate("(m) => feed(m)", [[h, b] for h, b in stream])
        page.wait_for_function("document.querySelector('.lmdm-view').dataset.blocks === '24'", timeout=5000)
        page.screenshot(path=str(artifacts / "live_view.png"), full_page=True)
        rows = page.evaluate("""() => [...document.querySelectorAll('.lmdm-view-row')].map((r) => ({
            source: r.dataset.source, blocks: r.dataset.blocks,
            lufs: r.querySelector('.lmdm-view-lufs').textContent,
            clip: r.querySelector('.lmdm-view-clip').textContent,
            lit: r.querySelector('.lmdm-view-clip').classList.contains('lit'),
            canvases: r.querySelectorAll('canvas.lmdm-view-canvas').length }))""")
        # the last block's image: bottom (low bands) brighter than top; the boundary line is drawn
        pixels = page.evaluate("""() => {
            const c = document.querySelector('.lmdm-view-row[data-source=input] canvas.lmdm-view-canvas');
            const pps = c.width / 12, w = Math.round(12 * 1.024 * pps) - Math.round(11 * 1.024 * pps);
            const ctx = c.getContext('2d'), x = c.width - w;
            const lum = (y0, y1) => { const d = ctx.getImageData(x + 2, y0, w - 4, y1 - y0).data; let s = 0;
              for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s / (d.length / 4); };
            const line = ctx.getImageData(x, 60, 1, 1).data;
            return { bottom: lum(96, 128), top: lum(0, 32), line: [...line.slice(0, 3)] };
        }""")
        page.evaluate("() => view.clear()")
        after = page.evaluate("""() => [document.querySelector('.lmdm-view').dataset.blocks,
            document.querySelectorAll('.lmdm-view-clip.lit').length]""")
        # a burst longer than the view (a hidden tab, a stalled kernel): the overflow is counted, not drawn
        burst_ms = page.evaluate("""(m) => { const t0 = performance.now();
            feed(m); feed(m); feed(m); view.flush(); return performance.now() - t0; }""",
            [[h, b] for h, b in stream])
        burst = page.evaluate("""() => [view.el.dataset.blocks,
            [...view.el.querySelectorAll('.lmdm-view-row')].map((r) => r.dataset.blocks)]""")
        view_ms = page.evaluate("""(m) => { view.clear(); const t0 = performance.now();
            for (const x of m) { feed([x]); view.flush(); } return (performance.now() - t0) / m.length; }""",
            [[h, b] for h, b in stream])
        print(f"browser: {view_ms:.2f} ms per block drawn; a 3-view burst of 72 messages {burst_ms:.1f} ms")
        # the clip light goes out by itself
        page.evaluate("""() => { window.quick = new LiveView({ rows: ['output'], clipHoldSeconds: 0.2 });
            document.body.append(quick.el); }""")
        h7, p7 = next((h, b) for h, b in stream if h["clipped"])
        page.evaluate("([h, p]) => { quick.add(h, bytes(p)); quick.flush(); }", [h7, p7])
        lit_then = page.evaluate("() => quick.el.querySelector('.lmdm-view-clip').classList.contains('lit')")
        page.wait_for_timeout(500)
        lit_later = page.evaluate("() => quick.el.querySelector('.lmdm-view-clip').classList.contains('lit')")
        browser.close()
    assert errors == []
    last_out = [h for h, _ in stream if h["source"] == "output"][-1]
    want = f"\u2212{abs(last_out['lufs']):.1f} LUFS"
    assert rows == [
        {"source": "input", "blocks": "12", "lufs": rows[0]["lufs"], "clip": "clip", "lit": False, "canvases": 1},
        {"source": "output", "blocks": "12", "lufs": want, "clip": f"clip {clipped[0]['clipped']}", "lit": True,
         "canvases": 1}]
    assert pixels["bottom"] > pixels["top"] + 60, pixels
    assert min(pixels["line"]) > 150, pixels  # the white boundary line over the dark image
    assert after == ["0", 0]
    assert burst == ["72", ["36", "36"]]
    assert view_ms < 50  # measured about 1 ms (base64 decoding included)
    assert lit_then is True and lit_later is False
