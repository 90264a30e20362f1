"""Cached streaming equals the uncached masked forward pass (fp32, 1e-4), across window slides."""
import pytest
import torch

from lmdm.model.cache import BlockCausalKVCache, EncDecKVCache
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.model.layouts import block_causal_stream_tokens, enc_dec_tokens, teacher_forcing_tokens

TOL = 1e-4


def tiny_model(window: int, block: int = 4, seed: int = 0, pitch_bins: int = 0) -> DiT:
    torch.manual_seed(seed)
    cfg = DiTConfig(latent_channels=12, d_model=32, n_layers=3, n_heads=2, text_dim=8, control_dim=3,
                    block_frames=block, window_chunks=window, pitch_bins=pitch_bins, pitch_low=57)
    model = DiT(cfg).eval()
    # adaLN-Zero starts every block as the identity; randomise so that every path carries signal
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def conds(model, b=1):
    text = torch.randn(b, model.cfg.text_dim)
    return text, model.text_cond(text, torch.ones(b, dtype=torch.bool))


@pytest.mark.parametrize("window,pitch_bins", [(1, 0), (2, 0), (3, 0), (2, 6)])
def test_block_causal_cache_matches_uncached_across_slides(window, pitch_bins):
    model = tiny_model(window, pitch_bins=pitch_bins)
    B, ch = model.cfg.block_frames, model.cfg.latent_channels
    g = torch.Generator().manual_seed(1)
    n_blocks = window + 4  # several evictions
    clean_blocks = [torch.randn(1, B, ch, generator=g) for _ in range(n_blocks)]
    text, text_c = conds(model)
    cache = BlockCausalKVCache(model)
    cache.bootstrap()
    worst = 0.0
    for n in range(n_blocks):
        history = torch.cat(clean_blocks[:n], 1) if n else torch.zeros(1, 0, ch)
        for step in range(3):  # the fused first step and later steps
            x_t = torch.randn(1, B, ch, generator=g)
            t = torch.rand(1, generator=g)
            ctrl = torch.randn(1, B, 3, generator=g)
            v_cached = cache.step(x_t, t, text_c, ctrl)
            tok = block_causal_stream_tokens(history, x_t, t, window, ctrl)
            v_ref = model(tok, text, torch.ones(1, dtype=torch.bool))[:, -B:]
            worst = max(worst, (v_cached - v_ref).abs().max().item())
        cache.advance(clean_blocks[n])
    assert cache.writes == n_blocks - 1
    assert cache.n_valid == window
    assert worst < TOL, worst


def test_block_causal_stream_reference_equals_teacher_forcing_layout():
    """The training layout [clean 0..N-1 | noisy 0..N-1] gives each noisy chunk what streaming would."""
    window, N = 2, 5
    model = tiny_model(window)
    B, ch = model.cfg.block_frames, model.cfg.latent_channels
    x0 = torch.randn(1, N * B, ch)
    x_t = torch.randn(1, N * B, ch)
    t = torch.rand(1, N)
    text, _ = conds(model)
    yes = torch.ones(1, dtype=torch.bool)
    v_train = model(teacher_forcing_tokens(x0, x_t, t, window), text, yes)[:, N * B:]
    for n in range(N):
        tok = block_causal_stream_tokens(x0[:, : n * B], x_t[:, n * B : (n + 1) * B], t[:, n], window)
        v = model(tok, text, yes)[:, -B:]
        assert (v - v_train[:, n * B : (n + 1) * B]).abs().max() < TOL


def test_bootstrap_prefill_equals_streamed_history_and_cfg_rows():
    window = 2
    model = tiny_model(window)
    B, ch = model.cfg.block_frames, model.cfg.latent_channels
    ctx = torch.randn(1, 3 * B, ch)
    text, text_c = conds(model)
    cache = BlockCausalKVCache(model)
    cache.bootstrap(ctx)
    assert cache.next_chunk == 3 and cache.n_valid == 2
    x_t, t = torch.randn(1, B, ch), torch.rand(1)
    ref = model(block_causal_stream_tokens(ctx, x_t, t, window), text, torch.ones(1, dtype=torch.bool))[:, -B:]
    # a CFG batch: conditional and unconditional rows share the one-row cache
    null_c = model.text_cond(text, torch.zeros(1, dtype=torch.bool))
    v = cache.step(x_t.repeat(2, 1, 1), t.repeat(2), torch.cat([text_c, null_c]))
    assert (v[:1] - ref).abs().max() < TOL
    ref_u = model(block_causal_stream_tokens(ctx, x_t, t, window), text, torch.zeros(1, dtype=torch.bool))[:, -B:]
    assert (v[1:] - ref_u).abs().max() < TOL


