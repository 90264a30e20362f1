"""Record ``tests/data/golden_outputs.json`` for bundled checkpoints (run when a bundled checkpoint is replaced on
purpose, never to make a failing refactor pass).

Usage: ``.venv/bin/python tests/support/record_golden.py lmdm-small [lmdm-small-arc]`` — rewrites the entries of
the named checkpoints and keeps the others.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lmdm.checkpoint import load_checkpoint  # noqa: E402
from lmdm.streaming.generate import generate  # noqa: E402
from tests.test_golden_outputs import CASES, audio_fingerprint  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden_outputs.json"


def record(name: str) -> dict:
    ckpt = load_checkpoint(ROOT / "data" / "checkpoints" / name)
    out = {}
    for case, (prompt, seconds, sampler, mask) in CASES.items():
        g = generate(ckpt, prompt, seconds, sampler, mask=mask)
        lat = g.latents.numpy()
        out[f"{name}/{case}"] = {
            "latents_shape": list(lat.shape), "latents_sample": lat.reshape(-1)[::997].tolist(),
            "latents_mean": float(lat.mean()), "latents_std": float(lat.std()), "audio_len": len(g.audio),
            "audio_mel_sample": audio_fingerprint(ckpt.codec, g.audio).tolist(),
            "audio_rms": float(np.sqrt(np.mean(np.square(g.audio)))),
        }
    return out


if __name__ == "__main__":
    golden = json.loads(GOLDEN.read_text())
    for name in sys.argv[1:]:
        golden.update(record(name))
    GOLDEN.write_text(json.dumps(golden, indent=0) + "\n")
    print(f"recorded {', '.join(sys.argv[1:])} in {GOLDEN}")
