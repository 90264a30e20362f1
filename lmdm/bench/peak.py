"""The machine's matrix-multiply peak, measured in the run that uses it (for MFU, model FLOP utilisation).

MFU is achieved FLOP/s (FLOPs counted by :func:`lmdm.bench.cost.count_flops` over wall time) divided by a peak.
A datasheet peak says little about a shared 2-core CPU with whatever clock, cache and threads it has today, so the
peak is measured: ``torch.matmul`` at a few shapes, in the dtype the streamers compute in (float32: they run no
autocast) and with this process's thread count, best of several repeats, and the fastest shape is the peak.

The shapes (:func:`model_shapes`) are the model's own MLP up-projection at the token counts of a block-causal
step (``2B`` rows: the two guidance rows) and of an outpainting step (``2(C + B)`` rows), plus one large square
GEMM (1024^3) that approaches what the CPU can do at all. Every shape's rate is kept, because the gap between the
small-row and the large GEMM is exactly the gap a block-causal step pays.
"""
from __future__ import annotations

import time

import torch


def model_shapes(d_model: int, mlp_hidden: int, block_frames: int, context_frames: int) -> list[tuple[int, int, int]]:
    """``(M, K, N)`` of the GEMMs the peak is measured at (see the module docstring)."""
    return [(2 * block_frames, d_model, mlp_hidden), (2 * (context_frames + block_frames), d_model, mlp_hidden),
            (1024, 1024, 1024)]


def gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, repeats: int = 5,
                min_seconds: float = 0.05, device: torch.device | str = "cpu") -> float:
    """Best-of-``repeats`` GFLOP/s of ``(m, k) @ (k, n)`` (``2 m k n`` FLOPs); each repeat runs enough matmuls
    to last about ``min_seconds``."""
    from lmdm.device import synchronize

    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device, dtype)
    b = torch.randn(k, n, generator=g).to(device, dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    flops = 2 * m * k * n
    torch.matmul(a, b, out=out)  # warm-up: first-call allocation and kernel selection
    synchronize(device)
    t = time.perf_counter()
    torch.matmul(a, b, out=out)
    synchronize(device)
    iters = max(1, int(min_seconds / max(time.perf_counter() - t, 1e-7)))
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        synchronize(device)
        best = max(best, iters * flops / (time.perf_counter() - t))
    return best / 1e9


def gemm_peak(shapes: list[tuple[int, int, int]], dtype: torch.dtype = torch.float32, repeats: int = 5,
              min_seconds: float = 0.05, device: torch.device | str = "cpu") -> dict:
    """The measured peak: ``{"peak_GFLOP_s", "dtype", "threads", "shapes": [{"m", "k", "n", "GFLOP_s"}]}``."""
    rows = [{"m": m, "k": k, "n": n, "GFLOP_s": gemm_gflops(m, k, n, dtype, repeats, min_seconds, device)}
            for m, k, n in shapes]
    return {"peak_GFLOP_s": max(r["GFLOP_s"] for r in rows), "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "device": str(device), "shapes": rows}
