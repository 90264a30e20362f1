"""The one audio sanitiser (lmdm.audio.sanitize): a known answer for each rule, and stateful chunked resampling equal
to one-shot resampling of the whole signal (no trace of the chunk boundaries)."""
import numpy as np
import pytest
import soundfile as sf

from lmdm.audio.io import AudioError, load_audio, save_audio, to_mono_float
from lmdm.audio.sanitize import REPAIRS, StreamSanitizer, sanitize
from lmdm.errors import LmdmError


def sine(hz, seconds, sr, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


def test_clean_mono_passes_unchanged_and_unrepaired():
    x = sine(440, 0.1, 16000)
    out = sanitize(x, 16000, 16000)
    assert out.repairs == () and out.audio.dtype == np.float32 and np.array_equal(out.audio, x)
    assert out.audio is not x  # a copy: the caller's array is never modified


@pytest.mark.parametrize("bad, match", [
    (np.array(["a", "b"]), "real numbers"),
    (np.array([1 + 2j, 0j]), "real numbers"),
    (np.array([None, 1.0], dtype=object), "real numbers"),
    ([[1.0, 2.0], [3.0]], "array of numbers"),
    (np.zeros((2, 2, 2)), r"\(samples,\) or \(samples, channels\)"),
    (np.zeros((1000, 100)), "1 to 64 channels"),
    (np.zeros((1000, 0)), "1 to 64 channels"),
])
def test_what_cannot_be_repaired_is_refused_with_what_is_accepted(bad, match):
    with pytest.raises(AudioError, match=match) as e:
        sanitize(bad, 16000)
    assert isinstance(e.value, LmdmError) and "\n" not in str(e.value)


@pytest.mark.parametrize("rate", [7, 0, -16000, 1e9, 44100.5, float("nan"), True, "44100", None])
def test_rates_must_be_integer_hz_in_range(rate):
    with pytest.raises(AudioError, match="integer number of Hz from 1000 to 384000"):
        sanitize(np.zeros(10), rate)


def test_integral_float_rates_are_accepted():
    assert len(sanitize(np.zeros(441), 44100.0, 16000).audio) == 160


def test_integer_pcm_is_scaled_before_the_downmix():
    pcm = np.array([[32767, 32767], [-16384, 0], [30000, 30000]], dtype=np.int16)
    out = sanitize(pcm, 16000)
    assert out.audio.tolist() == pytest.approx([1.0, -16384 / 2 / 32767, 30000 / 32767], abs=1e-7)
    assert out.repairs == ("integer PCM scaled", "downmixed to mono")
    u8 = sanitize(np.array([0, 128, 255], dtype=np.uint8), 16000).audio  # offset binary: 128 is silence
    assert u8.tolist() == pytest.approx([-1.0, 0.0, 127 / 128])
    i32 = sanitize(np.array([2**31 - 1, -(2**30)], dtype=np.int32), 16000).audio
    assert i32.tolist() == pytest.approx([1.0, -0.5], abs=1e-6)


def test_layout_samples_channels_or_channels_samples():
    left, right = np.full(1000, 0.5, np.float32), np.full(1000, -0.1, np.float32)
    a = sanitize(np.stack([left, right], 1), 16000)  # (samples, channels): soundfile's layout
    b = sanitize(np.stack([left, right], 0), 16000)  # (channels, samples)
    assert a.audio.shape == b.audio.shape == (1000,) and np.allclose(a.audio, 0.2) and np.allclose(b.audio, 0.2)
    assert a.repairs == b.repairs == ("downmixed to mono",)
    one = sanitize(left[:, None], 16000)  # one channel: nothing to downmix
    assert one.audio.shape == (1000,) and one.repairs == ()
    keep = sanitize(np.stack([left, right], 0), 16000, mono=False)
    assert keep.audio.shape == (1000, 2) and keep.repairs == ()


def test_non_finite_samples_are_zeroed_and_values_clipped():
    out = sanitize(np.array([0.5, np.nan, np.inf, -np.inf, 5.0, -3.0, -0.25]), 16000)
    assert out.audio.tolist() == [0.5, 0.0, 0.0, 0.0, 1.0, -1.0, -0.25]
    assert out.repairs == ("non-finite samples zeroed", "clipped to [-1, 1]")
    assert set(out.repairs) <= set(REPAIRS)


def test_resampling_keeps_pitch_and_duration():
    out = sanitize(sine(440, 1.0, 48000), 48000, 16000)
    assert len(out.audio) == 16000 and out.repairs == ("resampled from 48000 Hz",)
    assert abs(peak_hz(out.audio, 16000) - 440) < 2
    assert np.abs(out.audio).max() <= 1.0
    full_scale = sanitize(np.sign(sine(1000, 0.5, 44100)), 44100, 16000).audio  # a square wave overshoots
    assert np.abs(full_scale).max() <= 1.0
    assert sanitize(np.zeros(0), 48000, 16000).audio.shape == (0,)


def test_max_seconds():
    with pytest.raises(AudioError, match="over the 2 s limit"):
        sanitize(np.zeros(3 * 16000), 16000, max_seconds=2)
    assert len(sanitize(np.zeros(2 * 16000), 16000, max_seconds=2).audio) == 32000


def test_chunked_stateful_resampling_equals_one_shot():
    rng = np.random.default_rng(0)
    x = (sine(440, 1.0, 44100) + 0.1 * rng.standard_normal(44100)).astype(np.float32)
    whole = sanitize(x, 44100, 16000).audio
    stream = StreamSanitizer(16000)
    parts, i = [], 0
    for size in rng.integers(1, 3000, 200):  # ragged chunk sizes, down to a single sample
        parts.append(stream(x[i : i + size], 44100).audio)
        i += size
        if i >= len(x):
            break
    parts.append(stream.flush())
    chunked = np.concatenate(parts)
    assert len(chunked) == len(whole)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    # what the mic widget used to do, resampling each chunk on its own, leaves a click at every boundary
    stateless = np.concatenate([sanitize(x[j : j + 2048], 44100, 16000).audio for j in range(0, len(x), 2048)])
    n = min(len(stateless), len(whole))
    assert np.abs(stateless[:n] - whole[:n]).max() > 100 * np.abs(chunked - whole).max() + 0.01


def test_stream_refused_chunk_changes_nothing_and_rate_changes_flush_the_tail():
    x = sine(330, 0.5, 48000)
    a, b = StreamSanitizer(16000, max_seconds=1.0), StreamSanitizer(16000, max_seconds=1.0)
    out_a = [a(x[:12000], 48000).audio]
    with pytest.raises(AudioError, match="over the 1 s limit"):
        a(np.zeros(2 * 48000), 48000)
    with pytest.raises(AudioError, match="real numbers"):
        a(np.array(["x"]), 48000)
    out_a += [a(x[12000:], 48000).audio, a.flush()]
    out_b = [b(x[:12000], 48000).audio, b(x[12000:], 48000).audio, b.flush()]
    assert np.array_equal(np.concatenate(out_a), np.concatenate(out_b))
    # a new input rate: the old rate's held-back tail comes out first, so no audio is lost
    c = StreamSanitizer(16000)
    n = len(c(x, 48000).audio) + len(c(sine(330, 0.5, 22050), 22050).audio) + len(c.flush())
    assert n == 8000 + 8000
    same = StreamSanitizer(16000)(np.array([[0.5, 0.5]] * 10, np.float32))  # default rate = target
    assert same.repairs == ("downmixed to mono",) and np.allclose(same.audio, 0.5)


def test_files_in_and_out_use_the_same_rules(tmp_path):
    stereo = np.stack([sine(440, 0.5, 44100), sine(440, 0.5, 44100, amp=0.1)], 1)
    sf.write(tmp_path / "in.wav", stereo, 44100)
    mono = load_audio(tmp_path / "in.wav", 16000)
    assert mono.shape == (8000,) and np.allclose(mono, to_mono_float(stereo, 44100, 16000), atol=1e-4)
    assert abs(peak_hz(mono, 16000) - 440) < 4
    bad = np.array([[0.5, np.nan], [2.0, -0.5], [np.inf, 0.0]], np.float32)
    save_audio(tmp_path / "out.wav", bad, 16000)  # channels kept, non-finite zeroed, clipped
    back, sr = sf.read(tmp_path / "out.wav", dtype="float32")
    assert sr == 16000 and back.shape == (3, 2)
    np.testing.assert_allclose(back, [[0.5, 0.0], [1.0, -0.5], [0.0, 0.0]], atol=1e-4)
    with pytest.raises(AudioError, match="real numbers"):
        save_audio(tmp_path / "text.wav", np.array(["a"]), 16000)
    assert not (tmp_path / "text.wav").exists()