def test_positions_stay_consistent_far_into_a_stream():
    """Keys stored rotated at absolute positions: a stream 10,000 chunks in computes what one at 0 does."""
    window = 2
    model = tiny_model(window)
    B, ch = model.cfg.block_frames, model.cfg.latent_channels
    ctx = torch.randn(1, 2 * B, ch)
    x_t, t = torch.randn(1, B, ch), torch.rand(1)
    _, text_c = conds(model)
    outs = []
    for start in (0, 10_000):
        cache = BlockCausalKVCache(model)
        cache.bootstrap(ctx, start_chunk=start)
        outs.append(cache.step(x_t, t, text_c))
    assert (outs[0] - outs[1]).abs().max() < TOL


@pytest.mark.parametrize("context_chunks", [0, 1, 3])
def test_enc_dec_cache_matches_uncached(context_chunks):
    model = tiny_model(3)
    B, ch = model.cfg.block_frames, model.cfg.latent_channels
    ctx = torch.randn(2, context_chunks * B, ch)
    text, text_c = conds(model, 2)
    cache = EncDecKVCache(model, batch=2)
    cache.bootstrap(ctx, start_frame=40)
    for _ in range(3):
        x_t, t = torch.randn(2, B, ch), torch.rand(2)
        ctrl = torch.randn(2, B, 3)
        v = cache.step(x_t, t, text_c, ctrl)
        ref = model(enc_dec_tokens(ctx, x_t, t, ctrl, start_frame=40), text, torch.ones(2, dtype=torch.bool))[:, -B:]
        assert (v - ref).abs().max() < TOL


def test_per_token_modulation_path_matches_the_cache():
    """A context that is not a whole number of chunks takes DiT.forward's per-token path; same numbers."""
    model = tiny_model(3)
    B, ch = model.cfg.block_frames, model.cfg.latent_channels
    ctx = torch.randn(1, 5, ch)  # 5 frames: not a multiple of B = 4
    text, text_c = conds(model)
    cache = EncDecKVCache(model)
    cache.bootstrap(ctx)
    x_t, t = torch.randn(1, B, ch), torch.rand(1)
    ref = model(enc_dec_tokens(ctx, x_t, t), text, torch.ones(1, dtype=torch.bool))[:, -B:]
    assert (cache.step(x_t, t, text_c) - ref).abs().max() < TOL


@pytest.mark.parametrize("sampler,cfg_scale", [("euler", 2.0), ("pingpong", 1.0)])
def test_streamed_generation_equals_uncached_generation(sampler, cfg_scale):
    """End to end: the cached streamer and the uncached reference generate the same stream (same seed)."""
    from lmdm.streaming.streamer import (
        BlockCausalStreamer,
        SamplerConfig,
        UncachedBlockCausalStreamer,
        block_differences,
    )

    model = tiny_model(2)
    sc = SamplerConfig(steps=3, sampler=sampler, cfg_scale=cfg_scale, seed=5)
    a, b = BlockCausalStreamer(model, sc), UncachedBlockCausalStreamer(model, sc)
    text = torch.randn(1, model.cfg.text_dim)
    for s in (a, b):
        s.set_prompt(text, torch.ones(1, dtype=torch.bool))
    diffs = block_differences(a, b, 6)
    assert max(diffs) < TOL, diffs


def test_a_guidance_interval_guides_only_its_steps_and_keeps_cached_equal_to_uncached(monkeypatch):
    """With ``cfg_t_max`` between the steps' timesteps, the steps above it (the fused first step among them) run
    one row and the steps below two;
    the cached streamer still equals the uncached one; an interval over every step is plain guidance, one over
    none is no guidance."""
    from lmdm.streaming.streamer import (
        BlockCausalStreamer,
        SamplerConfig,
        UncachedBlockCausalStreamer,
        block_differences,
    )

    model = tiny_model(2)
    text = torch.randn(1, model.cfg.text_dim)
    streams = {}
    for name, extra in {"interval": {"cfg_t_max": 0.9}, "all": {"cfg_t_min": 0.0, "cfg_t_max": 1.0}, "plain": {},
                        "none": {"cfg_t_min": 0.0, "cfg_t_max": 0.0}, "unguided": {"cfg_scale": 1.0}}.items():
        sc = SamplerConfig(**{"steps": 3, "sampler": "pingpong", "cfg_scale": 3.0, "seed": 5, **extra})
        a, b = BlockCausalStreamer(model, sc), UncachedBlockCausalStreamer(model, sc)
        for s in (a, b):
            s.set_prompt(text, torch.ones(1, dtype=torch.bool))
        if name == "interval":
            rows = []
            real_step = a.cache.step
            monkeypatch.setattr(a.cache, "step", lambda x_t, *r, **k: rows.append(x_t.shape[0]) or real_step(x_t, *r, **k))
        diffs = block_differences(a, b, 4)
        assert max(diffs) < TOL, (name, diffs)
        if name == "interval":  # t = 1, 0.966, 0.661 on ping-pong's 3-step schedule: only the last is guided
            assert rows[:6] == [1, 1, 2, 1, 1, 2]
        streams[name] = a.history
    assert torch.equal(streams["all"], streams["plain"]) and torch.equal(streams["none"], streams["unguided"])
    assert not torch.allclose(streams["interval"], streams["plain"]) and \
        not torch.allclose(streams["interval"], streams["unguided"])


