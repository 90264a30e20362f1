"""Drift metrics are near zero between two halves of one real recording and large against noise."""
import numpy as np
import pytest
import torch

from lmdm.audio.io import load_audio
from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.metrics.drift import compare, frechet_distance, gaussian, window_metrics, Reference
from lmdm.metrics.embedder import Embedder, EmbedderConfig


@pytest.fixture(scope="module")
def recording(real_data):
    import pandas as pd

    df = pd.read_csv(real_data / "manifest.csv")
    row = df[df.collection == "bach"].iloc[0]  # the longer of the two test works (about 20 s)
    codec = CodecConfig()
    return MelCodec(codec).encode_numpy(load_audio(real_data / row.audio, codec.sample_rate)), codec


def test_halves_of_one_recording_are_close_and_noise_is_far(recording):
    lat, codec = recording
    torch.manual_seed(0)
    embedder = Embedder(EmbedderConfig(collections=("a", "b"), instruments=("x", "y"))).eval()
    half = lat.shape[0] // 2
    a, b = lat[:half], lat[half : 2 * half]
    noise = torch.randn_like(b)
    same, far = compare(a, b, codec, embedder), compare(a, noise, codec, embedder)
    for k in same:
        assert far[k] > 3 * same[k], (k, same[k], far[k])
    assert same["loudness_db"] < 3 and same["pc_entropy"] < 0.3 and same["flatness"] < 0.1


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    g = gaussian(x)
    assert frechet_distance(*g, *g) == pytest.approx(0, abs=1e-6)
    shifted = gaussian(x + np.array([3.0, 0, 0, 0]))
    assert frechet_distance(*g, *shifted) == pytest.approx(9.0, rel=0.05)


def test_window_metrics_cover_the_stream(recording):
    lat, codec = recording
    embedder = Embedder(EmbedderConfig(collections=("a",), instruments=("x",))).eval()
    ref = Reference(np.zeros(64), np.eye(64), np.zeros(128), np.ones(128))
    rows = window_metrics(lat, codec, embedder, ref, window_s=5.0)
    assert len(rows) == lat.shape[0] // int(round(5 * codec.frame_rate))
    assert {"fd", "loudness_db", "flatness", "mel_distance", "pc_entropy", "start_s"} <= set(rows[0])
    assert all(0 <= r["pc_entropy"] <= np.log2(12) + 1e-6 for r in rows)
