"""``lmdm bench``: the four streamers measured side by side on this machine (LMDM's first claim, made runnable).

One run loads the checkpoint once, builds the outpainting, enc-dec and block-causal streamers over the *same*
weights and an untrained, parameter-matched LMM, fills every window, warms up, and then times blocks
**interleaved** (round-robin, rotating the order each round) so that machine noise hits all four alike. It reports
FLOPs (analytic and counted), wall time per block, real-time factor, the three LMDM latencies and peak memory,
and writes sweeps over context length and denoising steps as figures. Ratios are the headline, not absolute
times.
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

from lmdm.audio.decoder import StreamingDecoder
from lmdm.bench.cost import count_flops, dit_block_flops, lmm_block_flops, per_audio_second
from lmdm.bench.lmm import LMM, LMMStreamer, ResidualQuantizer, matched_config
from lmdm.checkpoint import Checkpoint, load_checkpoint
from lmdm.config import ConfigError
from lmdm.device import module_device, synchronize
from lmdm.model.dit import DiT
from lmdm.streaming.streamer import SamplerConfig, make_streamer

STREAMERS = ("outpainting", "enc_dec", "block_causal", "lmm")


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

    def __post_init__(self) -> None:
        """Raises ConfigError: a step count or guidance scale that ``SamplerConfig`` rejects (its ranges, its
        messages), or a count that is not a positive integer."""
        for steps in (self.steps, *self.sweep_steps):
            SamplerConfig(steps=steps, cfg_scale=self.cfg_scale, seed=self.seed)
        counts = {"rounds": self.rounds, "blocks_per_round": self.blocks_per_round, "lmm_depth": self.lmm_depth,
                  "sweep_blocks": self.sweep_blocks}
        counts.update({f"sweep_context_chunks[{i}]": w for i, w in enumerate(self.sweep_context_chunks)})
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def quick(cls, **kw) -> "BenchConfig":
        """A fast setting for CI and notebooks (seconds, not minutes; numbers are noisier)."""
        base = dict(rounds=2, blocks_per_round=1, lmm_depth=4, sweep_context_chunks=(1, 4), sweep_steps=(2, 8),
                    sweep_blocks=1, memory=False)
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


def build_streamers(ckpt: Checkpoint, cfg: BenchConfig, window_chunks: int | None = None, steps: int | None = None):
    """``{name: streamer}`` for the four streamers, prompt set, windows not yet filled; all on the device of
    ``ckpt.model`` (the LMM too)."""
    model = with_window(ckpt.model, window_chunks or ckpt.model.cfg.window_chunks)
    mc = model.cfg
    sampler = SamplerConfig(steps=steps or cfg.steps, cfg_scale=cfg.cfg_scale, seed=cfg.seed)
    text = torch.nn.functional.normalize(torch.randn(1, mc.text_dim, generator=torch.Generator().manual_seed(0)), dim=1)
    out = {}
    for name in STREAMERS[:3]:
        s = make_streamer(model, name, sampler)
        s.set_prompt(text, torch.ones(1, dtype=torch.bool))
        out[name] = s
    lcfg = matched_config(model.num_params(), depth=cfg.lmm_depth, block_frames=mc.block_frames,
                          context_frames=mc.context_frames, latent_channels=mc.latent_channels, text_dim=mc.text_dim)
    torch.manual_seed(cfg.seed)
    lmm = LMM(lcfg).eval().requires_grad_(False).to(module_device(ckpt.model))
    rvq = ResidualQuantizer.sampled(lcfg.depth, lcfg.codebook_size, lcfg.latent_channels, seed=cfg.seed)
    ls = LMMStreamer(lmm, rvq, seed=cfg.seed)
    ls.text = text
    out["lmm"] = ls
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
    if name == "lmm":
        return lmm_block_flops(lmm_cfg)
    return dit_block_flops(model_cfg, name, steps, guided=cfg.cfg_scale != 1.0)


def time_interleaved(streamers: dict, rounds: int, blocks_per_round: int) -> dict[str, list[float]]:
    """Seconds per block of every streamer, measured round-robin with the order rotated each round."""
    names = list(streamers)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            k = 1 if n == "lmm" else blocks_per_round
            for _ in range(k):
                t = time.perf_counter()
                streamers[n].next_block()
                synchronize(streamers[n].device)  # a GPU's block is done when its queued kernels are
                times[n].append(time.perf_counter() - t)
    return times


def lmdm_latencies(streamer, blocks: int = 4) -> dict[str, float]:
    """Bootstrap (reset + first block), fused first step and subsequent steps, in ms (medians)."""
    streamer.reset()
    t = time.perf_counter()
    streamer.next_block()
    boot = time.perf_counter() - t
    for _ in range(blocks):
        streamer.next_block()
    st = streamer.stats
    return {"bootstrap_ms": 1000 * boot, "fused_first_step_ms": 1000 * statistics.median(st.fused_first_step_s),
            "subsequent_step_ms": 1000 * statistics.median(st.subsequent_step_s)}


def decode_rtf(ckpt: Checkpoint, blocks: int = 4) -> float:
    """Real-time factor of streaming Griffin-Lim decoding alone (common to all streamers)."""
    dec = StreamingDecoder(ckpt.codec)
    B = ckpt.model.cfg.block_frames
    lat = torch.randn(B, ckpt.codec.channels) * 0.5
    dec.push(lat)
    t = time.perf_counter()
    for _ in range(blocks):
        dec.push(lat)
    return (time.perf_counter() - t) / (blocks * B / ckpt.codec.frame_rate)


def peak_memory_mb(name: str, checkpoint: str | None, cfg: BenchConfig) -> float:
    """Peak resident memory added by streaming 6 blocks with one streamer, in a fresh process (MB).

    Loading the checkpoint peaks higher than streaming does, so the high-water mark is reset first (Linux: writing
    5 to ``/proc/self/clear_refs`` resets ``VmHWM``); the result is ``VmHWM`` after streaming minus ``VmRSS``
    before. Where that is unavailable it falls back to ``ru_maxrss``, which then reads 0 when loading peaked higher.
    """
    code = (
        "import json,resource,sys;from lmdm.bench.run import *;from lmdm.checkpoint import load_checkpoint;"
        f"cfg=BenchConfig(**json.loads(sys.argv[1]));ck=load_checkpoint({checkpoint!r});"
        f"s=build_streamers(ck,cfg)[{name!r}];import gc;gc.collect()\n"
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
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(cfg.checkpoint)
    mc = ckpt.model.cfg
    W, B = mc.window_chunks, mc.block_frames
    block_s = B / ckpt.codec.frame_rate
    progress(f"building streamers (W={W}, B={B}, S={cfg.steps}, CFG {cfg.cfg_scale}) and filling windows...")
    streamers = build_streamers(ckpt, cfg)
    _fill(streamers, W)
    lmm_cfg = streamers["lmm"].model.cfg
    counted = {n: count_flops(s.next_block) for n, s in streamers.items()}
    progress("warm-up done; timing interleaved rounds...")
    times = time_interleaved(streamers, cfg.rounds, cfg.blocks_per_round)
    lat = {n: lmdm_latencies(streamers[n]) for n in ("enc_dec", "block_causal")}
    mem = {}
    if cfg.memory:
        progress("measuring peak memory (one process per streamer)...")
        mem = {n: peak_memory_mb(n, cfg.checkpoint, cfg) for n in STREAMERS}
    rows = []
    for n in STREAMERS:
        analytic = analytic_flops(ckpt, n, cfg, W, cfg.steps, lmm_cfg)
        wall = statistics.median(times[n])
        params = streamers[n].model.num_params()
        rows.append({
            "streamer": n, "params_M": params / 1e6,
            "analytic_GFLOP_per_block": analytic / 1e9, "counted_GFLOP_per_block": counted[n] / 1e9,
            "GFLOP_per_audio_s": per_audio_second(counted[n], B, ckpt.codec.frame_rate) / 1e9,
            "wall_ms_per_block": 1000 * wall, "rtf_model": wall / block_s,
            "bootstrap_ms": lat.get(n, {}).get("bootstrap_ms"),
            "fused_first_step_ms": lat.get(n, {}).get("fused_first_step_ms"),
            "subsequent_step_ms": lat.get(n, {}).get("subsequent_step_ms"),
            "peak_MB": mem.get(n),
        })
    by = {r["streamer"]: r for r in rows}
    dec_rtf = decode_rtf(ckpt)
    flop_ratio = by["outpainting"]["counted_GFLOP_per_block"] / by["block_causal"]["counted_GFLOP_per_block"]
    analytic_ratio = by["outpainting"]["analytic_GFLOP_per_block"] / by["block_causal"]["analytic_GFLOP_per_block"]
    wall_ratio = by["outpainting"]["wall_ms_per_block"] / by["block_causal"]["wall_ms_per_block"]
    best = min(("enc_dec", "block_causal"), key=lambda n: by[n]["wall_ms_per_block"])
    summary = {
        "machine": machine(), "block_seconds": block_s, "steps": cfg.steps, "cfg_scale": cfg.cfg_scale,
        "window_chunks": W, "context_frames": mc.context_frames, "block_frames": B, "lmm_depth": cfg.lmm_depth,
        "lmm_untrained": True,
        "flop_ratio_outpainting_over_block_causal": {"counted": flop_ratio, "analytic": analytic_ratio,
                                                     "counted_vs_analytic": flop_ratio / analytic_ratio - 1},
        "wall_ratio_outpainting_over_block_causal": wall_ratio,
        "wall_ratio_over_flop_ratio": wall_ratio / flop_ratio,
        "best_lmdm": best,
        "lmdm_speedup_over_lmm": by["lmm"]["wall_ms_per_block"] / by[best]["wall_ms_per_block"],
        "decode_rtf": dec_rtf,
        "rtf_end_to_end": by["block_causal"]["rtf_model"] + dec_rtf,
    }
    progress("sweeping context length and steps...")
    sweeps = run_sweeps(ckpt, cfg)
    figures = plot_sweeps(sweeps, out_dir, lmm_depth=cfg.lmm_depth)
    return {"config": dataclasses.asdict(cfg), "summary": summary, "table": rows, "sweeps": sweeps,
            "figures": [str(f) for f in figures]}


def run_sweeps(ckpt: Checkpoint, cfg: BenchConfig) -> dict:
    """FLOPs (analytic) and measured ms per block over context length and over steps."""
    B, fr = ckpt.model.cfg.block_frames, ckpt.codec.frame_rate
    ctx_rows, step_rows = [], []
    for w in cfg.sweep_context_chunks:
        streamers = build_streamers(ckpt, cfg, window_chunks=w)
        _fill(streamers, w)
        times = time_interleaved(streamers, 1, cfg.sweep_blocks)
        lmm_cfg = streamers["lmm"].model.cfg
        for n in STREAMERS:
            f = analytic_flops(ckpt, n, cfg, w, cfg.steps, lmm_cfg)
            ctx_rows.append({"streamer": n, "context_frames": w * B, "GFLOP_per_audio_s": per_audio_second(f, B, fr) / 1e9,
                             "ms_per_block": 1000 * statistics.median(times[n])})
    W = ckpt.model.cfg.window_chunks
    for s in cfg.sweep_steps:
        streamers = build_streamers(ckpt, cfg, steps=s)
        streamers.pop("lmm")  # the LMM has no denoising steps
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
              "lmm": f"LMM, depth {lmm_depth} (untrained)"}
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

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def format_report(result: dict) -> str:
    """The pandas table and the headline ratios as text."""
    import pandas as pd

    df = pd.DataFrame(result["table"]).set_index("streamer")
    s = result["summary"]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3g}".format):
        table = df.to_string()
    fr = s["flop_ratio_outpainting_over_block_causal"]
    lines = [
        table,
        "",
        f"block {s['block_seconds'] * 1000:.0f} ms ({s['block_frames']} frames), context {s['context_frames']} frames, "
        f"S={s['steps']}, CFG {s['cfg_scale']}; LMM weights are untrained (cost only), depth {s['lmm_depth']}",
        f"outpainting / block-causal FLOPs: {fr['counted']:.2f}x counted, {fr['analytic']:.2f}x analytic "
        f"({100 * fr['counted_vs_analytic']:+.1f}%)",
        f"outpainting / block-causal wall time: {s['wall_ratio_outpainting_over_block_causal']:.2f}x "
        f"= {s['wall_ratio_over_flop_ratio']:.2f} of the FLOP ratio (target >= 0.8)",
        f"LMDM ({s['best_lmdm']}) vs LMM per second of audio: {s['lmdm_speedup_over_lmm']:.1f}x faster (target >= 2)",
        f"RTF block-causal: model {df.loc['block_causal', 'rtf_model']:.3f}, + streaming decode {s['decode_rtf']:.3f} "
        f"= {s['rtf_end_to_end']:.3f} end to end (target <= 0.1)",
        "figures: " + ", ".join(result["figures"]),
    ]
    return "\n".join(lines)