def test_the_guidance_interval_is_checked():
    from lmdm.config import ConfigError
    from lmdm.streaming.streamer import SamplerConfig

    for bad in ({"cfg_t_min": -0.1}, {"cfg_t_max": 1.5}, {"cfg_t_min": 0.8, "cfg_t_max": 0.2}, {"cfg_t_max": True}):
        with pytest.raises(ConfigError, match="cfg_t_m|guidance interval"):
            SamplerConfig(**bad)


def layer0_keys(model: DiT, clean: torch.Tensor, chunk: int) -> torch.Tensor:
    """Keys of a clean chunk at the first layer, computed from scratch: they depend only on the chunk's own latents
    and its absolute positions (attention mixes chunks only from the first layer's output on)."""
    B = model.cfg.block_frames
    h = model.embed(torch.zeros_like(clean), clean, torch.ones(B, dtype=torch.bool), None)
    blk = model.blocks[0]
    cos, sin = model.rope(torch.arange(chunk * B, (chunk + 1) * B))
    return blk.project(h, blk.modulation(model.clean_cond[None, None]), cos, sin)[1]


@torch.no_grad()
def test_cached_chunks_names_what_the_slots_hold_across_slides():
    window = 2
    model = tiny_model(window)
    B, ch = model.cfg.block_frames, model.cfg.latent_channels
    g = torch.Generator().manual_seed(2)
    blocks = {}  # absolute chunk index -> clean latents
    x_t, t = torch.randn(1, B, ch, generator=g), torch.rand(1, generator=g)
    _, text_c = conds(model)
    cache = BlockCausalKVCache(model)

    def holds(chunks):
        assert cache.cached_chunks() == chunks
        assert cache.n_valid == len(chunks)
        for c in chunks:  # each cached chunk's stored keys are its own (in the ring slot c % W)
            assert (cache.chunk_kv(0, c)[0] - layer0_keys(model, blocks[c], c)).abs().max() < TOL, c

    cache.bootstrap()
    holds([])
    assert (cache.next_chunk, cache.pending, cache.writes) == (0, None, 0)
    cache.step(x_t, t, text_c)
    holds([])
    # (advance chunk n, then a step writes it): the window of W = 2 slides after the second write
    expected = [[0], [0, 1], [1, 2], [2, 3], [3, 4]]
    for n, want in enumerate(expected):
        blocks[n] = torch.randn(1, B, ch, generator=g)
        cache.advance(blocks[n])
        assert cache.next_chunk == n + 1 and cache.pending is blocks[n]
        holds(expected[n - 1] if n else [])  # pending: not in the cache yet
        cache.step(x_t, t, text_c)
        assert cache.pending is None and cache.writes == n + 1
        holds(want)
    cache.step(x_t, t, text_c)  # a later step of the same block writes nothing
    holds([3, 4])
    # a bootstrap with context far into a stream: three chunks from chunk 10, of which the last two stay
    ctx = torch.randn(1, 3 * B, ch, generator=g)
    blocks.update({10 + i: ctx[:, i * B : (i + 1) * B] for i in range(3)})
    cache.bootstrap(ctx, start_chunk=10)
    assert cache.next_chunk == 13 and cache.writes == 3
    holds([11, 12])
    blocks[13] = torch.randn(1, B, ch, generator=g)
    cache.advance(blocks[13])
    cache.write_pending()
    holds([12, 13])
    cache.bootstrap(start_chunk=7)
    holds([])


