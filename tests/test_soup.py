"""A uniform model soup of ARC students: the DiT weights' mean, only of students of one base, and clear refusals."""
import pytest
import torch

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.checkpoint import load_checkpoint, save_checkpoint
from lmdm.cli import main
from lmdm.errors import UsageError
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.train.arc.soup import make_soup, soup_state

CFG = DiTConfig(latent_channels=512, d_model=32, n_layers=1, n_heads=2)
INFO = {"base": "data/checkpoints/lmdm-small", "level_ceiling": 2.8, "frame_level_ceiling": 2.68,
        "sampler": {"sampler": "pingpong", "steps": 4, "cfg_scale": 1.0}}


def student(path, seed, cfg=CFG, **info):
    """A checkpoint of a DiT with seed-dependent random weights, as ``lmdm arc`` writes it (bf16)."""
    torch.manual_seed(seed)
    m = DiT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    meta = {**INFO, "arc_step": 600, "arc_hours_cpu": 0.23, "arc_config": {"seed": seed}, **info}
    return save_checkpoint(path, m, MelCodec(CodecConfig()), meta)


def test_soup_state_is_the_mean_and_refuses_what_is_not_one_model():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 6.0], dtype=torch.bfloat16), "n": torch.tensor([3])}
    out = soup_state([a, b])
    assert out["w"].dtype == torch.float32 and out["w"].tolist() == [2.0, 4.0] and out["n"].tolist() == [3]
    with pytest.raises(ValueError, match="at least two"):
        soup_state([a])
    with pytest.raises(ValueError, match="other tensors"):
        soup_state([a, {"w": a["w"]}])
    with pytest.raises(ValueError, match="shape"):
        soup_state([a, {"w": torch.zeros(3), "n": a["n"]}])
    with pytest.raises(ValueError, match="non-floating"):
        soup_state([a, {"w": a["w"], "n": torch.tensor([4])}])


def test_soup_averages_the_members_weights_and_records_them(tmp_path):
    members = [student(tmp_path / f"s{s}", s) for s in range(3)]
    out = make_soup(members, tmp_path / "soup")
    ck = load_checkpoint(out)
    states = [load_checkpoint(m).model.state_dict() for m in members]
    for k, v in ck.model.state_dict().items():
        mean = torch.stack([s[k] for s in states]).mean(0)
        # stored in bf16 like every export: within half a bf16 step of the float32 mean
        assert torch.allclose(v, mean, rtol=2 ** -8, atol=1e-6), k
        assert not torch.equal(v, states[0][k])
    assert ck.info["soup"]["members"] == [str(m) for m in members]
    assert ck.info["soup"]["seeds"] == [0, 1, 2] and ck.info["soup"]["arc_steps"] == [600] * 3
    assert ck.info["level_ceiling"] == 2.8 and ck.info["sampler"] == INFO["sampler"] and "arc_config" not in ck.info
    assert ck.info["arc_hours_cpu"] == 0.69 and "arc_step" not in ck.info


def test_soup_refuses_members_of_other_bases(tmp_path):
    a, b = student(tmp_path / "a", 0), student(tmp_path / "b", 1)
    with pytest.raises(UsageError, match="at least two"):
        make_soup([a], tmp_path / "soup")
    with pytest.raises(UsageError, match="twice"):
        make_soup([a, tmp_path / "a"], tmp_path / "soup")
    with pytest.raises(UsageError, match="one of its members"):
        make_soup([a, b], a)
    other = student(tmp_path / "c", 2, DiTConfig(latent_channels=512, d_model=32, n_layers=2, n_heads=2))
    with pytest.raises(UsageError, match="another model"):
        make_soup([a, other], tmp_path / "soup")
    ceiling = student(tmp_path / "d", 3, level_ceiling=3.1)
    with pytest.raises(UsageError, match="info.level_ceiling"):
        make_soup([a, ceiling], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_soup_command(tmp_path, capsys):
    a, b = student(tmp_path / "a", 0), student(tmp_path / "b", 1)
    assert main(["soup", str(a), str(b), "--out", str(tmp_path / "soup")]) == 0
    assert "soup of 2 students" in capsys.readouterr().out and load_checkpoint(tmp_path / "soup").info["soup"]
    assert main(["soup", str(a), "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lmdm: error: a soup needs at least two checkpoints, got 1"]
