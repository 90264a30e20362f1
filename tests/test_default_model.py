"""The bundled default checkpoint's music, measured: its velocity field lands on the data's level when integrated
with many Euler steps, and its spectrograms have no seams on the model's grid (issue "music like its data").

The data's level: every work of a data set is rendered at -20 dBFS RMS (``lmdm.data.render.finish_audio``); the
two test works of ``real_data`` are measured here in LUFS beside the generated audio, with the same meter.
"""
import numpy as np
import pytest
import torch

from lmdm.checkpoint import load_checkpoint, repo_root
from lmdm.eval.level import level
from lmdm.eval.seams import seam_ratios
from lmdm.streaming.generate import generate
from lmdm.streaming.streamer import SamplerConfig, checkpoint_sampler

PROMPTS = ("a slow Bach chorale on church organ", "an Irish reel on fiddle", "a string quartet movement")


@pytest.fixture(scope="module")
def default():
    return load_checkpoint(repo_root() / "data" / "checkpoints" / "lmdm-small")


def data_lufs(real_data) -> float:
    from lmdm.audio.io import load_audio

    return float(np.mean([level(load_audio(f, 16000), 16000).lufs for f in sorted((real_data / "audio").iterdir())]))


def euler_32(default, prompts=PROMPTS[:2], seeds=(0, 1)) -> list[np.ndarray]:
    """10 s streams integrated with 32 Euler steps at CFG 1 (no guidance): the velocity field alone."""
    sampler = lambda seed: SamplerConfig(steps=32, sampler="euler", cfg_scale=1.0, seed=seed)
    return [generate(default, p, 10.0, sampler(seed)).audio for p in prompts for seed in seeds]


@pytest.mark.slow
def test_euler_32_steps_land_at_the_data_level(default, real_data):
    """A sound rectified-flow velocity field integrated with 32 Euler steps (CFG 1) ends on the data's statistics:
    loudness within 1.5 dB of the data's (the old raw-mel default ended 17 dB above it, a third of it clipped)."""
    lufs = [level(a, 16000).lufs for a in euler_32(default)]
    real = data_lufs(real_data)
    assert abs(float(np.mean(lufs)) - real) <= 1.5, (lufs, real)


@pytest.mark.slow
def test_euler_32_steps_do_not_clip_after_the_first_block(default):
    """Past the first block (which starts from no context), no sample reaches 0.999 full scale."""
    first = default.model.cfg.block_frames * default.codec.samples_per_frame
    assert max(float(np.abs(a[first:]).max()) for a in euler_32(default)) < 0.999


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known defect of the bundled model (README, 'The bundled checkpoint'): with "
                   "Euler at CFG 1 and no context, the first block of one of these four streams (the chorale, seed 0) "
                   "decodes above the corpus' loudest mel and peaks at 1.33 full scale; strict, so the marker must go "
                   "when a model fixes it")
def test_euler_32_steps_do_not_clip_in_the_first_block(default):
    first = default.model.cfg.block_frames * default.codec.samples_per_frame
    assert max(float(np.abs(a[:first]).max()) for a in euler_32(default)) < 0.999


def decoded_seams(ckpt, audio: np.ndarray) -> dict[str, float]:
    """Seam ratios of decoded audio re-encoded to log-mel, on the model's grid from the first sample (what the
    seams lens of ``lmdm eval`` measures, and what a listener hears)."""
    mel = ckpt.codec.audio_to_mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None])[0].numpy()
    patch = ckpt.codec.cfg.patch
    return seam_ratios(mel, patch, ckpt.model.cfg.block_frames * patch)


@pytest.mark.slow
def test_streamed_decoding_of_real_music_has_no_block_seam(default, real_data):
    """Real music encoded to the bundled latent and decoded block by block, as every stream is, jumps no more
    at block boundaries than elsewhere (block seam ratio <= 1.1): the streaming decoder adds no seam of its own.
    With the crossfade at the boundary (``lookahead_mel_frames=0``, the decoder before its lookahead) these two
    works read 1.14 and 1.16 (0.81 and 0.94 with it), six validation pieces 1.38 (README, "Measured")."""
    from lmdm.audio.decoder import StreamingDecoder, decode_in_blocks
    from lmdm.audio.io import load_audio

    B = default.model.cfg.block_frames
    ratios = []
    for i, f in enumerate(sorted((real_data / "audio").iterdir())):
        z = default.codec.encode_numpy(load_audio(f, default.codec.sample_rate))
        audio = decode_in_blocks(StreamingDecoder(default.codec, seed=i), z, B)
        ratios.append(decoded_seams(default, audio)["block"])
    assert float(np.mean(ratios)) <= 1.1, ratios


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known defect of the bundled model (README, 'The bundled checkpoint'): its "
                   "decoded streams jump more at latent-frame boundaries than inside latent frames (these three streams "
                   "with its sampler, eta 0.5: 1.17; at eta 1: 1.14; real music through the same latent: 1.09), and "
                   "more at block boundaries (1.30; at eta 1: 1.20; the eval's 54 windows: 1.09 at both), where its "
                   "latents themselves jump 1.17x more than elsewhere; strict, so the marker must go when a model "
                   "fixes it")
def test_generated_audio_has_no_seams_on_the_model_grid(default):
    """Frame seam ratio (latent-frame boundary / inside) and block seam ratio (block boundary / all) of generated
    streams with the checkpoint's own sampler (``info["sampler"]``), as decoded for the listener: at most 1.1, as in real music (1.0) and in real music through the
    bundled latent and the streaming decoder (1.09 / 1.05)."""
    ratios = [decoded_seams(default, generate(default, prompt, 20.0, checkpoint_sampler(default.info, seed=i)).audio)
              for i, prompt in enumerate(PROMPTS)]
    frame = float(np.mean([r["frame"] for r in ratios]))
    block = float(np.mean([r["block"] for r in ratios]))
    assert frame <= 1.1 and block <= 1.1, ratios