@pytest.mark.parametrize("mask", ["block_causal", "enc_dec", "outpainting"])
def test_a_streamer_follows_weights_changed_after_it_was_built(mask):
    """Conditioning cached per prompt (text vectors, the unconditional vector, per-step modulations) and the block-
    causal cache are recomputed when the weights change in place: the next block equals a fresh streamer's."""
    from lmdm.streaming.streamer import SamplerConfig, make_streamer

    model = tiny_model(2)
    sc = SamplerConfig(steps=2, sampler="pingpong", cfg_scale=2.0, seed=3)
    prompt = (torch.randn(1, model.cfg.text_dim), torch.ones(1, dtype=torch.bool))

    def fresh(context=None, generator_state=None):
        s = make_streamer(model, mask, sc)
        s.set_prompt(*prompt)
        s.reset(context)
        if generator_state is not None:
            s.generator.set_state(generator_state)
        return s

    old = fresh()
    for _ in range(3):  # conditioning, modulations and cache all computed with the first weights
        old.next_block()
    history, state = old.history.clone(), old.generator.get_state()
    with torch.no_grad():  # e.g. an ARC post-training step, or a notebook loading other weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    got = old.next_block()
    want = fresh(history, state).next_block()
    assert (got - want).abs().max() < TOL
    # a prompt set between the weight change and the next block (the live engine's order) must not hide it
    history, state = old.history.clone(), old.generator.get_state()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    old.set_prompt(*prompt)
    assert (old.next_block() - fresh(history, state).next_block()).abs().max() < TOL
    old.reset()  # after a reset too
    assert (old.next_block() - fresh().next_block()).abs().max() < TOL
    # parameters replaced rather than modified (load_state_dict(assign=True))
    model.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}, assign=True)
    model.requires_grad_(False)
    old.reset()
    assert (old.next_block() - fresh().next_block()).abs().max() < TOL


def test_a_streamer_runs_a_model_loaded_under_inference_mode():
    """Inference tensors keep no version counter; the streamer's weight check must not need one."""
    from lmdm.streaming.streamer import SamplerConfig, make_streamer

    with torch.inference_mode():
        model = tiny_model(2)
        s = make_streamer(model, "block_causal", SamplerConfig(steps=2, sampler="pingpong", cfg_scale=1.0, seed=0))
        s.reset()
        assert torch.isfinite(s.next_block()).all()


def test_a_refused_bootstrap_leaves_the_cache_as_it_was():
    from lmdm.errors import UsageError

    model = tiny_model(2)
    cache = BlockCausalKVCache(model)
    good = torch.randn(1, 2 * model.cfg.block_frames, model.cfg.latent_channels)
    cache.bootstrap(good)
    before = [k.clone() for k in cache.k], cache.cached_chunks()
    with pytest.raises(UsageError, match="context must be"):
        cache.bootstrap(torch.randn(1, model.cfg.block_frames + 1, model.cfg.latent_channels))
    assert cache.cached_chunks() == before[1] == [0, 1]
    assert all(torch.equal(a, b) for a, b in zip(before[0], cache.k))


@pytest.mark.parametrize("window", [1, 3])
def test_fused_first_step_is_one_pass_and_equals_the_reference_with_guidance_rows(window, monkeypatch):
    """Two streams with conditional and unconditional rows: the fused first step runs the clean chunk and the four
    target rows through the layers once, attends over the ring in place (same buffers, nothing reallocated or
    shifted), and equals the uncached masked forward pass of every row across slides."""
    model = tiny_model(window)
    B, ch, b = model.cfg.block_frames, model.cfg.latent_channels, 2
    g = torch.Generator().manual_seed(4)
    text = torch.randn(b, model.cfg.text_dim, generator=g)
    yes, no = torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)
    text_c = torch.cat([model.text_cond(text, yes), model.text_cond(text, no)])
    cache = BlockCausalKVCache(model, batch=b)
    cache.bootstrap()
    passes = []
    run_blocks = DiT.run_blocks
    monkeypatch.setattr(DiT, "run_blocks", lambda self, h, *a, **k: passes.append(h.shape) or run_blocks(self, h, *a, **k))
    buffers = [t.data_ptr() for t in cache._k + cache._v]
    blocks = []
    for n in range(window + 3):
        for step in range(2):
            x_t = torch.randn(b, B, ch, generator=g)
            t = torch.rand(b, generator=g)
            ctrl = torch.randn(b, B, 3, generator=g)
            passes.clear()
            v = cache.step(x_t.repeat(2, 1, 1), t.repeat(2), text_c, ctrl.repeat(2, 1, 1))
            fused = n > 0 and step == 0
            assert passes == [torch.Size((b, 3 if fused else 2, B, model.cfg.d_model))]  # one batch
            history = torch.cat(blocks, 1) if blocks else torch.zeros(b, 0, ch)
            tok = block_causal_stream_tokens(history, x_t, t, window, ctrl)
            for rows, has in ((slice(0, b), yes), (slice(b, 2 * b), no)):
                assert (v[rows] - model(tok, text, has)[:, -B:]).abs().max() < TOL, (n, step)
        blocks.append(torch.randn(b, B, ch, generator=g))
        cache.advance(blocks[-1])
    assert [t.data_ptr() for t in cache._k + cache._v] == buffers


