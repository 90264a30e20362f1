"""Strict config loading (lmdm.config): each rule with a known answer, and every shipped config still loads."""
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmdm.audio.codec import CodecConfig
from lmdm.config import ConfigError, from_dict, load_json, replace, to_dict
from lmdm.errors import LmdmError
from lmdm.model.config import DiTConfig
from lmdm.train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Inner:
    n: int = 1
    x: float = 0.5


@dataclass(frozen=True)
class Outer:
    name: str = "a"
    label: str | None = None
    pair: tuple[float, float] = (0.9, 0.99)
    tags: tuple[str, ...] = ()
    weights: dict[str, float] = field(default_factory=lambda: {"a": 1.0})
    flag: bool = False
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.inner.n < 0:
            raise ValueError(f"inner.n must be >= 0, got {self.inner.n}")


def test_config_error_is_a_user_error_and_a_value_error():
    assert issubclass(ConfigError, LmdmError) and issubclass(ConfigError, ValueError)


def test_known_answer_for_every_field_kind():
    cfg = from_dict(Outer, {"name": "b", "label": None, "pair": [1, 0.5], "tags": ["x", "y"],
                            "weights": {"a": 2, "b": 0.25}, "flag": True, "inner": {"n": 3}})
    assert cfg == Outer(name="b", label=None, pair=(1.0, 0.5), tags=("x", "y"), weights={"a": 2.0, "b": 0.25},
                        flag=True, inner=Inner(n=3, x=0.5))
    assert from_dict(Outer, {"label": "z"}).label == "z"
    assert from_dict(Outer, {}) == Outer()


def test_json_integers_become_floats_in_float_fields():
    cfg = from_dict(Outer, {"pair": [1, 2], "weights": {"a": 3}, "inner": {"x": 4}})
    assert [type(v) for v in (*cfg.pair, cfg.weights["a"], cfg.inner.x)] == [float] * 4


def test_unknown_keys_are_rejected_with_the_valid_keys():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"nmae": "b", "flag": True}, where="cfg.json")
    msg = str(e.value)
    assert msg.startswith("cfg.json: unknown key(s) ['nmae'] for Outer")
    assert "valid keys are: name, label, pair, tags, weights, flag, inner" in msg


def test_unknown_keys_in_a_nested_config_name_the_nested_place():
    with pytest.raises(ConfigError, match=r"^cfg\.json\.inner: unknown key\(s\) \['m'\] for Inner; valid keys are: n, x$"):
        from_dict(Outer, {"inner": {"m": 1}}, where="cfg.json")


@pytest.mark.parametrize("data, place", [
    ({"name": 3}, "w.name"),
    ({"label": 3}, "w.label"),
    ({"flag": "yes"}, "w.flag"),
    ({"inner": {"n": 1.5}}, "w.inner.n"),
    ({"inner": {"n": True}}, "w.inner.n"),  # true is not a number in JSON
    ({"inner": {"x": False}}, "w.inner.x"),
    ({"weights": {"a": "heavy"}}, "w.weights"),
    ({"tags": [1]}, "w.tags"),
    ({"pair": "0.9,0.99"}, "w.pair"),
    ({"pair": {"a": 0.9, "b": 0.99}}, "w.pair"),
    ({"tags": "xy"}, "w.tags"),  # a string is not a list of strings (not ('x', 'y'))
    ({"weights": [["a", 1.0]]}, "w.weights"),
])
def test_wrong_types_name_the_field(data, place):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data, where="w")
    assert str(e.value).startswith(f"{place}: expected ")


@pytest.mark.parametrize("pair", [[0.9, 0.99, 0.5], [0.9], []])
def test_a_tuple_of_the_wrong_length_is_an_error_not_truncated(pair):
    with pytest.raises(ConfigError, match=r"w\.betas: expected tuple\[float, float\]"):
        from_dict(TrainConfig, {"betas": pair}, where="w")


