"""The level lens reads known answers: a sine calibrated to -23 LUFS reads -23, a half-scale sine peaks at
-6.02 dBTP, an intersample peak reads above the sample peak, clipping is seen, and loudness range is 0 LU for
steady noise and 10 LU for a 10 dB step."""
import math

import numpy as np
import pyloudnorm
import pytest

from lmdm.errors import UsageError
from lmdm.eval.level import (
    Level,
    LevelError,
    clipped_fraction,
    integrated_loudness,
    level,
    loudness_range,
    rms_dbfs,
    true_peak_dbtp,
)

SR = 16000


def sine(freq, seconds, peak=1.0, phase=0.0, fade_s=0.0):
    t = np.arange(int(seconds * SR)) / SR
    x = peak * np.sin(2 * np.pi * freq * t + phase)
    if fade_s:  # raised-cosine fades, so the oversampler does not ring on an abrupt start
        n = int(fade_s * SR)
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def test_sine_calibrated_to_minus_23_lufs_reads_minus_23():
    # BS.1770-4: a full-scale 997 Hz sine reads -3.01 LUFS, so this scale should read -23 LUFS
    x = sine(997, 5.0, peak=10 ** ((-23 + 3.01) / 20))
    lufs = integrated_loudness(x, SR)
    assert lufs == pytest.approx(-23.0, abs=0.5)  # measured -23.07 at 16 kHz
    assert rms_dbfs(x, SR) == pytest.approx(-23.0, abs=0.01)  # a sine's RMS sits 3.01 dB below its peak
    # integrated loudness is 10 log10 of power: 10 dB quieter reads 10 LU lower
    assert integrated_loudness(x * 10 ** (-10 / 20), SR) == pytest.approx(lufs - 10.0, abs=1e-6)


def test_true_peak_of_a_half_scale_sine_and_an_intersample_peak():
    assert true_peak_dbtp(sine(997, 1.0, peak=0.5, fade_s=0.01), SR) == pytest.approx(-6.02, abs=0.05)
    # a sine at fs/4 sampled 45 degrees off its crest: every sample is at 0.5 sin(45) = -9.03 dB, the waveform
    # between them reaches 0.5 = -6.02 dBTP
    x = sine(SR / 4, 1.0, peak=0.5, phase=np.pi / 4, fade_s=0.01)
    sample_peak_db = 20 * math.log10(np.max(np.abs(x)))
    assert sample_peak_db == pytest.approx(-9.03, abs=0.01)
    assert true_peak_dbtp(x, SR) == pytest.approx(-6.02, abs=0.05)
    assert true_peak_dbtp(x, SR) > sample_peak_db + 2.9


def test_hard_clipping_is_flagged_and_a_clean_loud_signal_is_not():
    loud = sine(440, 2.0, peak=0.95)
    assert clipped_fraction(loud, SR) == 0.0
    clipped = np.clip(2.0 * loud, -1.0, 1.0)
    assert clipped_fraction(clipped, SR) > 0.5  # |2 * 0.95 sin| >= 0.999 for about 2/3 of the cycle
    assert level(clipped, SR).clipped_fraction == clipped_fraction(clipped, SR)


def test_loudness_range_of_steady_noise_is_zero_and_of_a_10_db_step_is_10():
    rng = np.random.default_rng(0)
    noise = 0.1 * rng.standard_normal(20 * SR)
    assert loudness_range(noise, SR) == pytest.approx(0.0, abs=1.0)
    step = noise.copy()
    step[len(step) // 2:] *= 10 ** (-10 / 20)
    assert loudness_range(step, SR) == pytest.approx(10.0, abs=1.0)


def test_loudness_range_agrees_with_pyloudnorm_on_long_audio_and_not_its_short_clip_bias():
    rng = np.random.default_rng(1)
    t = np.arange(30 * SR) / SR
    varying = 0.1 * rng.standard_normal(len(t)) * (1 + 0.8 * np.sin(2 * np.pi * t / 7))
    assert loudness_range(varying, SR) == pytest.approx(pyloudnorm.Meter(SR).loudness_range(varying), abs=0.5)
    # pyloudnorm appends 1.5 s of silence before windowing; on a 5 s clip of steady noise that reads > 1.5 LU
    short = 0.1 * rng.standard_normal(5 * SR)
    assert pyloudnorm.Meter(SR).loudness_range(short) > 1.5
    assert loudness_range(short, SR) < 0.5


def test_short_and_silent_audio_read_nan_or_minus_inf_without_crashing():
    short = level(sine(997, 0.2, peak=0.5), SR)  # shorter than one 400 ms block and one 3 s window
    assert math.isnan(short.lufs) and math.isnan(short.lra_lu)
    # cut mid-waveform, the band-limited reconstruction rings at the edges: a few tenths of a dB over the crest
    assert -6.03 <= short.true_peak_dbtp < -5.5
    silent = level(np.zeros(4 * SR), SR)
    assert silent == Level(lufs=-math.inf, true_peak_dbtp=-math.inf, clipped_fraction=0.0, lra_lu=silent.lra_lu,
                           rms_dbfs=-math.inf)
    assert math.isnan(silent.lra_lu)
    empty = level(np.zeros(0), SR)
    assert math.isnan(empty.lufs) and empty.true_peak_dbtp == -math.inf and empty.clipped_fraction == 0.0


@pytest.mark.parametrize("audio,rate", [
    (np.zeros((100, 2)), SR),  # not mono
    (np.array([0.0, np.nan, 0.1]), SR),  # not finite
    (np.array([0.0, np.inf]), SR),
    (np.zeros(100), 0),  # non-positive rate
    (np.zeros(100), -16000),
    (np.zeros(100), math.nan),
])
def test_bad_input_raises_a_usage_error(audio, rate):
    with pytest.raises(LevelError) as e:
        level(audio, rate)
    assert isinstance(e.value, UsageError) and isinstance(e.value, ValueError)