def test_clean_chunks_skip_the_last_layers_attention_and_mlp(monkeypatch):
    """Nothing reads a clean chunk's output after its last keys and values: in the fused first step the last layer
    attends and runs the MLP for the target rows only, a write without a target and the enc-dec context encoding
    stop after the last layer's projection (the outputs are those of the full pass: the equality tests above)."""
    from lmdm.model.dit import DiTBlock

    model = tiny_model(2)
    B, ch, d, n_layers = model.cfg.block_frames, model.cfg.latent_channels, model.cfg.d_model, model.cfg.n_layers
    seen = []
    attend = DiTBlock.attend
    monkeypatch.setattr(DiTBlock, "attend", lambda self, x, *a: seen.append(tuple(x.shape)) or attend(self, x, *a))
    _, text_c = conds(model)
    cache = BlockCausalKVCache(model)
    cache.bootstrap(torch.randn(1, B, ch))
    assert seen == [(1, 1, B, d)] * (n_layers - 1)  # the context chunk: keys only in the last layer
    cache.step(torch.randn(1, B, ch), torch.rand(1), text_c)
    cache.advance(torch.randn(1, B, ch))
    seen.clear()
    cache.step(torch.randn(1, B, ch), torch.rand(1), text_c)  # the fused first step
    assert seen == [(1, 2, B, d)] * (n_layers - 1) + [(1, 1, B, d)]
    cache.advance(torch.randn(1, B, ch))
    seen.clear()
    cache.write_pending()
    assert seen == [(1, 1, B, d)] * (n_layers - 1) and cache.pending is None
    enc = EncDecKVCache(model)
    seen.clear()
    enc.bootstrap(torch.randn(1, 2 * B, ch))
    assert seen == [(1, 2 * B, d)] * (n_layers - 1) and len(enc.k) == n_layers


def test_a_full_window_reuses_its_masks_every_w_blocks():
    """The mask depends on chunk differences only: once the window is full, the fused first step W blocks later
    attends with the very same mask tensor (built once), and the stream still equals the reference (above)."""
    window = 2
    model = tiny_model(window)
    B, ch = model.cfg.block_frames, model.cfg.latent_channels
    cache = BlockCausalKVCache(model, batch=1)
    cache.bootstrap(torch.randn(1, window * B, ch))
    _, text_c = conds(model)
    masks = []
    for n in range(3 * window):
        cache.advance(torch.randn(1, B, ch))
        masks.append(cache._plan(cache.next_chunk - 1, 1, 2).mask)
        cache.step(torch.randn(2, B, ch), torch.rand(2), text_c.repeat(2, 1))
    assert masks[0] is not masks[1] and all(masks[n] is masks[n + window] for n in range(window, 2 * window))


def test_a_full_window_without_guidance_attends_without_a_mask():
    """Once the window is full, a later step of one row per stream sees every key: the mask is None."""
    model = tiny_model(2)
    B, ch = model.cfg.block_frames, model.cfg.latent_channels
    cache = BlockCausalKVCache(model)
    cache.bootstrap(torch.randn(1, 2 * B, ch))
    _, text_c = conds(model)
    cache.step(torch.randn(1, B, ch), torch.rand(1), text_c)
    assert cache._plan(cache.next_chunk, 0, 1).mask is None
    assert cache._plan(cache.next_chunk, 0, 2).mask is not None  # guidance segments must not see each other


def test_streamers_run_under_inference_mode_and_return_ordinary_tensors(monkeypatch):
    from lmdm.streaming.streamer import SamplerConfig, make_streamer

    model = tiny_model(2)
    modes = []
    step = BlockCausalKVCache.step
    monkeypatch.setattr(BlockCausalKVCache, "step",
                        lambda self, *a, **k: modes.append(torch.is_inference_mode_enabled()) or step(self, *a, **k))
    s = make_streamer(model, "block_causal", SamplerConfig(steps=2, cfg_scale=1.0))
    s.reset()
    blocks = [s.next_block() for _ in range(2)]
    assert modes and all(modes)
    assert not any(b.is_inference() for b in blocks) and not s.history.is_inference()
    blocks[0].add_(1.0)  # an ordinary tensor: in-place use outside inference mode is allowed