def test_a_non_object_is_rejected():
    with pytest.raises(ConfigError, match="expected a JSON object for Outer, got list"):
        from_dict(Outer, [1, 2])
    with pytest.raises(ConfigError, match=r"w\.inner: expected a JSON object for Inner, got int"):
        from_dict(Outer, {"inner": 3}, where="w")


def test_post_init_value_errors_become_config_errors_with_the_place():
    with pytest.raises(ConfigError, match=r"^w: inner\.n must be >= 0, got -1$"):
        from_dict(Outer, {"inner": {"n": -1}}, where="w")
    with pytest.raises(ConfigError, match=r"^run\.json\.model: d_model \(100\) / n_heads \(3\)"):
        from_dict(TrainConfig, {"model": {"d_model": 100, "n_heads": 3}}, where="run.json")
    with pytest.raises(ConfigError, match=r"^run\.json: mode_mix has unknown mode"):
        from_dict(TrainConfig, {"mode_mix": {"warp": 1.0}}, where="run.json")


def test_nested_train_config_round_trips_through_json():
    cfg = TrainConfig(model=DiTConfig(d_model=64, n_heads=2, n_layers=2), codec=CodecConfig(gl_iters=8),
                      betas=(0.8, 0.95), export_dir="x", mode_mix={"block_causal": 1.0})
    again = from_dict(TrainConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg and isinstance(again.betas, tuple) and isinstance(again.model, DiTConfig)


def test_load_json_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_json(Outer, tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_json(Outer, tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text('{"inner": {"n": 7}}')
    assert load_json(Outer, tmp_path / "ok.json").inner.n == 7


def test_replace_rejects_unknown_fields():
    assert replace(Inner(), n=5) == Inner(n=5)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['m'\] for Inner; valid keys are: n, x"):
        replace(Inner(), m=5)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.json")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    from lmdm.eval.transcriber import TranscriberTrainConfig
    from lmdm.metrics.drift_study import StudyConfig, load_study
    from lmdm.train.arc.trainer import ARCConfig
    from lmdm.train.autoencoder import AutoencoderRun

    kinds = {"arc": ARCConfig, "autoencoder": AutoencoderRun, "transcriber": TranscriberTrainConfig,
             "drift-study": StudyConfig, "runaway-trace": StudyConfig}
    cls = next((c for prefix, c in kinds.items() if path.name.startswith(prefix)), TrainConfig)
    built = load_study(path) if cls is StudyConfig else load_json(cls, path)
    assert _taken(json.loads(path.read_text()), to_dict(built))


def _taken(given: dict, built: dict) -> bool:
    """Every value in ``given`` (nested objects and lists of them included) is the one in ``built``."""
    return all(_same(v, built[k]) if k != "mode_mix" else built[k] == v for k, v in given.items())


def _same(given, built) -> bool:
    if isinstance(given, dict) and isinstance(built, dict):
        return _taken(given, built)
    if isinstance(given, list) and isinstance(built, list) and any(isinstance(v, dict) for v in given):
        return len(given) == len(built) and all(_same(g, b) for g, b in zip(given, built))
    return built == given


@pytest.mark.parametrize("path", sorted((ROOT / "data" / "checkpoints").glob("lmdm-*")), ids=lambda p: p.name)
def test_bundled_checkpoint_configs_load(path):
    meta = json.loads((path / "config.json").read_text())
    model = from_dict(DiTConfig, meta["model"], where="model")
    codec = from_dict(CodecConfig, meta["codec"], where="codec")
    assert _taken(meta["model"], to_dict(model)) and _taken(meta["codec"], to_dict(codec))
    ae = meta.get("autoencoder")
    # the DiT diffuses the codec's latent: raw mel patches, or the autoencoder's code of them
    assert model.latent_channels == (codec.channels if ae is None else ae["latent_channels"])
    assert ae is None or ae["in_channels"] == codec.channels
