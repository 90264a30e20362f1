"""Drift over the eval lenses: per-window values by hand, the real-music band from the data set given; the embedder
is saved atomically; the metrics modules have no import cycle."""
import ast
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.audio.io import load_audio
from lmdm.config import ConfigError
from lmdm.errors import UsageError
from lmdm.metrics.embedder import Embedder, EmbedderConfig, EmbedderError, load_embedder, save_embedder
from lmdm.metrics.report import format_drift, measure_drift
from lmdm.streaming.streamer import SamplerConfig
from lmdm.train.dataset import DataError


# ---- the reference: from the data set given, else the one bundled with the embedder -------------------------------
@pytest.fixture(scope="module")
def val_data(real_data, tmp_path_factory):
    """A copy of the test data set whose folk ballad is the validation split (the Bach chorale stays in train)."""
    import pandas as pd

    out = tmp_path_factory.mktemp("drift") / "music"
    shutil.copytree(real_data, out, ignore=shutil.ignore_patterns("cache"))
    df = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    df["split"] = np.where(df.collection == "bach", "train", "val")
    df.to_csv(out / "manifest.csv", index=False)
    return out


@pytest.fixture(scope="module")
def recording_audio(real_data):
    """The decoded audio ``lmdm drift`` measures: the Bach chorale (about 20 s, a train piece of ``val_data``)."""
    import pandas as pd

    df = pd.read_csv(real_data / "manifest.csv")
    row = df[df.collection == "bach"].iloc[0]
    codec = MelCodec(CodecConfig())  # what a checkpoint carries
    return load_audio(real_data / row.audio, codec.sample_rate), codec


@pytest.fixture(scope="module")
def baseline(recording_audio, val_data):
    from lmdm.metrics.report import load_baseline

    return load_baseline(recording_audio[1].cfg, str(val_data), window_s=10.0)


def test_measure_drift_measures_each_window_of_decoded_audio_with_the_eval_lenses(recording_audio, baseline,
                                                                                    val_data):
    from lmdm.eval.distribution import kad
    from lmdm.eval.level import level
    from lmdm.eval.notes import note_stats
    from lmdm.eval.windows import cut_windows
    from lmdm.metrics.report import METRICS, _embed

    audio, codec = recording_audio
    sr = codec.sample_rate
    report = measure_drift(audio, SimpleNamespace(codec=codec, path="ckpt"), "x", "p", SamplerConfig(), 10.0,
                           baseline=baseline)
    w = report["windows"]
    assert len(w) == len(audio) // (10 * sr) >= 1 and w[0]["start_s"] == 0
    assert all(a["end_s"] == b["start_s"] for a, b in zip(w, w[1:]))
    assert all(math.isfinite(r[m]) for r in w for m in METRICS)
    first = audio[: 10 * sr]
    lv, ns = level(first, sr), note_stats(baseline.transcribe(first, sr), 0.0, 10.0)
    assert w[0]["lufs"] == pytest.approx(lv.lufs) and w[0]["key_clarity"] == pytest.approx(ns.key_clarity)
    emb = _embed(cut_windows(first, sr, 5.0), baseline.embedder, baseline.codec, sr)
    assert len(emb) == 2 and w[0]["kad"] == pytest.approx(kad(emb, baseline.reference))
    # the band: the same metrics over the validation piece's first window (one validation piece here)
    assert set(report["real_music"]) == set(METRICS)
    assert all(v["windows"] == 1 and math.isfinite(v["mean"]) for v in report["real_music"].values())
    assert report["reference"]["data"] == str(val_data) and str(val_data) in format_drift(report)


def test_kad_tells_real_music_from_noise(recording_audio, baseline):
    audio, codec = recording_audio
    ckpt = SimpleNamespace(codec=codec, path="ckpt")
    noise = np.random.default_rng(0).standard_normal(len(audio)).astype(np.float32) * 0.1
    real = measure_drift(audio, ckpt, "real", "p", SamplerConfig(), 10.0, baseline=baseline)
    far = measure_drift(noise, ckpt, "noise", "p", SamplerConfig(), 10.0, baseline=baseline)
    assert max(r["kad"] for r in real["windows"]) < min(r["kad"] for r in far["windows"])


def test_without_a_data_set_there_is_no_kad_and_no_band(recording_audio):
    audio, codec = recording_audio
    report = measure_drift(audio, SimpleNamespace(codec=codec, path="c"), "x", "p", SamplerConfig(), 10.0)
    assert report["real_music"] == {} and report["reference"]["data"] is None
    assert all(math.isnan(r["kad"]) and math.isfinite(r["lufs"]) for r in report["windows"])
    assert "no data set" in format_drift(report)


def test_bad_windows_and_data_are_user_errors(recording_audio, real_data):
    audio, codec = recording_audio
    ckpt = SimpleNamespace(codec=codec, path="c")
    with pytest.raises(DataError, match="no val piece"):
        measure_drift(audio, ckpt, "x", "p", SamplerConfig(), 10.0, data_dir=str(real_data))
    with pytest.raises(UsageError, match="too short"):
        measure_drift(audio, ckpt, "x", "p", SamplerConfig(), 5.0)
    with pytest.raises(UsageError, match="shorter than one window"):
        measure_drift(audio[: 5 * codec.sample_rate], ckpt, "x", "p", SamplerConfig(), 10.0)


