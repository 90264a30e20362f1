"""Live-use measurements of ``lmdm bench``: what a user of ``generate`` and ``jam`` gets, not what a kernel does.

* :func:`generate_rtf` — end-to-end real-time factor of :func:`lmdm.streaming.generate.generate` itself (model
  plus the streaming Griffin-Lim decoder, block by block, with generate's own timers);
* :func:`prompt_change_latency` — wall time from a prompt change to the first finished block with the new
  prompt, through the live engine (``LiveEngine.set_prompt`` then ``step``): encoding a never-seen prompt, the
  prompt's conditioning, the block and its decoding to audio;
* :func:`jam_session` — a jam through :func:`lmdm.live.jam.jam` (the engine of ``lmdm jam`` with its simulated
  clock: input arrives in real time, each block takes the compute time it took) on the bundled example recording,
  repeated to the requested length; it counts underruns;
* :func:`measure_policies` — for each :class:`~lmdm.streaming.threads.ThreadPolicy`, in a fresh process (the
  OpenMP wait policy is read at start-up): ``generate``'s RTF on a quiet machine, then ``generate``'s RTF and a
  jam's underruns under a competing 2-thread load (:func:`lmdm.bench.load.competing_load`).

Measured back to back, blocks do not idle between one another as they do in a real-time session, so the load
competes with every block: the jam here is the harder case of a live one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from lmdm.checkpoint import Checkpoint
from lmdm.streaming.streamer import SamplerConfig
from lmdm.streaming.threads import LIVE_POLICY, ThreadPolicy

GENERATE_PROMPT = "a slow Bach chorale on church organ"
JAM_PROMPT = "string ensemble"
#: Prompts the prompt-change latency switches between; the first change is a warm-up (it may load the encoder).
PROMPT_CHANGES = ("a fast jig on fiddle and flute", "a slow waltz on solo piano", "a march for brass band",
                  "a lullaby on harp", "a baroque fugue on harpsichord", "a sad string quartet in a minor key",
                  "a bright marimba rondo", "a clarinet and bassoon duet")


def generate_rtf(ckpt: Checkpoint, sampler: SamplerConfig, seconds: float, prompt: str = GENERATE_PROMPT,
                 precision: str = "auto") -> dict:
    """Real-time factors of ``generate`` (block-causal, as ``lmdm generate`` runs it, with its ``--precision``
    default): model, decode, total.

    A one-block ``generate`` runs first, so one-time costs of the process (first calls of the decoder's FFTs,
    allocations) stay out; the measured run's first block includes the bootstrap, amortised over ``seconds`` as in
    a real run.
    """
    from dataclasses import replace

    from lmdm.model.precision import resolve_precision, with_precision
    from lmdm.streaming.generate import generate

    precision = resolve_precision(precision, next(ckpt.model.parameters()).device)
    ckpt = replace(ckpt, model=with_precision(ckpt.model, precision))
    generate(ckpt, prompt, ckpt.model.cfg.block_frames / ckpt.codec.frame_rate, sampler)  # warm-up
    gen = generate(ckpt, prompt, seconds, sampler)
    return {"seconds": gen.seconds, "rtf_model": gen.model_s / gen.seconds, "rtf_decode": gen.decode_s / gen.seconds,
            "rtf": gen.rtf, "blocks": len(gen.stats.block_s), "precision": precision,
            "gl_iters": ckpt.codec.cfg.gl_iters, "gl_init": ckpt.codec.cfg.gl_init}


def prompt_change_latency(ckpt: Checkpoint, sampler: SamplerConfig, changes: int,
                          prompts: tuple[str, ...] = PROMPT_CHANGES) -> dict:
    """Median ms from a prompt change to the first finished (decoded) block with the new prompt, over ``changes``
    changes to never-seen prompts (:func:`lmdm.text.fresh_prompt_cache`), against the median of the steady blocks
    generated between them by the same engine.

    The window is filled first, and one unmeasured change loads the text encoder (a session loads it once).

    Raises:
        UsageError: more changes than prompts.
    """
    from lmdm.errors import UsageError
    from lmdm.live.engine import EngineConfig, LiveEngine
    from lmdm.text import fresh_prompt_cache

    if not 1 <= changes < len(prompts):
        raise UsageError(f"changes must be from 1 to {len(prompts) - 1}, got {changes}")
    engine = LiveEngine(ckpt, EngineConfig(mode="generate", prompt=GENERATE_PROMPT, sampler=sampler), realtime=False)
    engine.warmup()
    for _ in range(ckpt.model.cfg.window_chunks + 1):
        engine.step()

    def timed(change: str | None) -> float:
        t = time.perf_counter()
        if change is not None:
            engine.set_prompt(change)
        engine.step()
        engine.read_output()
        return time.perf_counter() - t

    change_s, steady_s = [], []
    with fresh_prompt_cache():
        timed(prompts[0])  # warm-up change
        for p in prompts[1 : changes + 1]:
            steady_s.append(timed(None))
            change_s.append(timed(p))
    assert engine.prompt_text == prompts[changes]
    change, steady = statistics.median(change_s), statistics.median(steady_s)
    return {"changes": changes, "prompt_change_ms": 1000 * change, "steady_block_ms": 1000 * steady,
            "prompt_change_extra_ms": 1000 * (change - steady), "gl_iters": engine.cfg.gl_iters}


def jam_session(ckpt: Checkpoint, seconds: float) -> dict:
    """A ``seconds``-long jam (``lmdm jam``'s defaults: 4 ping-pong steps, no guidance, ``EngineConfig``'s margin) on the
    bundled example recording, looped; its underruns, RTF and latency."""
    from lmdm.audio.io import load_audio
    from lmdm.data.example import EXAMPLE_PATH
    from lmdm.live.engine import EngineConfig
    from lmdm.live.jam import jam

    sr = ckpt.codec.sample_rate
    audio = load_audio(EXAMPLE_PATH, sr)
    n = round(seconds * sr)
    audio = np.tile(audio, math.ceil(n / len(audio)))[:n]
    s = jam(ckpt, audio, sr, EngineConfig(mode="jam", prompt=JAM_PROMPT)).stats.summary()
    return {"seconds": seconds, "blocks": s["blocks"], "underruns": s["underruns"], "rtf": s["rtf"],
            "latency_ms_mean": s["latency_ms_mean"], "latency_ms_max": s["latency_ms_max"]}


# ---- thread policies, each in a fresh process ------------------------------------------------------------------
def measure_policies(checkpoint: str | None, policies: tuple[ThreadPolicy, ...], sampler: SamplerConfig,
                     generate_seconds: float, jam_seconds: float, load_threads: int = 2, progress=print) -> dict:
    """For each policy: ``generate``'s RTF quiet, then ``generate``'s RTF and a ``jam_seconds`` jam under a
    competing ``load_threads``-thread load, each in a fresh process under the policy.

    Returns:
        ``{"rows": [...], "load_pids": [...], "live_policy", "best_under_load", "recommended_live_policy",
        "recommendation"}``; a row holds the policy, the threads its process ran with, the machine's 1-minute
        load average before the quiet run (above 0: "quiet" was shared with something), ``rtf_quiet``,
        ``rtf_loaded``, ``jam_underruns_loaded`` (of ``jam_blocks``) and ``jam_rtf_loaded``. See
        :func:`recommend_policy` for best and recommended.

    Raises:
        RuntimeError: a measuring process failed (its stderr is in the message).
        LoadError: the load generator did not start.
    """
    from lmdm.bench.load import competing_load

    rows, pids = [], []
    for policy in policies:
        progress(f"thread policy {policy.name}: quiet, then under a {load_threads}-thread competing load...")
        load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # "quiet" is only this quiet
        quiet = _run_policy(policy, checkpoint, sampler, generate_seconds, 0.0)
        with competing_load(load_threads) as load:
            pids.append(load.pid)
            loaded = _run_policy(policy, checkpoint, sampler, generate_seconds, jam_seconds)
        jam = loaded.get("jam") or {}
        rows.append({"policy": policy.name, "threads": policy.threads, "omp_wait": policy.omp_wait,
                     "adaptive": policy.adaptive, "realtime": policy.realtime,
                     "realtime_granted": loaded.get("realtime", False),
                     "torch_threads": quiet["torch_threads"], "loadavg_before_quiet": load_avg,
                     "rtf_quiet": quiet["generate"]["rtf"],
                     "rtf_loaded": loaded["generate"]["rtf"], "rtf_model_loaded": loaded["generate"]["rtf_model"],
                     "jam_underruns_loaded": jam.get("underruns"), "jam_blocks": jam.get("blocks"),
                     "jam_rtf_loaded": jam.get("rtf")})
    return {"rows": rows, "load_threads": load_threads, "load_pids": pids, **recommend_policy(rows)}


def recommend_policy(rows: list[dict], live: str = LIVE_POLICY.name, quiet_tolerance: float = 0.1) -> dict:
    """Which policy did best under load, and whether the numbers support making it the live default.

    Best under load: fewest jam underruns, then the lowest ``generate`` RTF under load. It is recommended over the
    live policy only if that row was measured too and the best one has no more underruns, a lower RTF under load
    *and* an RTF quiet at most ``quiet_tolerance`` worse (a quiet machine is the common case).

    Returns:
        ``{"live_policy", "best_under_load", "recommended_live_policy", "recommendation"}`` (names and one line).
    """
    if not rows:
        return {"live_policy": live, "best_under_load": None, "recommended_live_policy": live,
                "recommendation": "no policy measured"}
    best = min(rows, key=lambda r: (r["jam_underruns_loaded"] or 0, r["rtf_loaded"]))
    cur = next((r for r in rows if r["policy"] == live), None)
    if cur is None or best is cur:
        why = "the live policy was not measured" if cur is None else "the live policy did best under load"
        return {"live_policy": live, "best_under_load": best["policy"], "recommended_live_policy": live,
                "recommendation": f"keep {live}: {why}"}
    quiet_ratio = best["rtf_quiet"] / cur["rtf_quiet"]
    better = ((best["jam_underruns_loaded"] or 0) <= (cur["jam_underruns_loaded"] or 0)
              and best["rtf_loaded"] < cur["rtf_loaded"] and quiet_ratio <= 1 + quiet_tolerance)
    detail = (f"RTF under load {best['rtf_loaded']:.3f} vs {cur['rtf_loaded']:.3f}, jam underruns "
              f"{best['jam_underruns_loaded']} vs {cur['jam_underruns_loaded']}, RTF quiet {quiet_ratio:.2f}x")
    return {"live_policy": live, "best_under_load": best["policy"],
            "recommended_live_policy": best["policy"] if better else live,
            "recommendation": (f"switch to {best['policy']}" if better else f"keep {live}") + f" ({detail})"}


def _run_policy(policy: ThreadPolicy, checkpoint: str | None, sampler: SamplerConfig, generate_seconds: float,
                jam_seconds: float) -> dict:
    args = {"policy": dataclasses.asdict(policy), "checkpoint": checkpoint, "sampler": dataclasses.asdict(sampler),
            "generate_seconds": generate_seconds, "jam_seconds": jam_seconds}
    code = "from lmdm.bench.live import policy_child; policy_child()"
    p = subprocess.run([sys.executable, "-c", code, json.dumps(args)], check=False, env=policy.env(),
                       capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"measuring thread policy {policy.name} failed (exit status {p.returncode}): "
                           f"{p.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def policy_child() -> None:
    """Entry point of a measuring process (``sys.argv[1]``: JSON of :func:`_run_policy`'s arguments); prints one
    JSON line. Runs on the CPU, the device the thread policy is about."""
    import torch

    from lmdm.checkpoint import load_checkpoint

    a = json.loads(sys.argv[1])
    policy = ThreadPolicy(**a["policy"])
    policy.apply()
    realtime = policy.ask_realtime()  # this thread carries the audio
    sampler = SamplerConfig(**a["sampler"])
    ckpt = load_checkpoint(a["checkpoint"], device="cpu")
    out = {"torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "realtime": realtime,
           "generate": generate_rtf(ckpt, sampler, a["generate_seconds"])}
    if a["jam_seconds"] > 0:
        out["jam"] = jam_session(ckpt, a["jam_seconds"])
    print(json.dumps(out), flush=True)
