"""Which thread policy the widgets' generation worker should use: a real-time jam session (input fed at its real
rate, blocks paced by the wall clock, as in the worker) under each policy, quiet and beside one CPU-bound process,
each in a fresh process; prints per-block compute times side by side.

A live block is computed after about a second of idle waiting for its input, unlike a batch run where blocks
follow each other: that idle is what makes OpenMP's extra threads cost more than they give on 2 cores.

    .venv/bin/python scripts/worker_threads.py [--seconds 15]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from lmdm.streaming.threads import ThreadPolicy

POLICIES = (ThreadPolicy(threads=1), ThreadPolicy(threads=2), ThreadPolicy(threads=2, omp_wait="PASSIVE"))


def session(seconds: float) -> dict:
    """One real-time jam session in this process (the bundled checkpoint and example recording)."""
    import numpy as np

    from lmdm.audio.io import load_audio
    from lmdm.checkpoint import load_checkpoint
    from lmdm.data.example import EXAMPLE_PATH
    from lmdm.live.engine import EngineConfig, LiveEngine

    ckpt = load_checkpoint()
    sr = ckpt.codec.sample_rate
    audio = np.tile(load_audio(EXAMPLE_PATH, sr), 1 + int(seconds * sr) // len(load_audio(EXAMPLE_PATH, sr)))
    engine = LiveEngine(ckpt, EngineConfig(mode="jam", prompt="string ensemble"), realtime=True)
    engine.warmup()
    engine.start()
    t0, pos = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        due = int((time.monotonic() - t0) * sr)
        if due > pos:
            engine.push_input(audio[pos:due])
            pos = due
        engine.read_output()
        time.sleep(0.02)
    engine.stop()
    stats = engine.stats()
    compute = np.array([t["compute_s"] for t in stats.timeline[1:]]) * 1000
    return {"blocks": len(compute), "compute_ms_median": float(np.median(compute)),
            "compute_ms_p95": float(np.percentile(compute, 95)), "compute_ms_max": float(compute.max()),
            "underruns": stats.underruns, "budget_ms": 1000 * (engine.cfg.margin_s - engine.cfg.crossfade_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one session here, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(session(args.seconds)))
        return
    rows = []
    for load in (0, 1):
        for policy in POLICIES:
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
            try:
                out = subprocess.run([sys.executable, __file__, "--one", "1", "--seconds", str(args.seconds)],
                                     env=policy.env(), capture_output=True, text=True, check=True).stdout
            finally:
                for p in busy:
                    p.kill()
                    p.wait()
            rows.append({"policy": policy.name, "busy processes": load, **json.loads(out.splitlines()[-1])})
            r = rows[-1]
            print(f"{r['policy']:<32} busy {load}: compute median {r['compute_ms_median']:5.0f} ms, p95 "
                  f"{r['compute_ms_p95']:5.0f}, max {r['compute_ms_max']:5.0f} (budget {r['budget_ms']:.0f}); "
                  f"underruns {r['underruns']} of {r['blocks']}", flush=True)


if __name__ == "__main__":
    main()