@pytest.fixture
def fake_stream(recording_audio, monkeypatch):
    """``lmdm drift`` streams the real recording instead of generating (the measuring is what is tested)."""
    audio, codec = recording_audio
    monkeypatch.setattr("lmdm.metrics.report.stream_audio",
                        lambda ckpt, prompt, seconds, sampler, progress=False: audio[: round(seconds * codec.sample_rate)])


def _drift(tmp_path, capsys, name, *extra):
    from lmdm.cli import main

    out = tmp_path / f"{name}.json"
    rc = main(["--quiet", "drift", "--minutes", "0.3", "--window", "10", "--json", str(out),
               "--out-dir", str(tmp_path), *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(out.read_text()), captured.out


def test_drift_command_data_option_chooses_the_reference(tmp_path, capsys, monkeypatch, fake_stream, val_data):
    monkeypatch.chdir(tmp_path)  # no data/music here
    bare, out = _drift(tmp_path, capsys, "bare")
    assert "no data set at data/music: measuring without a real-music reference" in out
    assert bare["reference"]["data"] is None and bare["real_music"] == {}
    assert all(math.isnan(w["kad"]) for w in bare["windows"])

    given, out = _drift(tmp_path, capsys, "given", "--data", str(val_data), "--compare", str(tmp_path / "bare.json"))
    assert given["reference"]["data"] == str(val_data) and "no data set" not in out
    assert all(math.isfinite(w["kad"]) for w in given["windows"]) and given["real_music"]["kad"]["windows"] == 1
    assert [w["lufs"] for w in given["windows"]] == pytest.approx([w["lufs"] for w in bare["windows"]])
    assert (tmp_path / "given.png").is_file()

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "music").symlink_to(val_data, target_is_directory=True)
    default, out = _drift(tmp_path, capsys, "default")
    assert default["reference"]["data"] == "data/music" and "no data set" not in out
    assert [w["kad"] for w in default["windows"]] == pytest.approx([w["kad"] for w in given["windows"]])


def test_reference_data_choice(tmp_path, monkeypatch):
    from lmdm.cli.drift import reference_data

    monkeypatch.chdir(tmp_path)
    assert reference_data(None) is None
    (tmp_path / "data" / "music").mkdir(parents=True)
    assert reference_data(None) is None  # a folder without a built data set is not a reference
    (tmp_path / "data" / "music" / "manifest.csv").write_text("work_id\n")
    assert reference_data(None) == "data/music"
    assert reference_data(str(tmp_path)) == str(tmp_path)
    with pytest.raises(UsageError, match="no such folder"):
        reference_data(str(tmp_path / "none"))


# ---- the embedder folder is written atomically --------------------------------------------------------------------
def _weights_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_failed_save_leaves_the_previous_embedder_loadable(tmp_path, monkeypatch):
    import safetensors.torch

    codec, cfg = CodecConfig(), EmbedderConfig(collections=("a",), instruments=("x",))
    torch.manual_seed(0)
    old = Embedder(cfg)
    path = save_embedder(tmp_path / "emb", old, codec, {"val_collection_accuracy": 0.5})
    torch.manual_seed(1)
    new = Embedder(cfg)

    def half_written(tensors, filename):
        Path(filename).write_bytes(b"\x00partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_embedder(path, new, codec, {"val_collection_accuracy": 0.9})
    monkeypatch.undo()

    loaded, metrics = load_embedder(path)
    assert metrics == {"val_collection_accuracy": 0.5} and _weights_equal(loaded, old)
    assert [p.name for p in tmp_path.iterdir()] == ["emb"]  # no temporary folder left beside it

    save_embedder(path, new, codec, {"val_collection_accuracy": 0.9})
    loaded, metrics = load_embedder(path)
    assert metrics == {"val_collection_accuracy": 0.9} and _weights_equal(loaded, new)


def test_missing_embedder_and_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(EmbedderError, match="lmdm metrics train-embedder"):
        load_embedder(tmp_path)
    with pytest.raises(ConfigError, match="width=12"):
        EmbedderConfig(width=12)


# ---- one concept per module, no import cycle ---------------------------------------------------------------------
def _runtime_imports(path: Path) -> set[str]:
    """``lmdm.metrics`` modules that ``path`` imports at run time (at the top or inside functions; imports under
    ``if TYPE_CHECKING:`` only serve annotations)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m.removeprefix("lmdm.metrics.") for m in found if m.startswith("lmdm.metrics.")}


def test_metrics_modules_import_each_other_without_a_cycle():
    import graphlib

    import lmdm.metrics

    folder = Path(lmdm.metrics.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    graph = {m: _runtime_imports(folder / f"{m}.py") & modules for m in modules}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert graph["embedder"] == set() and order.index("embedder") < order.index("embedder_training")
    assert graph["report"] == {"embedder"}  # drift is measured with the eval lenses, not the latent metrics


def test_importing_the_drift_report_does_not_import_embedder_training():
    code = ("import sys, lmdm.metrics.report\n"
            "print(sorted(m for m in sys.modules if m.startswith('lmdm.metrics')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "lmdm.metrics.embedder_training" not in p.stdout and "lmdm.metrics.report" in p.stdout


def test_a_missing_or_corrupt_embedder_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(EmbedderError, match="not valid JSON"):
        load_embedder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"embedder": {}}))
    with pytest.raises(EmbedderError, match="model.safetensors cannot be loaded"):
        load_embedder(tmp_path)
