"""`lmdm bench --quick` runs end to end on the bundled checkpoint (no timing assertions: CI machines vary)."""
import json

import pytest

from lmdm.cli import main


def test_bench_quick_writes_table_json_and_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["--quiet", "bench", "--quick", "--json", str(out), "--out-dir", str(tmp_path)])
    text = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out.read_text())
    rows = {r["streamer"]: r for r in result["table"]}
    assert set(rows) == {"outpainting", "enc_dec", "block_causal", "lmm"}
    for r in rows.values():
        assert abs(r["counted_GFLOP_per_block"] / r["analytic_GFLOP_per_block"] - 1) < 1e-9  # the formulas are exact
        assert r["wall_ms_per_block"] > 0
    assert rows["outpainting"]["analytic_GFLOP_per_block"] > rows["block_causal"]["analytic_GFLOP_per_block"]
    for name in ("enc_dec", "block_causal"):
        assert rows[name]["bootstrap_ms"] > 0 and rows[name]["subsequent_step_ms"] > 0
    assert result["summary"]["lmm_untrained"] is True
    assert all((tmp_path / f"bench_{k}.png").stat().st_size > 10_000 for k in ("context", "steps"))
    assert "untrained" in text and "outpainting / block-causal" in text


def test_sampler_ranges_live_in_sampler_config_and_bench_config_uses_them():
    import pytest

    from lmdm.bench.run import BenchConfig
    from lmdm.config import ConfigError
    from lmdm.streaming.streamer import SamplerConfig

    bad = [({"steps": 0}, "steps must be an integer from 1 to 1000, got 0"),
           ({"steps": 2.5}, "steps must be an integer from 1 to 1000, got 2.5"),
           ({"steps": True}, "steps must be an integer from 1 to 1000, got True"),
           ({"sampler": "heun"}, "unknown sampler 'heun'; choose one of "),
           ({"cfg_scale": 51}, "cfg scale must be between 0 and 50, got 51"),
           ({"cfg_scale": -0.5}, "cfg scale must be between 0 and 50, got -0.5"),
           ({"cfg_scale": float("nan")}, "cfg scale must be between 0 and 50, got nan")]
    for kw, message in bad:
        with pytest.raises(ConfigError) as e:
            SamplerConfig(**kw)
        assert str(e.value).startswith(message), (kw, str(e.value))
    SamplerConfig(steps=1, cfg_scale=0.0), SamplerConfig(steps=1000, cfg_scale=50)  # the ends are accepted
    with pytest.raises(ConfigError, match="^steps must be an integer from 1 to 1000, got 0$"):
        BenchConfig(steps=0)
    with pytest.raises(ConfigError, match="^steps must be an integer from 1 to 1000, got 2000$"):
        BenchConfig.quick(sweep_steps=(2, 2000))
    with pytest.raises(ConfigError, match="^cfg scale must be between 0 and 50, got 60$"):
        BenchConfig(cfg_scale=60)
    with pytest.raises(ConfigError, match="^rounds must be a positive integer, got 0$"):
        BenchConfig(rounds=0)
    with pytest.raises(ConfigError, match=r"^sweep_context_chunks\[1\] must be a positive integer, got 0$"):
        BenchConfig(sweep_context_chunks=(1, 0))
    BenchConfig(), BenchConfig.quick()


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_sampler_config_refuses_seeds_torch_cannot_take(seed):
    """torch.Generator.manual_seed overflows past 2**64 with a plain ValueError: SamplerConfig must refuse first."""
    from lmdm.config import ConfigError
    from lmdm.streaming.streamer import SamplerConfig

    with pytest.raises(ConfigError, match="^seed must be an integer"):
        SamplerConfig(seed=seed)
