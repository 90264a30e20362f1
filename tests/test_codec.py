"""The mel codec: shapes, frame rate, and reconstruction after decode -> re-encode."""
import pytest
import torch

from lmdm.audio.codec import CodecConfig, MelCodec
from tests.test_seams import tone


def test_geometry_is_documented_numbers():
    c = CodecConfig()
    assert c.sample_rate == 16000 and c.hop == 256 and c.n_mels == 128 and c.patch == 4
    assert c.frame_rate == 15.625 and c.channels == 512 and c.samples_per_frame == 1024


def test_encode_shapes_and_padding():
    codec = MelCodec()
    z = codec.encode(torch.zeros(2, 5000))
    assert z.shape == (2, 5, 512)  # ceil(5000 / 1024)
    mel = codec.latent_to_mel(z)
    assert mel.shape == (2, 20, 128)
    assert torch.equal(codec.mel_to_latent(mel), z)


def test_reconstruction_log_mel_distance():
    """decode -> re-encode stays close to the original latent (mean |diff| in log-mel units; 1 unit = 2.5 nepers)."""
    codec = MelCodec()
    z = codec.encode_numpy(tone(4.0))[None]
    y = codec.decode(z, generator=torch.Generator().manual_seed(0))
    assert y.shape == (1, z.shape[1] * 1024)
    err = (codec.encode(y) - z).abs().mean().item()
    assert err < 0.2, err
    # the decode of another sound is far off, so the metric can fail
    wrong = codec.decode(codec.encode_numpy(tone(4.0, f0=330.0))[None], generator=torch.Generator().manual_seed(0))
    assert (codec.encode(wrong) - z).abs().mean().item() > 2 * err


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        CodecConfig(fmax=9000.0)
