"""Does ``torch.compile`` pay for the cached step here? Streams the bundled checkpoint eager, then with each DiT
block's ``project`` and ``attend`` compiled (TorchInductor, dynamic shapes), side by side in one process, and
prints ms per block and the largest difference. Needs a C++ compiler on the CPU.

    .venv/bin/python scripts/compile_check.py [--blocks 14] [--threads 2]

Measured on the 2-core CPU machine (8 ping-pong steps, CFG 2, 2 threads, blocks after the 4th), three quiet runs:
eager 79.8 / 84.8 / 83.9 ms per block, compiled 87.0 / 80.4 / 83.7 ms (a first run read 98.9 vs 79.5 with the eager
pass disturbed by other work); compiling takes ~29 s cold; outputs agree to 2e-6. It does not pay on this CPU, so lmdm keeps the eager path
only; worth rerunning on a GPU, where CUDA graphs remove launch overhead that the CPU does not have.
"""
from __future__ import annotations

import argparse
import time

import torch

from lmdm.checkpoint import load_checkpoint
from lmdm.streaming.streamer import BlockCausalStreamer, SamplerConfig
from lmdm.text import encode_prompts


def stream(ckpt, n_blocks: int) -> tuple[torch.Tensor, list[float]]:
    """``n_blocks`` blocks of one prompt; the latents and each block's seconds."""
    s = BlockCausalStreamer(ckpt.model, SamplerConfig(), keep_history=False)
    s.set_prompt(*encode_prompts("a slow Bach chorale on church organ"))
    out, times = [], []
    with torch.inference_mode():
        for _ in range(n_blocks):
            t = time.perf_counter()
            out.append(s.next_block().clone())
            times.append(time.perf_counter() - t)
    return torch.cat(out, 1), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=14)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint()
    ms = lambda t: 1000 * sum(t[4:]) / len(t[4:])
    eager, te = stream(ckpt, args.blocks)
    for blk in ckpt.model.blocks:
        blk.project = torch.compile(blk.project, dynamic=True)
        blk.attend = torch.compile(blk.attend, dynamic=True)
    t0 = time.perf_counter()
    _, tc = stream(ckpt, args.blocks)  # compiles
    compile_s = time.perf_counter() - t0
    compiled, tc2 = stream(ckpt, args.blocks)
    print(f"eager {ms(te):.1f} ms/block; compiled {ms(tc2):.1f} ms/block ({ms(te) / ms(tc2):.2f}x); first compiled "
          f"stream {compile_s:.1f} s; max |compiled - eager| {float((compiled - eager).abs().max()):.1e}")


if __name__ == "__main__":
    main()
