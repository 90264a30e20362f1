"""`lmdm bench --quick` runs end to end on the bundled checkpoint and reports what it measured, with sane values;
the competing load it starts is always stopped; the README table is printed from the JSON. No timing assertions:
CI machines vary, and the speed targets are for the benchmark's output, not for tests."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmdm.cli import main

STREAMER_NAMES = {"outpainting", "enc_dec", "block_causal", "lmm", "lmm_unguided"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `lmdm bench --quick --no-load` run shared by the tests below: (result, printed text, out dir, json)."""
    out_dir = tmp_path_factory.mktemp("bench")
    out = out_dir / "bench.json"
    rc = main(["--quiet", "bench", "--quick", "--no-load", "--json", str(out), "--out-dir", str(out_dir)])
    assert rc == 0
    return json.loads(out.read_text()), out_dir, out


def test_bench_quick_writes_table_json_and_figures(quick, capsys):
    result, out_dir, out = quick
    rows = {r["streamer"]: r for r in result["table"]}
    assert set(rows) == STREAMER_NAMES
    for r in rows.values():
        assert abs(r["counted_GFLOP_per_block"] / r["analytic_GFLOP_per_block"] - 1) < 1e-9  # the formulas are exact
        assert r["wall_ms_per_block"] > 0
    assert rows["outpainting"]["analytic_GFLOP_per_block"] > rows["block_causal"]["analytic_GFLOP_per_block"]
    for name in ("enc_dec", "block_causal"):
        assert rows[name]["bootstrap_ms"] > 0 and rows[name]["subsequent_step_ms"] > 0
    assert result["summary"]["lmm_untrained"] is True
    assert all((out_dir / f"bench_{k}.png").stat().st_size > 10_000 for k in ("context", "steps"))
    assert main(["bench", "--from-json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "untrained" in text and "outpainting / block-causal" in text and "targets:" in text


def test_sequential_passes_are_counted_and_match_their_definition(quick):
    result = quick[0]
    cfg, s = result["config"], result["summary"]
    rows = {r["streamer"]: r for r in result["table"]}
    S, tokens = cfg["steps"], s["block_frames"] * cfg["lmm_depth"]
    want = {"outpainting": S, "enc_dec": 1 + S, "block_causal": S, "lmm": 1 + tokens, "lmm_unguided": 1 + tokens}
    for name, n in want.items():
        assert rows[name]["sequential_passes_per_block"] == rows[name]["sequential_passes_analytic"] == n, name


def test_lmm_runs_at_matched_guidance_and_costs_two_rows(quick):
    rows = {r["streamer"]: r for r in quick[0]["table"]}
    assert quick[0]["summary"]["cfg_scale"] != 1.0
    assert rows["lmm"]["cfg_rows"] == rows["block_causal"]["cfg_rows"] == 2 and rows["lmm_unguided"]["cfg_rows"] == 1
    assert rows["lmm"]["counted_GFLOP_per_block"] == pytest.approx(2 * rows["lmm_unguided"]["counted_GFLOP_per_block"],
                                                                   rel=1e-12)
    # the speed-up over the LMM is measured against the guided one
    best = rows[quick[0]["summary"]["best_lmdm"]]
    assert quick[0]["summary"]["lmdm_speedup_over_lmm"] == pytest.approx(
        rows["lmm"]["wall_ms_per_block"] / best["wall_ms_per_block"])


def test_mfu_is_counted_flops_over_wall_against_a_peak_measured_in_the_run(quick):
    result = quick[0]
    peak = result["gemm_peak"]
    assert peak["peak_GFLOP_s"] == max(r["GFLOP_s"] for r in peak["shapes"]) > 0
    assert peak["threads"] == result["summary"]["machine"]["torch_threads"] and peak["dtype"] == "float32"
    for r in result["table"]:
        achieved = r["counted_GFLOP_per_block"] / (r["wall_ms_per_block"] / 1000)
        assert r["achieved_GFLOP_s"] == pytest.approx(achieved)
        assert r["mfu"] == pytest.approx(achieved / peak["peak_GFLOP_s"])
        assert 0 < r["mfu"] <= 1.5, r


def test_generate_rtf_prompt_change_and_targets_are_reported(quick):
    result = quick[0]
    g, pc, s = result["generate"], result["prompt_change"], result["summary"]
    assert g["seconds"] == pytest.approx(result["config"]["generate_seconds"], abs=1e-3)
    assert g["rtf_model"] > 0 and g["rtf_decode"] > 0 and g["rtf"] == pytest.approx(g["rtf_model"] + g["rtf_decode"])
    assert s["rtf_end_to_end"] == g["rtf"]
    # lmdm generate's precision, and the float32 reference beside it wherever that is another one
    from lmdm.model.precision import resolve_precision
    assert g["precision"] == resolve_precision("auto") and g["gl_init"] == "gradient"
    assert ("float32" in g) == (g["precision"] != "float32")
    if "float32" in g:
        assert g["float32"]["precision"] == "float32" and g["float32"]["rtf"] > 0
    assert pc["changes"] == result["config"]["prompt_changes"]
    assert pc["prompt_change_ms"] > 0 and pc["steady_block_ms"] > 0
    assert s["fused_over_subsequent_step"] > 0
    # the fused step's own arithmetic beside its wall ratio: the clean chunk's B tokens next to rows * B targets
    from lmdm.bench.cost import fused_step_flop_ratio
    from lmdm.checkpoint import load_checkpoint

    mc = load_checkpoint(result["config"]["checkpoint"]).model.cfg
    assert s["fused_over_subsequent_flops"] == pytest.approx(fused_step_flop_ratio(mc, s["cfg_scale"] != 1.0))
    targets = {t["name"]: t for t in s["targets"]}
    assert set(targets) == {"wall_ratio_over_flop_ratio", "rtf_end_to_end", "fused_over_subsequent_step",
                            "lmdm_speedup_over_lmm", "rtf_under_load", "jam_underruns_under_load"}
    assert targets["rtf_end_to_end"]["met"] == (g["rtf"] <= 0.1)
    # the ceiling the GEMM rates allow: the small shape's rate over the outpainting shape's, both measured in the run
    small, big = sorted((r for r in result["gemm_peak"]["shapes"] if r["m"] != 1024), key=lambda r: r["m"])
    assert s["wall_over_flop_ceiling"] == pytest.approx(small["GFLOP_s"] / big["GFLOP_s"])
    assert s["jam_policy"] == "1 thread, wait default, real-time 1"  # the widgets worker's policy (WORKER_POLICY)
    assert result["thread_policies"] is None and targets["rtf_under_load"]["met"] is None  # --no-load


def _table(md: str, first_header: str) -> list[str]:
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| " + first_header + " |"))
    body = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        body.append(ln)
    return body


def test_markdown_table_is_printed_from_the_json_with_one_row_per_streamer(quick, capsys, tmp_path):
    from lmdm.bench.report import LABELS

    result, _, out = quick
    assert main(["bench", "--from-json", str(out), "--markdown"]) == 0
    md = capsys.readouterr().out
    rows = _table(md, "streamer")
    assert len(rows) == len(result["table"]) == 5
    assert [r.split("|")[1].strip() for r in rows] == [LABELS[r["streamer"]] for r in result["table"]]
    assert all(r.count("|") == rows[0].count("|") for r in rows)
    assert "thread policy" not in md  # not measured in this run
    # with policies measured, their table follows, one row each, the live default marked
    result = dict(result, thread_policies={
        "rows": [{"policy": "torch default threads, wait default", "torch_threads": 2, "rtf_quiet": 0.1,
                  "rtf_loaded": 3.0, "jam_underruns_loaded": 5, "jam_blocks": 6, "jam_rtf_loaded": 1.0},
                 {"policy": "1 thread, wait default, real-time 1", "torch_threads": 1, "rtf_quiet": 0.2,
                  "rtf_loaded": 0.4,
                  "jam_underruns_loaded": 0, "jam_blocks": 6, "jam_rtf_loaded": 0.1}],
        "load_threads": 2, "live_policy": "torch default threads, wait default",
        "best_under_load": "1 thread, wait default, real-time 1", "recommendation": "keep"})
    saved = tmp_path / "with_policies.json"
    saved.write_text(json.dumps(result))
    assert main(["bench", "--from-json", str(saved), "--markdown"]) == 0
    md = capsys.readouterr().out
    policy_rows = _table(md, "thread policy")
    assert len(policy_rows) == 2 and "(live default)" in policy_rows[0] and "(live jam)" in policy_rows[1]
    # generate under load is read from the live policy's row, the jam from the live jam's (the worker's) row
    assert "generate RTF 3.000 (torch default threads, wait default" in md
    assert "jam of 4 s, 0 underruns of 6 blocks, RTF 0.100 (1 thread, wait default, real-time 1" in md
    assert len(_table(md, "streamer")) == 5


def test_from_json_refuses_what_is_not_a_bench_result(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"table": []}))
    assert main(["bench", "--from-json", str(bad)]) == 2
    assert "not a result of this lmdm bench" in capsys.readouterr().err


