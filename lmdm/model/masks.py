"""Attention masks of LMDM (DESIGN.md section 1), each built by one function. ``True`` means "may attend".

Vocabulary: the timeline is cut into *chunks* of ``B`` frames (one generated *block* each). A token is either
*clean* (context: a finished chunk, entering as clean latents) or *noisy* (a target being denoised).

* :func:`bidirectional_mask` — everything sees everything (the outpainting baseline).
* :func:`enc_dec_mask` — ``C`` context frames attend to the context only (bidirectionally); the ``B`` target
  frames attend to everything. Context keys/values never depend on the target, the timestep or the prompt.
* :func:`block_causal_mask` — the LMDM rule over a sequence of clean and noisy chunks: a token of chunk ``c``
  sees the clean chunks ``c - W .. c - 1`` (the sliding window of ``W`` chunks) and its own chunk of its own kind
  (clean sees clean ``c``, noisy sees noisy ``c``). Noisy tokens are never visible to clean ones. This one rule
  gives the training layout ``[clean 0..N-1 | noisy 0..N-1]`` (teacher forcing), the streaming step
  ``[clean 0..n-1 | noisy n]`` and the cached computation (``lmdm.model.cache``).
"""
from __future__ import annotations

import torch


def bidirectional_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(length, length)`` all-True mask on ``device`` (None: the CPU)."""
    return torch.ones(length, length, dtype=torch.bool, device=device)


def enc_dec_mask(context: int, block: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(C + B, C + B)`` enc-dec mask over ``[context (C frames) | target (B frames)]`` on ``device``."""
    n = context + block
    m = torch.ones(n, n, dtype=torch.bool, device=device)
    m[:context, context:] = False
    return m


def block_causal_mask(q_chunk: torch.Tensor, q_clean: torch.Tensor, k_chunk: torch.Tensor, k_clean: torch.Tensor,
                      window: int) -> torch.Tensor:
    """Block-causal sliding-window mask between arbitrary query and key tokens.

    Args:
        q_chunk, k_chunk: ``(Lq,)`` / ``(Lk,)`` chunk index of each query / key token.
        q_clean, k_clean: ``(Lq,)`` / ``(Lk,)`` bool, True for clean (context) tokens, False for noisy targets.
        window: ``W``, the number of previous clean chunks a chunk sees.

    Returns:
        ``(Lq, Lk)`` bool mask, on the device of the inputs.
    """
    qc, kc = q_chunk[:, None], k_chunk[None, :]
    qk_clean = q_clean[:, None]
    in_window = k_clean[None, :] & (kc >= qc - window) & (kc < qc)
    own_chunk = (kc == qc) & (k_clean[None, :] == qk_clean)
    return in_window | own_chunk


def chunk_layout(n_clean: int, noisy_chunks: list[int] | torch.Tensor, block: int,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``(chunk, clean)`` of the sequence ``[clean chunks 0..n_clean-1 | noisy chunks ...]``.

    Returns:
        ``chunk`` ``(L,)`` long and ``clean`` ``(L,)`` bool on ``device`` (None: the CPU), with
        ``L = (n_clean + len(noisy_chunks)) * block``.
    """
    noisy = torch.as_tensor(noisy_chunks, dtype=torch.long, device=device)
    chunks = torch.cat([torch.arange(n_clean, device=noisy.device), noisy]).repeat_interleave(block)
    clean = torch.cat([torch.ones(n_clean * block, dtype=torch.bool, device=noisy.device),
                       torch.zeros(len(noisy) * block, dtype=torch.bool, device=noisy.device)])
    return chunks, clean


def block_causal_train_mask(n_chunks: int, block: int, window: int,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """``(2NB, 2NB)`` mask of the teacher-forcing layout ``[clean 0..N-1 | noisy 0..N-1]`` on ``device``."""
    chunk, clean = chunk_layout(n_chunks, list(range(n_chunks)), block, device)
    return block_causal_mask(chunk, clean, chunk, clean, window)
