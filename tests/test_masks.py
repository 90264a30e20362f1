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


@pytest.mark.parametrize("C,B", [(0, 3), (4, 2), (8, 4)])
def test_bidirectional_mask_is_enc_dec_plus_context_seeing_the_target(C, B):
    n = C + B
    m = bidirectional_mask(n)
    assert m.shape == (n, n) and m.dtype == torch.bool
    assert torch.equal(m, enc_dec_mask(0, n))  # no context: the enc-dec target sees everything
    # it differs from the enc-dec mask exactly where context queries meet target keys
    extra = torch.zeros(n, n, dtype=torch.bool)
    for q in range(C):
        for k in range(C, n):
            extra[q, k] = True
    assert torch.equal(m & ~enc_dec_mask(C, B), extra)
    assert torch.equal(m, enc_dec_mask(C, B) | extra)


def test_the_outpainting_layout_attends_bidirectionally_and_enc_dec_does_not():
    """Through the model: with the outpainting layout's mask a context frame's output depends on the target;
    with the enc-dec mask it does not, while the target depends on the context in both."""
    from lmdm.model.config import DiTConfig
    from lmdm.model.dit import DiT
    from lmdm.model.layouts import enc_dec_tokens, outpainting_tokens

    torch.manual_seed(0)
    model = DiT(DiTConfig(latent_channels=6, d_model=16, n_layers=2, n_heads=2, text_dim=4, control_dim=0,
                          block_frames=2, window_chunks=2)).eval()
    with torch.no_grad():  # adaLN-Zero starts every block as the identity: give every path signal
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    C, B = 4, 2
    ctx, x_t, t = torch.randn(1, C, 6), torch.randn(1, B, 6), torch.tensor([0.5])
    x_t2 = x_t.clone()
    x_t2[0, -1] += 1.0  # change the last target frame only
    ctx2 = ctx.clone()
    ctx2[0, 0] += 1.0  # change the first context frame only
    text, has = torch.zeros(1, 4), torch.zeros(1, dtype=torch.bool)
    out = lambda tok: model(tok, text, has)[0]
    tok = outpainting_tokens(ctx, ctx, x_t, t)
    assert torch.equal(tok.mask, bidirectional_mask(C + B))
    assert (out(outpainting_tokens(ctx, ctx, x_t2, t))[:C] - out(tok)[:C]).abs().max() > 1e-3
    enc = out(enc_dec_tokens(ctx, x_t, t))
    assert torch.equal(out(enc_dec_tokens(ctx, x_t2, t))[:C], enc[:C])  # context never sees the target
    assert (out(enc_dec_tokens(ctx2, x_t, t))[C:] - enc[C:]).abs().max() > 1e-3
    assert (out(outpainting_tokens(ctx2, ctx2, x_t, t))[C:] - out(tok)[C:]).abs().max() > 1e-3


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
