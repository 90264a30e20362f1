"""``lmdm bench``: the streamers measured side by side on this machine (LMDM's first claim, made runnable).

One run loads the checkpoint once, builds the outpainting, enc-dec and block-causal streamers over the *same*
weights and an untrained, parameter-matched LMM, fills every window, warms up, and then times blocks
**interleaved** (round-robin, rotating the order each round) so that machine noise hits all of them alike.

Matched guidance: the diffusion streamers run classifier-free guidance (two rows per pass), and so does the LMM
(``lmm``: conditional and unconditional rows batched, tokens drawn from the guided logits); ``lmm_unguided`` is
the same LMM without guidance, kept as a labelled reference row.

Per streamer it reports FLOPs per block (analytic and counted), sequential passes per block (counted; defined in
``lmdm.bench.cost``), wall time, real-time factor of the model, achieved GFLOP/s and MFU against a GEMM peak
measured in the same run (``lmdm.bench.peak``), the three LMDM latencies and peak memory. Then what a user gets
(``lmdm.bench.live``): the end-to-end RTF of ``generate`` with decoding, the latency of a prompt change, and
thread policies quiet and under a competing load the bench starts and stops itself. Sweeps over context length
and denoising steps go to figures. Ratios measured side by side are the headline, not absolute times; the
targets of issue 14 are checked in ``summary["targets"]`` and the README's table is printed from the JSON
(``lmdm.bench.report``).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdm.bench.cost import (
    count_flops,
    count_passes,
    dit_block_flops,
    first_layers,
    fused_step_flop_ratio,
    lmm_block_flops,
    per_audio_second,
    sequential_passes,
)
from lmdm.bench.lmm import LMM, LMMStreamer, ResidualQuantizer, matched_config
from lmdm.checkpoint import Checkpoint, load_checkpoint
from lmdm.config import ConfigError
from lmdm.device import module_device, synchronize
from lmdm.errors import UsageError
from lmdm.model.dit import DiT
from lmdm.streaming.generate import check_seconds
from lmdm.streaming.streamer import SamplerConfig, make_streamer
from lmdm.streaming.threads import WORKER_POLICY, ThreadPolicy

#: Every streamer of the table: the three over the DiT, the LMM at matched guidance, the LMM without guidance.
STREAMERS = ("outpainting", "enc_dec", "block_causal", "lmm", "lmm_unguided")
#: The streamers of the sweeps (the guided LMM only: it is the matched baseline).
SWEEP_STREAMERS = STREAMERS[:4]
#: Thread policies measured by default (generate's live policy first, then torch's default and the fixed ones).
POLICIES = (ThreadPolicy(adaptive=True), ThreadPolicy(), ThreadPolicy(omp_wait="PASSIVE"), ThreadPolicy(threads=1),
            ThreadPolicy(threads=1, omp_wait="PASSIVE"), WORKER_POLICY)
#: Targets of issue 14, checked in ``summary["targets"]``: name -> (comparison, target).
TARGETS = {"wall_ratio_over_flop_ratio": (">=", 0.8), "rtf_end_to_end": ("<=", 0.1),
           "fused_over_subsequent_step": ("<=", 1.3), "lmdm_speedup_over_lmm": (">=", 2.0),
           "rtf_under_load": ("<=", 0.5), "jam_underruns_under_load": ("<=", 0)}


@dataclass(frozen=True)
class BenchConfig:
    """Settings of a benchmark run.

    Attributes:
        checkpoint: checkpoint folder (None = the bundled one).
        steps: denoising steps ``S`` of the diffusion streamers.
        cfg_scale: classifier-free guidance scale (the default generation setting).
        rounds: interleaved rounds; each round times ``blocks_per_round`` blocks of every streamer.
        blocks_per_round: timed blocks per streamer per round (the LMM gets one: its blocks are slow).
        lmm_depth: RVQ levels the LMM generates per frame (Magenta RealTime: 16).
        sweep_context_chunks: window sizes ``W`` (context ``C = W * B``) for the context sweep.
        sweep_steps: step counts for the steps sweep.
        sweep_blocks: timed blocks per point of a sweep.
        memory: measure peak memory (one short subprocess per streamer).
        seed: sampling seed.
        gemm_repeats: repeats of each GEMM of the peak measurement (best counts).
        generate_seconds: audio generated to measure ``generate``'s end-to-end RTF (in this process, and per
            thread policy).
        prompt_changes: prompt changes timed for the prompt-change latency (median).
        policies: thread policies measured quiet and under the competing load, each in a fresh process; empty
            skips that part.
        jam_seconds: length of the jam run under the competing load for each policy.
        load_threads: threads of the competing load.
    """

    checkpoint: str | None = None
    steps: int = 8
    cfg_scale: float = 2.0
    rounds: int = 4
    blocks_per_round: int = 3
    lmm_depth: int = 16
    sweep_context_chunks: tuple[int, ...] = (1, 2, 4, 8, 12)
    sweep_steps: tuple[int, ...] = (1, 2, 4, 8, 16)
    sweep_blocks: int = 3
    memory: bool = True
    seed: int = 0
    gemm_repeats: int = 5
    generate_seconds: float = 30.0
    prompt_changes: int = 5
    policies: tuple[ThreadPolicy, ...] = POLICIES
    jam_seconds: float = 60.0
    load_threads: int = 2

    def __post_init__(self) -> None:
        """Raises ConfigError: a step count or guidance scale that ``SamplerConfig`` rejects (its ranges, its
        messages), a count that is not a positive integer, a duration out of (0, 3600] seconds, or a policy that
        is not a ``ThreadPolicy``."""
        for steps in (self.steps, *self.sweep_steps):
            SamplerConfig(steps=steps, cfg_scale=self.cfg_scale, seed=self.seed)
        counts = {"rounds": self.rounds, "blocks_per_round": self.blocks_per_round, "lmm_depth": self.lmm_depth,
                  "sweep_blocks": self.sweep_blocks, "gemm_repeats": self.gemm_repeats,
                  "prompt_changes": self.prompt_changes, "load_threads": self.load_threads}
        counts.update({f"sweep_context_chunks[{i}]": w for i, w in enumerate(self.sweep_context_chunks)})
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("generate_seconds", "jam_seconds"):
            try:
                check_seconds(getattr(self, name))
            except UsageError as e:
                raise ConfigError(f"{name}: {e}") from None
        if not all(isinstance(p, ThreadPolicy) for p in self.policies):
            raise ConfigError(f"policies must be ThreadPolicy objects, got {self.policies!r}")

    @classmethod
    def quick(cls, **kw) -> "BenchConfig":
        """A fast setting for CI and notebooks (a minute or two, not ten; numbers are noisier): two thread
        policies, 2 s of ``generate``, a 4 s jam."""
        base = dict(rounds=2, blocks_per_round=1, lmm_depth=4, sweep_context_chunks=(1, 4), sweep_steps=(2, 8),
                    sweep_blocks=1, memory=False, gemm_repeats=3, generate_seconds=2.0, prompt_changes=2,
                    policies=(ThreadPolicy(adaptive=True), WORKER_POLICY), jam_seconds=4.0)
        base.update(kw)
        return cls(**base)


def with_window(model: DiT, window_chunks: int) -> DiT:
    """The same weights with another sliding window ``W`` (cost depends on shapes, not on training), on the same
    device."""
    if window_chunks == model.cfg.window_chunks:
        return model
    m = DiT(dataclasses.replace(model.cfg, window_chunks=window_chunks))
    m.load_state_dict(model.state_dict())
    return m.eval().requires_grad_(False).to(module_device(model))


def build_streamers(ckpt: Checkpoint, cfg: BenchConfig, window_chunks: int | None = None, steps: int | None = None,
                    names: tuple[str, ...] = STREAMERS):
    """``{name: streamer}`` for ``names`` (of :data:`STREAMERS`), prompt set, windows not yet filled; all on the
    device of ``ckpt.model`` (the LMMs too; both LMMs share one set of weights)."""
    model = with_window(ckpt.model, window_chunks or ckpt.model.cfg.window_chunks)
    mc = model.cfg
    sampler = SamplerConfig(steps=steps or cfg.steps, cfg_scale=cfg.cfg_scale, seed=cfg.seed)
    text = torch.nn.functional.normalize(torch.randn(1, mc.text_dim, generator=torch.Generator().manual_seed(0)), dim=1)
    out = {}
    for name in names:
        if name.startswith("lmm"):
            continue
        s = make_streamer(model, name, sampler)
        s.set_prompt(text, torch.ones(1, dtype=torch.bool))
        out[name] = s
    lmms = [n for n in names if n.startswith("lmm")]
    if lmms:
        lcfg = matched_config(model.num_params(), depth=cfg.lmm_depth, block_frames=mc.block_frames,
                              context_frames=mc.context_frames, latent_channels=mc.latent_channels,
                              text_dim=mc.text_dim)
        torch.manual_seed(cfg.seed)
        lmm = LMM(lcfg).eval().requires_grad_(False).to(module_device(ckpt.model))
        rvq = ResidualQuantizer.sampled(lcfg.depth, lcfg.codebook_size, lcfg.latent_channels, seed=cfg.seed)
        for name in lmms:
            ls = LMMStreamer(lmm, rvq, seed=cfg.seed, cfg_scale=1.0 if name == "lmm_unguided" else cfg.cfg_scale)
            ls.text = text
            out[name] = ls
    return out


def _fill(streamers: dict, window_chunks: int) -> None:
    for s in streamers.values():
        s.reset()
        for _ in range(window_chunks + 1):
            s.next_block()


def analytic_flops(ckpt: Checkpoint, name: str, cfg: BenchConfig, window_chunks: int, steps: int,
                   lmm_cfg=None) -> int:
    """Steady-state FLOPs per block of one streamer."""
    model_cfg = dataclasses.replace(ckpt.model.cfg, window_chunks=window_chunks)
    if name.startswith("lmm"):
        return lmm_block_flops(lmm_cfg, guided=cfg_rows(name, cfg) == 2)
    return dit_block_flops(model_cfg, name, steps, guided=cfg_rows(name, cfg) == 2)


def cfg_rows(name: str, cfg: BenchConfig) -> int:
    """Rows per pass of a streamer: 2 with classifier-free guidance (conditional and unconditional), else 1."""
    return 1 if name == "lmm_unguided" or cfg.cfg_scale == 1.0 else 2


def time_interleaved(streamers: dict, rounds: int, blocks_per_round: int) -> dict[str, list[float]]:
    """Seconds per block of every streamer, measured round-robin with the order rotated each round."""
    names = list(streamers)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            k = 1 if n.startswith("lmm") else blocks_per_round
            for _ in range(k):
                t = time.perf_counter()
                streamers[n].next_block()
                synchronize(streamers[n].device)  # a GPU's block is done when its queued kernels are
                times[n].append(time.perf_counter() - t)
    return times


def lmdm_latencies(streamer, blocks: int = 4, fill: int = 0) -> dict[str, float]:
    """Bootstrap (reset + first block), fused first step and subsequent steps, in ms (medians over the last
    ``blocks`` blocks, after ``fill`` more blocks have filled the window: the steady state)."""
    streamer.reset()
    t = time.perf_counter()
    streamer.next_block()
    boot = time.perf_counter() - t
    for _ in range(fill + blocks):
        streamer.next_block()
    st = streamer.stats
    later = len(st.subsequent_step_s) // len(st.fused_first_step_s)  # S - 1 per block
    return {"bootstrap_ms": 1000 * boot,
            "fused_first_step_ms": 1000 * statistics.median(st.fused_first_step_s[-blocks:]),
            "subsequent_step_ms": 1000 * statistics.median(st.subsequent_step_s[-blocks * later :] or [float("nan")])}


def peak_memory_mb(name: str, checkpoint: str | None, cfg: BenchConfig) -> float:
    """Peak resident memory added by streaming 6 blocks with one streamer, in a fresh process (MB).

    Loading the checkpoint peaks higher than streaming does, so the high-water mark is reset first (Linux: writing
    5 to ``/proc/self/clear_refs`` resets ``VmHWM``); the result is ``VmHWM`` after streaming minus ``VmRSS``
    before. Where that is unavailable it falls back to ``ru_maxrss``, which then reads 0 when loading peaked higher.
    """
    code = (
        "import json,resource,sys;from lmdm.bench.run import *;from lmdm.checkpoint import load_checkpoint;"
        f"cfg=BenchConfig(**json.loads(sys.argv[1]));ck=load_checkpoint({checkpoint!r});"
        f"s=build_streamers(ck,cfg,names=({name!r},))[{name!r}];import gc;gc.collect()\n"
        "def kb(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1])\n"
        "try:\n"
        "    open('/proc/self/clear_refs','w').write('5');base=kb('VmRSS:');peak=lambda: kb('VmHWM:')\n"
        "except OSError:\n"
        "    base=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;peak=lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "s.reset();[s.next_block() for _ in range(6)];print(peak()-base)"
    )
    args = {k: v for k, v in dataclasses.asdict(cfg).items() if k in ("steps", "cfg_scale", "lmm_depth", "seed")}
    p = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return float("nan")
    return int(p.stdout.strip().splitlines()[-1]) / 1024.0


def run_bench(cfg: BenchConfig, out_dir: str | Path = "runs/bench", progress=print) -> dict:
    """Run the benchmark; returns a JSON-ready dict (also the table as records) and writes figures to ``out_dir``.

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        LoadError, RuntimeError: the competing load or a thread-policy process failed (the load is stopped).
    """
    from lmdm.bench.live import generate_rtf, measure_policies, prompt_change_latency
    from lmdm.bench.peak import gemm_peak, model_shapes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    host = machine()  # before the bench loads the cores itself
    ckpt = load_checkpoint(cfg.checkpoint)
    mc = ckpt.model.cfg
    W, B = mc.window_chunks, mc.block_frames
    block_s = B / ckpt.codec.frame_rate
    sampler = SamplerConfig(steps=cfg.steps, cfg_scale=cfg.cfg_scale, seed=cfg.seed)
    progress(f"building streamers (W={W}, B={B}, S={cfg.steps}, CFG {cfg.cfg_scale}) and filling windows...")
    streamers = build_streamers(ckpt, cfg)
    _fill(streamers, W)
    lmm_cfg = streamers["lmm"].model.cfg
    counted = {n: count_flops(s.next_block) for n, s in streamers.items()}
    passes = {n: count_passes(s.next_block, first_layers(s.model)) for n, s in streamers.items()}
    progress("warm-up done; timing interleaved rounds...")
    times = time_interleaved(streamers, cfg.rounds, cfg.blocks_per_round)
    # steady state of a long stream: the window's W ring layouts repeat from its second fill on, and the cache
    # builds each layout's mask once (BlockCausalKVCache._plan), so blocks are timed after two fills
    lat = {n: lmdm_latencies(streamers[n], fill=2 * W) for n in ("enc_dec", "block_causal")}
    progress("measuring the GEMM peak...")
    peak = gemm_peak(model_shapes(mc.d_model, mc.mlp_hidden, B, mc.context_frames), repeats=cfg.gemm_repeats,
                     device=module_device(ckpt.model))
    mem = {}
    if cfg.memory:
        progress("measuring peak memory (one process per streamer)...")
        mem = {n: peak_memory_mb(n, cfg.checkpoint, cfg) for n in STREAMERS}
    rows = []
    for n in STREAMERS:
        analytic = analytic_flops(ckpt, n, cfg, W, cfg.steps, lmm_cfg)
        wall = statistics.median(times[n])
        params = streamers[n].model.num_params()
        achieved = counted[n] / wall
        rows.append({
            "streamer": n, "cfg_rows": cfg_rows(n, cfg), "params_M": params / 1e6,
            "sequential_passes_per_block": passes[n],
            "sequential_passes_analytic": sequential_passes(n, cfg.steps, lmm_cfg),
            "analytic_GFLOP_per_block": analytic / 1e9, "counted_GFLOP_per_block": counted[n] / 1e9,
            "GFLOP_per_audio_s": per_audio_second(counted[n], B, ckpt.codec.frame_rate) / 1e9,
            "wall_ms_per_block": 1000 * wall, "rtf_model": wall / block_s,
            "achieved_GFLOP_s": achieved / 1e9, "mfu": achieved / 1e9 / peak["peak_GFLOP_s"],
            "bootstrap_ms": lat.get(n, {}).get("bootstrap_ms"),
            "fused_first_step_ms": lat.get(n, {}).get("fused_first_step_ms"),
            "subsequent_step_ms": lat.get(n, {}).get("subsequent_step_ms"),
            "peak_MB": mem.get(n),
        })
    del streamers
    progress(f"generate, end to end ({cfg.generate_seconds:g} s of audio)...")
    e2e = generate_rtf(ckpt, sampler, cfg.generate_seconds)  # lmdm generate's precision (auto)
    if e2e["precision"] != "float32":  # and the float32 reference, side by side
        e2e["float32"] = generate_rtf(ckpt, sampler, cfg.generate_seconds, precision="float32")
    progress(f"prompt-change latency ({cfg.prompt_changes} changes)...")
    prompt_change = prompt_change_latency(ckpt, sampler, cfg.prompt_changes)
    policies = None
    if cfg.policies:
        policies = measure_policies(cfg.checkpoint, cfg.policies, sampler, cfg.generate_seconds, cfg.jam_seconds,
                                    cfg.load_threads, progress)
    summary = summarize(rows, e2e, prompt_change, policies, peak)
    summary.update({
        "machine": host, "block_seconds": block_s, "steps": cfg.steps, "cfg_scale": cfg.cfg_scale,
        "window_chunks": W, "context_frames": mc.context_frames, "block_frames": B, "lmm_depth": cfg.lmm_depth,
        "lmm_untrained": True,
        "fused_over_subsequent_flops": fused_step_flop_ratio(mc, guided=cfg.cfg_scale != 1.0),
    })
    progress("sweeping context length and steps...")
    sweeps = run_sweeps(ckpt, cfg)
    figures = plot_sweeps(sweeps, out_dir, lmm_depth=cfg.lmm_depth)
    return {"config": dataclasses.asdict(cfg), "summary": summary, "table": rows, "gemm_peak": peak,
            "generate": e2e, "prompt_change": prompt_change, "thread_policies": policies, "sweeps": sweeps,
            "figures": [str(f) for f in figures]}


def summarize(rows: list[dict], e2e: dict, prompt_change: dict, policies: dict | None, peak: dict) -> dict:
    """The headline numbers, all measured in one run, and the targets of issue 14 (:data:`TARGETS`) checked
    against them (``met`` is None where a number was not measured)."""
    by = {r["streamer"]: r for r in rows}
    flop_ratio = by["outpainting"]["counted_GFLOP_per_block"] / by["block_causal"]["counted_GFLOP_per_block"]
    analytic_ratio = by["outpainting"]["analytic_GFLOP_per_block"] / by["block_causal"]["analytic_GFLOP_per_block"]
    wall_ratio = by["outpainting"]["wall_ms_per_block"] / by["block_causal"]["wall_ms_per_block"]
    best = min(("enc_dec", "block_causal"), key=lambda n: by[n]["wall_ms_per_block"])
    bc = by["block_causal"]
    live = jam = None
    if policies:  # generate under load with the live policy; the jam with the live jam's (the worker's) policy
        live = next((r for r in policies["rows"] if r["policy"] == policies["live_policy"]), None)
        jam = next((r for r in policies["rows"] if r["policy"] == WORKER_POLICY.name), None)
    s = {
        "flop_ratio_outpainting_over_block_causal": {"counted": flop_ratio, "analytic": analytic_ratio,
                                                     "counted_vs_analytic": flop_ratio / analytic_ratio - 1},
        "wall_ratio_outpainting_over_block_causal": wall_ratio,
        "wall_ratio_over_flop_ratio": wall_ratio / flop_ratio,
        "best_lmdm": best,
        "lmdm_speedup_over_lmm": by["lmm"]["wall_ms_per_block"] / by[best]["wall_ms_per_block"],
        "fused_over_subsequent_step": bc["fused_first_step_ms"] / bc["subsequent_step_ms"],
        "gemm_peak_GFLOP_s": peak["peak_GFLOP_s"],
        **_gemm_ceiling(peak),
        "rtf_end_to_end": e2e["rtf"], "rtf_model": e2e["rtf_model"], "rtf_decode": e2e["rtf_decode"],
        "prompt_change_ms": prompt_change["prompt_change_ms"],
        "rtf_under_load": None if live is None else live["rtf_loaded"],
        "jam_policy": WORKER_POLICY.name,
        "jam_underruns_under_load": None if jam is None else jam["jam_underruns_loaded"],
        "jam_blocks_under_load": None if jam is None else jam["jam_blocks"],
    }
    s["targets"] = [{"name": k, "value": s[k], "op": op, "target": t,
                     "met": None if s[k] is None else (s[k] >= t if op == ">=" else s[k] <= t)}
                    for k, (op, t) in TARGETS.items()]
    return s


def _gemm_ceiling(peak: dict) -> dict:
    """The wall/FLOP ratio that the GEMM rates allow: a block-causal step multiplies ``2B``-row matrices, an
    outpainting step ``2(C + B)``-row ones (``lmdm.bench.peak.model_shapes``, the first two shapes); if each step
    ran at its shape's measured GEMM rate, outpainting / block-causal wall time would be the FLOP ratio times
    ``rate(2B rows) / rate(2(C + B) rows)``. Empty when those shapes were not measured."""
    rows = sorted((r for r in peak.get("shapes", []) if r["m"] != 1024), key=lambda r: r["m"])
    if len(rows) < 2:
        return {}
    return {"wall_over_flop_ceiling": rows[0]["GFLOP_s"] / rows[1]["GFLOP_s"],
            "gemm_outpainting_GFLOP_s": rows[1]["GFLOP_s"]}


def run_sweeps(ckpt: Checkpoint, cfg: BenchConfig) -> dict:
    """FLOPs (analytic) and measured ms per block over context length and over steps."""
    B, fr = ckpt.model.cfg.block_frames, ckpt.codec.frame_rate
    ctx_rows, step_rows = [], []
    for w in cfg.sweep_context_chunks:
        streamers = build_streamers(ckpt, cfg, window_chunks=w, names=SWEEP_STREAMERS)
        _fill(streamers, w)
        times = time_interleaved(streamers, 1, cfg.sweep_blocks)
        lmm_cfg = streamers["lmm"].model.cfg
        for n in SWEEP_STREAMERS:
            f = analytic_flops(ckpt, n, cfg, w, cfg.steps, lmm_cfg)
            ctx_rows.append({"streamer": n, "context_frames": w * B, "GFLOP_per_audio_s": per_audio_second(f, B, fr) / 1e9,
                             "ms_per_block": 1000 * statistics.median(times[n])})
    W = ckpt.model.cfg.window_chunks
    for s in cfg.sweep_steps:
        streamers = build_streamers(ckpt, cfg, steps=s, names=SWEEP_STREAMERS[:3])  # the LMM has no steps
        _fill(streamers, W)
        times = time_interleaved(streamers, 1, cfg.sweep_blocks)
        for n in streamers:
            f = analytic_flops(ckpt, n, cfg, W, s)
            step_rows.append({"streamer": n, "steps": s, "GFLOP_per_audio_s": per_audio_second(f, B, fr) / 1e9,
                              "ms_per_block": 1000 * statistics.median(times[n])})
    return {"context": ctx_rows, "steps": step_rows}


def plot_sweeps(sweeps: dict, out_dir: Path, lmm_depth: int) -> list[Path]:
    """Two figures: cost vs context length and cost vs denoising steps (FLOPs left, measured time right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    labels = {"outpainting": "outpainting (baseline)", "enc_dec": "LMDM enc-dec", "block_causal": "LMDM block-causal",
              "lmm": f"LMM, depth {lmm_depth} (untrained, CFG)"}
    paths = []
    for key, xlabel in (("context", "context_frames"), ("steps", "steps")):
        df = pd.DataFrame(sweeps[key])
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for name, g in df.groupby("streamer", sort=False):
            axes[0].plot(g[xlabel], g["GFLOP_per_audio_s"], "o-", label=labels[name])
            axes[1].plot(g[xlabel], g["ms_per_block"], "o-", label=labels[name])
        axes[0].set_ylabel("GFLOP per second of audio (analytic)")
        axes[1].set_ylabel("wall time per block (ms, this machine)")
        for ax in axes:
            ax.set_xlabel("context C (frames)" if key == "context" else "denoising steps S")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Streaming cost vs {'context length' if key == 'context' else 'denoising steps'}")
        fig.tight_layout()
        path = out_dir / f"bench_{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def machine() -> dict:
    """What the numbers were measured on."""
    import os
    import platform

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # a busy machine shows here
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "loadavg_1min": load}
