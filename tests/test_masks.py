"""Each mask equals a dense reference written as plain loops over (query, key) pairs."""
import pytest
import torch

from lmdm.model.masks import bidirectional_mask, block_causal_mask, block_causal_train_mask, chunk_layout, enc_dec_mask


def dense_enc_dec(C, B):
    n = C + B
    m = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            q_is_ctx, k_is_ctx = q < C, k < C
            m[q, k] = k_is_ctx if q_is_ctx else True
    return m


def dense_block_causal(tokens_q, tokens_k, W):
    """tokens: list of (chunk, clean). A chunk sees the W previous clean chunks and its own chunk of its kind."""
    m = torch.zeros(len(tokens_q), len(tokens_k), dtype=torch.bool)
    for i, (cq, clean_q) in enumerate(tokens_q):
        for j, (ck, clean_k) in enumerate(tokens_k):
            if clean_k and cq - W <= ck <= cq - 1:
                m[i, j] = True
            if ck == cq and clean_k == clean_q:
                m[i, j] = True
    return m


@pytest.mark.parametrize("C,B", [(0, 3), (4, 2), (8, 4)])
def test_enc_dec_mask(C, B):
    assert torch.equal(enc_dec_mask(C, B), dense_enc_dec(C, B))


def test_bidirectional_mask():
    assert bool(bidirectional_mask(5).all())


@pytest.mark.parametrize("N,B,W", [(1, 2, 0), (4, 2, 1), (5, 3, 2), (6, 2, 4)])
def test_block_causal_train_mask(N, B, W):
    toks = [(c, True) for c in range(N) for _ in range(B)] + [(c, False) for c in range(N) for _ in range(B)]
    assert torch.equal(block_causal_train_mask(N, B, W), dense_block_causal(toks, toks, W))


@pytest.mark.parametrize("W", [1, 2, 3])
def test_block_causal_stream_mask(W):
    n, B = 6, 2
    chunk, clean = chunk_layout(n, [n], B)
    toks = list(zip(chunk.tolist(), clean.tolist()))
    assert torch.equal(block_causal_mask(chunk, clean, chunk, clean, W), dense_block_causal(toks, toks, W))


def test_block_causal_mask_properties():
    """Clean tokens never see noisy ones; every query sees at least itself; the window really slides."""
    N, B, W = 6, 2, 2
    m = block_causal_train_mask(N, B, W)
    L = N * B
    assert not m[:L, L:].any()
    assert m.diagonal().all()
    # noisy chunk 5 sees clean chunks 3 and 4 only
    seen = m[L + 5 * B, :L].view(N, B).any(1)
    assert seen.tolist() == [False, False, False, True, True, False]