# ---- the competing load ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [ZeroDivisionError, KeyboardInterrupt])
def test_competing_load_runs_two_threads_and_is_gone_when_the_block_raises(exc):
    from lmdm.bench.load import alive, competing_load

    with pytest.raises(exc), competing_load(2) as load:
        pid = load.pid
        assert alive(pid)
        status = Path(f"/proc/{pid}/status")
        if status.exists():  # Linux: the load runs its two threads
            assert next(int(ln.split()[1]) for ln in status.read_text().splitlines() if ln.startswith("Threads:")) >= 2
        raise exc()
    assert not alive(pid)


def test_competing_load_stops_itself_when_its_parent_is_killed():
    """kill -9 of the process that started the load leaves no orphan burning the cores."""
    from lmdm.bench.load import alive

    code = ("from lmdm.bench.load import competing_load\nimport time\n"
            "with competing_load(1) as p:\n    print(p.pid, flush=True)\n    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        pid = int(parent.stdout.readline())
        assert alive(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def test_thread_policies_are_measured_in_fresh_processes_and_the_load_is_stopped():
    """One policy, one block of generate, a 2 s jam: the rows carry what each process ran with."""
    from lmdm.bench.live import measure_policies
    from lmdm.bench.load import alive
    from lmdm.streaming.streamer import SamplerConfig
    from lmdm.streaming.threads import ThreadPolicy

    res = measure_policies(None, (ThreadPolicy(threads=1, omp_wait="PASSIVE", realtime=5),), SamplerConfig(steps=2),
                           generate_seconds=1.0, jam_seconds=2.0, progress=lambda m: None)
    (row,) = res["rows"]
    assert row["policy"] == "1 thread, wait passive, real-time 5" and row["torch_threads"] == 1
    assert row["loadavg_before_quiet"] >= 0 and row["realtime"] == 5
    from tests.support.realtime import may_realtime

    # the measuring thread got the priority exactly where the system allows it
    assert row["realtime_granted"] is may_realtime(5)
    assert row["rtf_quiet"] > 0 and row["rtf_loaded"] > 0 and row["jam_blocks"] >= 2
    assert 0 <= row["jam_underruns_loaded"] <= row["jam_blocks"]
    assert len(res["load_pids"]) == 1 and not any(alive(pid) for pid in res["load_pids"])
    assert res["best_under_load"] == row["policy"]


def test_the_load_is_stopped_when_a_measurement_under_it_fails(monkeypatch):
    from lmdm.bench import live, load
    from lmdm.streaming.streamer import SamplerConfig
    from lmdm.streaming.threads import ThreadPolicy

    started, real = [], load.competing_load

    def recording_load(threads):
        cm = real(threads)
        proc = cm.__enter__()
        started.append(proc.pid)

        class _Wrap:
            def __enter__(self):
                return proc

            def __exit__(self, *exc):
                return cm.__exit__(*exc)
        return _Wrap()

    def fails_under_load(policy, checkpoint, sampler, generate_seconds, jam_seconds):
        if jam_seconds:  # the run under the load
            assert load.alive(started[-1])
            raise RuntimeError("measurement failed")
        return {"torch_threads": 1, "generate": {"rtf": 0.1, "rtf_model": 0.05}}

    monkeypatch.setattr(load, "competing_load", recording_load)
    monkeypatch.setattr(live, "_run_policy", fails_under_load)
    with pytest.raises(RuntimeError, match="measurement failed"):
        live.measure_policies(None, (ThreadPolicy(threads=1),), SamplerConfig(), 1.0, 1.0, progress=lambda m: None)
    assert len(started) == 1 and not load.alive(started[0])


def _policy_row(name, quiet, loaded, underruns):
    return {"policy": name, "rtf_quiet": quiet, "rtf_loaded": loaded, "jam_underruns_loaded": underruns}


def test_a_policy_is_recommended_only_when_better_under_load_and_not_worse_quiet():
    from lmdm.bench.live import recommend_policy

    live = "torch default threads, wait default"
    one = "1 thread, wait default"
    # better under load, 5% slower quiet: switch
    r = recommend_policy([_policy_row(live, 0.10, 3.0, 5), _policy_row(one, 0.105, 0.4, 0)], live)
    assert r["best_under_load"] == one and r["recommended_live_policy"] == one
    assert r["recommendation"].startswith("switch to 1 thread")
    # better under load but 50% slower on a quiet machine: keep
    r = recommend_policy([_policy_row(live, 0.10, 3.0, 5), _policy_row(one, 0.15, 0.4, 0)], live)
    assert r["best_under_load"] == one and r["recommended_live_policy"] == live
    # the live policy is best under load: keep; fewer underruns outrank a lower RTF
    r = recommend_policy([_policy_row(live, 0.10, 0.5, 0), _policy_row(one, 0.10, 0.3, 1)], live)
    assert r["best_under_load"] == live and r["recommended_live_policy"] == live
    # the live policy was not measured: nothing to compare with
    r = recommend_policy([_policy_row(one, 0.10, 0.3, 0)], live)
    assert r["recommended_live_policy"] == live and "not measured" in r["recommendation"]


def test_thread_policy_env_and_validation():
    from lmdm.config import ConfigError
    from lmdm.streaming.threads import ThreadPolicy

    base = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE", "PATH": "/bin"}
    assert ThreadPolicy().env(base) == {"PATH": "/bin"}  # torch's defaults: the variables removed
    env = ThreadPolicy(threads=2, omp_wait="PASSIVE").env(base)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert ThreadPolicy(threads=1).name == "1 thread, wait default"
    assert ThreadPolicy(adaptive=True).name == "torch default threads, wait default, adaptive"
    assert ThreadPolicy(threads=1, realtime=10).name == "1 thread, wait default, real-time 10"
    assert ThreadPolicy().ask_realtime() is False  # a policy that asks for no priority changes nothing
    for bad in ({"threads": 0}, {"threads": True}, {"threads": 1.5}, {"omp_wait": "passive"}, {"adaptive": 1},
                {"realtime": 0}, {"realtime": 100}, {"realtime": True}, {"realtime": 5.0}):
        with pytest.raises(ConfigError):
            ThreadPolicy(**bad)


def test_sampler_ranges_live_in_sampler_config_and_bench_config_uses_them():
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
    with pytest.raises(ConfigError, match="^jam_seconds: seconds must be a positive number, got 0$"):
        BenchConfig(jam_seconds=0)
    with pytest.raises(ConfigError, match="^policies must be ThreadPolicy objects"):
        BenchConfig(policies=("1 thread",))
    BenchConfig(), BenchConfig.quick(), BenchConfig(policies=())


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_sampler_config_refuses_seeds_torch_cannot_take(seed):
    """torch.Generator.manual_seed overflows past 2**64 with a plain ValueError: SamplerConfig must refuse first."""
    from lmdm.config import ConfigError
    from lmdm.streaming.streamer import SamplerConfig

    with pytest.raises(ConfigError, match="^seed must be an integer"):
        SamplerConfig(seed=seed)


def test_the_thread_governor_drops_to_one_thread_while_contended_and_probes_back():
    import torch

    from lmdm.streaming.threads import ThreadGovernor

    before = torch.get_num_threads()
    try:
        gov = ThreadGovernor(threads=2, contended=0.25, probe_every=3)
        assert gov.current == 2 == torch.get_num_threads()
        assert gov.after_block(0.1, 0.01) == 2  # 10% of the block in the run queue: not contended
        assert gov.after_block(0.1, float("nan")) == 2  # unknown (no schedstat): no change
        assert gov.after_block(0.1, 0.05) == 1 and torch.get_num_threads() == 1 and gov.drops == 1
        assert [gov.after_block(0.1, 0.0) for _ in range(3)] == [1, 1, 2]  # three blocks at one, then a probe
        assert gov.after_block(0.1, 0.09) == 1 and gov.drops == 2  # still contended: back to one
        assert [gov.after_block(0.1, 0.0) for _ in range(6)] == [1] * 5 + [2]  # a failed probe: wait twice as long
        assert gov.after_block(0.1, 0.0) == 2 and gov.interval == 3  # a probe that is not contended: stays, resets
        torch.set_num_threads(3)
        gov.close()
        assert torch.get_num_threads() == gov.start_threads
    finally:
        torch.set_num_threads(before)


def test_generate_runs_the_governor_of_an_adaptive_policy_and_restores_the_threads(monkeypatch, tiny_ckpt):
    """Every block seen as contended (a fake run-queue clock that advances as fast as the wall clock): the stream
    drops to one thread, probes back, and ends with the thread count it started with."""
    import torch

    import lmdm.streaming.threads as threads
    from lmdm.streaming.generate import generate
    from lmdm.streaming.streamer import SamplerConfig

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_APPLIED", None)
    assert threads.stream_governor() is None  # no policy applied: nothing adapts
    seen = []
    real = threads.ThreadGovernor.after_block
    monkeypatch.setattr(threads, "run_queue_wait", time.perf_counter)
    monkeypatch.setattr(threads.ThreadGovernor, "after_block",
                        lambda self, wall, queued: seen.append(real(self, wall, queued)) or seen[-1])
    before = torch.get_num_threads()
    try:
        threads.ThreadPolicy(threads=2, adaptive=True).apply()
        generate(tiny_ckpt, "", 12 * tiny_ckpt.model.cfg.block_frames / tiny_ckpt.codec.frame_rate,
                 SamplerConfig(steps=1))
        assert seen[:1] == [1] and seen[8] == 2 and seen[9] == 1, seen  # dropped at once; a probe after 8 blocks
        assert torch.get_num_threads() == 2  # the count the stream started with
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads.stream_governor() is None  # the user's thread count wins
    finally:
        torch.set_num_threads(before)
