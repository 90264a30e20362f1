"""The melody piano roll: where a pitch lands, that it starts as a no-op, and that fine-tuning may add it."""
import pytest
import torch

from lmdm.control.features import control_input, pitch_to_feature
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT, pitch_roll
from lmdm.model.layouts import enc_dec_tokens


def controls_for(midi, voiced):
    feats = torch.zeros(1, len(midi), 4)
    feats[0, :, 0] = torch.from_numpy(pitch_to_feature(midi))
    feats[0, :, 1] = torch.tensor(voiced, dtype=torch.float)
    return control_input(feats, torch.tensor([[1, 0, 0]]))


def test_semitones_land_on_one_bin_and_quarter_tones_split():
    roll = pitch_roll(controls_for([36.0, 40.0, 40.5, 60.0], [1, 1, 1, 1]), bins=48, low=36)[0]
    assert roll.shape == (4, 48)
    assert roll[0, 0] == 1 and roll[0].sum() == 1
    assert roll[1, 4] == 1 and roll[1].sum() == 1
    assert torch.allclose(roll[2, 4:6], torch.tensor([0.5, 0.5])) and roll[2].sum() == pytest.approx(1.0)
    assert roll[3, 24] == 1


def test_unvoiced_absent_and_out_of_range_pitches():
    roll = pitch_roll(controls_for([60.0, 20.0, 120.0], [0, 1, 1]), bins=48, low=36)[0]
    assert roll[0].sum() == 0  # unvoiced: nothing
    assert roll[1, 0] == 1 and roll[2, 47] == 1  # clamped to the ends of the range
    absent = control_input(torch.ones(1, 3, 4), torch.tensor([[0, 1, 1]]))  # melody group dropped
    assert pitch_roll(absent, 48, 36).abs().sum() == 0


def small_cfg(**kw):
    return DiTConfig(latent_channels=8, d_model=16, n_layers=2, n_heads=2, text_dim=4, block_frames=2,
                     window_chunks=1, **kw)


def test_the_roll_starts_as_a_no_op_and_leaves_other_weights_as_without_it():
    torch.manual_seed(0)
    plain = DiT(small_cfg())
    torch.manual_seed(0)
    rolled = DiT(small_cfg(pitch_bins=12, pitch_low=54))
    for k, v in plain.state_dict().items():
        assert torch.equal(v, rolled.state_dict()[k]), k
    with torch.no_grad():  # adaLN-Zero makes a fresh DiT output zero: give every path signal, the same in both
        for p in plain.parameters():
            p.add_(0.2 * torch.randn_like(p))
    rolled.load_state_dict(plain.state_dict(), strict=False)
    ctx, x_t = torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    ctrl = controls_for([60.0, 62.0], [1, 1])
    tok = enc_dec_tokens(ctx, x_t, torch.tensor([0.5]), ctrl, start_frame=0)
    text, has = torch.zeros(1, 4), torch.zeros(1, dtype=torch.bool)
    assert torch.equal(plain(tok, text, has), rolled(tok, text, has))
    with torch.no_grad():
        rolled.pitch_proj.weight.normal_()
    assert not torch.allclose(plain(tok, text, has), rolled(tok, text, has))


def test_fine_tune_may_add_the_roll_to_a_checkpoint_without_it(real_data, tmp_path):
    import dataclasses

    from lmdm.audio.codec import CodecConfig, MelCodec
    from lmdm.checkpoint import save_checkpoint
    from lmdm.train.pretrain import TrainError, train
    from tests.conftest import tiny_train_config

    base = tiny_train_config(real_data, tmp_path / "unused")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base", DiT(base.model), MelCodec(CodecConfig()), dtype=torch.float32)
    grown = dataclasses.replace(base.model, pitch_bins=12)
    result = train(tiny_train_config(real_data, tmp_path / "run", model=grown, init_from=str(tmp_path / "base"),
                                     steps=2, val_every=2, ckpt_every=2), progress=False)
    assert result.step == 2
    wider = dataclasses.replace(grown, d_model=128)
    with pytest.raises(TrainError, match="model config"):
        train(tiny_train_config(real_data, tmp_path / "run2", model=wider, init_from=str(tmp_path / "base")),
              progress=False)


def test_guidance_over_controls_drops_them_in_the_unconditional_branch():
    from lmdm.streaming.streamer import BlockCausalStreamer, SamplerConfig

    torch.manual_seed(0)
    model = DiT(small_cfg(control_dim=7)).eval()
    with torch.no_grad():  # adaLN-Zero starts as the identity: give every path signal
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ctrl = controls_for([60.0, 67.0], [1, 1])

    def block(**kw):
        s = BlockCausalStreamer(model, SamplerConfig(steps=2, sampler="euler", seed=3, **kw))
        s.set_prompt(torch.zeros(1, 4), torch.zeros(1, dtype=torch.bool))  # no prompt: only controls can guide
        s.reset()
        return s.next_block(ctrl)

    unguided = block(cfg_scale=1.0)
    assert torch.equal(block(cfg_scale=3.0, guide_controls=False), unguided)  # nothing to guide towards
    assert not torch.allclose(block(cfg_scale=3.0), unguided)  # guidance towards following the controls
