"""The cost model: analytic FLOPs per block for the four streamers, and FLOPs counted by running them.

LMDM's first claim (arXiv 2605.22717, section 3) is about cost per block. With context ``C`` frames, block
``B`` frames, ``S`` denoising steps and a transformer of ``L`` layers and width ``d``, in steady state:

* **outpainting** (bidirectional, context re-noised every step): ``S * f(C + B)`` -- every step runs every
  context and target token, with attention over all ``C + B``. Nothing is cacheable.
* **LMDM enc-dec**: ``f(C) + S * g(B | C)`` -- the context is encoded once per block; each step runs only the
  ``B`` target tokens, attending to the cached context.
* **LMDM block-causal**: ``g(B | cache) + S * g(B | cache)`` -- only the just-finished block is encoded (fused
  into the first step), the rest of the context stays cached across blocks.
* **LMM** (discrete AR, Magenta RealTime-like): ``f_enc(C) + sum_i g_dec(1 | i, C)`` over ``B * depth``
  sequential one-token decoder steps.

Context tokens are needed only for their keys and values, so their last layer stops after its key/value projection
(``DiT.run_blocks(keys_only=...)``): enc-dec's ``f(C)`` and the fused step's clean chunk count that way.

FLOPs count multiply-adds twice (``2 M N K`` for a matmul), attention as ``4 * queries * keys * d`` per layer
(QK^T and AV), and nothing else (norms, activations, sampling). That is exactly what
``torch.utils.flop_counter.FlopCounterMode`` counts, so :func:`count_flops` checks the formulas; the CPU flash
attention kernel is missing from torch's formula table, so it is registered here with torch's own SDPA formula.
Classifier-free guidance doubles the target rows (``rows = 2``); context work is shared by both rows because
cached keys depend on neither prompt nor timestep. The LMM's prompt enters its encoder, so its guided block is
twice the unguided one.

**Sequential passes per block** (:func:`sequential_passes`, checked by :func:`count_passes`): the number of
network passes of one steady-state block that must run one after another, because each needs the previous one's
output. A pass is one trip through the layer stack; whatever runs in the same batch counts once (the guidance
rows; the clean chunk fused into block-causal's first step). Bootstrap is not amortised in: it happens once per
stream (its latency is reported on its own). So: outpainting ``S``; enc-dec ``1 + S`` (the context is encoded
before the first step); block-causal ``S``; LMM ``1 + B * depth`` (one encoder pass, then one decoder pass per
token). Wall time per block is roughly passes x the time of a pass, and a pass cannot use more parallel width
than its batch has, which is why a per-token decoder is latency-bound whatever its FLOPs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from lmdm.bench.lmm import LMMConfig
from lmdm.errors import UsageError
from lmdm.model.config import DiTConfig

_registered = False


def _register_cpu_sdpa() -> None:
    global _registered
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if _registered:
        return
    from torch.utils.flop_counter import flop_registry

    if op not in flop_registry:
        @register_flop_formula(op)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)
    _registered = True


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running ``fn()`` as counted by torch's FlopCounterMode (matmuls and attention).

    Run it on inference models (``requires_grad_(False)``, as ``load_checkpoint`` returns them): FlopCounterMode
    tracks gradients of module inputs and fails on parameters that require grad inside ``no_grad``.
    """
    _register_cpu_sdpa()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---- the DiT --------------------------------------------------------------------------------------------------
def _dit_tokens(cfg: DiTConfig, n: int, keys: int, head: int, embed_in: int, keys_only: int = 0) -> int:
    """FLOPs of ``n`` tokens through the input projection (``embed_in`` non-zero input channels: ``DiT.embed``
    skips all-zero groups), every layer (each query attending to ``keys`` keys) and the head of ``head`` of them;
    ``keys_only`` of them (a cache's clean tokens) stop after the last layer's key/value projection
    (``DiT.run_blocks``): no output projection, MLP or attention as queries there."""
    d, h, ch = cfg.d_model, cfg.mlp_hidden, cfg.latent_channels
    embed = n * embed_in * d
    layer = n * (4 * d * d + 2 * d * h) + 2 * n * keys * d
    skipped = keys_only * (d * d + 2 * d * h + 2 * keys * d)
    return 2 * (embed + cfg.n_layers * layer - skipped + head * d * ch)


def _dit_cond(cfg: DiTConfig, vectors: int, layers: bool = True, head: bool = False, t_embed: bool = False) -> int:
    """FLOPs of conditioning ``vectors`` vectors: adaLN of every layer, the final adaLN, the timestep MLP."""
    d = cfg.d_model
    macs = vectors * ((cfg.n_layers * 6 * d * d if layers else 0) + (2 * d * d if head else 0)
                      + ((256 * d + d * d) if t_embed else 0))
    return 2 * macs


def dit_block_flops(cfg: DiTConfig, mask: str, steps: int, guided: bool = True, context_frames: int | None = None) -> int:
    """Analytic FLOPs of one steady-state block (full window) of a DiT streamer.

    Args:
        cfg: the DiT (``B = block_frames``; ``C = context_frames or W * B``).
        mask: "outpainting", "enc_dec" or "block_causal".
        steps: denoising steps ``S``.
        guided: classifier-free guidance (two target rows per step).
        context_frames: override ``C`` (must be ``W * B`` for block_causal).

    Raises:
        UsageError: unknown mask.
    """
    B, ch = cfg.block_frames, cfg.latent_channels
    C = cfg.context_frames if context_frames is None else context_frames
    rows = 2 if guided else 1
    # no controls: a target token projects its noisy channels only, a clean token its clean ones; the target's
    # modulations (final layer's included) are cached by the streamer, computed once per prompt and step
    if mask == "outpainting":
        # every step: all C + B tokens of every row (noisy and clean channels), conditioning recomputed
        per_step = (rows * _dit_tokens(cfg, C + B, C + B, C + B, 2 * ch) + _dit_cond(cfg, rows, t_embed=True)
                    + _dit_cond(cfg, rows, layers=False, head=True))
        return steps * per_step
    if mask == "enc_dec":
        target_step = rows * _dit_tokens(cfg, B, C + B, B, ch)
        return _dit_tokens(cfg, C, C, 0, ch, keys_only=C) + _dit_cond(cfg, 1) + steps * target_step
    if mask == "block_causal":
        # guidance rows are segments of one row (lmdm.model.cache): each query meets all rB target keys, the
        # mask discards the other segments'; the fused first step adds the clean chunk's B tokens to the batch
        fused = _dit_tokens(cfg, (1 + rows) * B, C + (1 + rows) * B, rows * B, ch, keys_only=B)
        return fused + (steps - 1) * _dit_tokens(cfg, rows * B, C + rows * B, rows * B, ch)
    raise UsageError(f"unknown mask {mask!r}; choose outpainting, enc_dec or block_causal")


def fused_step_flop_ratio(cfg: DiTConfig, guided: bool = True) -> float:
    """FLOPs of block-causal's fused first step over those of a subsequent step (steady state, full window): what
    the fused step must compute more, the clean chunk's ``B`` tokens beside the ``rows * B`` target tokens (its last
    layer's attention and MLP skipped). A fused/subsequent wall ratio below it means the bigger batch ran faster per
    FLOP; one above it, overhead. From :func:`dit_block_flops`: ``F(1) / (F(2) - F(1))``.

    Args:
        cfg: the DiT.
        guided: classifier-free guidance (two target rows per step).
    """
    one, two = (dit_block_flops(cfg, "block_causal", s, guided) for s in (1, 2))
    return one / (two - one)


# ---- the LMM --------------------------------------------------------------------------------------------------
def lmm_block_flops(cfg: LMMConfig, guided: bool = False) -> int:
    """Analytic FLOPs of one steady-state LMM block: encoder over ``C`` frames + prompt token, cross-attention
    keys/values, then ``B * depth`` one-token decoder steps with a growing self-attention cache; every part twice
    when ``guided`` (classifier-free guidance: a conditional and an unconditional row, nothing shared)."""
    d, h, K = cfg.d_model, cfg.mlp_hidden, cfg.codebook_size
    ne = cfg.context_frames + 1
    n = cfg.block_frames * cfg.depth
    enc = cfg.text_dim * d + cfg.encoder_layers * (ne * (4 * d * d + 2 * d * h) + 2 * ne * ne * d)
    cross_kv = cfg.decoder_layers * ne * 2 * d * d
    per_token = cfg.decoder_layers * (6 * d * d + 2 * d * h + 2 * ne * d) + d * K
    self_attn = cfg.decoder_layers * 2 * d * (n * (n + 1) // 2)
    return (2 if guided else 1) * 2 * (enc + cross_kv + n * per_token + self_attn)


# ---- sequential passes ----------------------------------------------------------------------------------------
def sequential_passes(name: str, steps: int, lmm_cfg: LMMConfig | None = None) -> int:
    """Sequential network passes of one steady-state block (defined in the module docstring).

    Args:
        name: "outpainting", "enc_dec", "block_causal", or an LMM ("lmm", "lmm_unguided").
        steps: denoising steps ``S`` of the diffusion streamers.
        lmm_cfg: the LMM's config (needed for an LMM).

    Raises:
        UsageError: unknown streamer, or an LMM without ``lmm_cfg``.
    """
    if name in ("outpainting", "block_causal"):
        return steps
    if name == "enc_dec":
        return 1 + steps
    if name.startswith("lmm"):
        if lmm_cfg is None:
            raise UsageError("sequential_passes of an LMM needs its config")
        return 1 + lmm_cfg.block_frames * lmm_cfg.depth
    raise UsageError(f"unknown streamer {name!r}; choose outpainting, enc_dec, block_causal or lmm")


def count_passes(fn: Callable[[], object], first_layers: list[torch.nn.Module]) -> int:
    """Passes made while running ``fn()``, counted as calls of the modules that every pass calls exactly once
    (the first layer's query projection: ``DiT.blocks[0].qkv``; the LMM's first encoder and decoder
    self-attention query projections), so a batched pass counts once."""
    calls = 0

    def hook(*_):
        nonlocal calls
        calls += 1

    handles = [m.register_forward_hook(hook) for m in first_layers]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return calls


def first_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules :func:`count_passes` counts for a DiT or an LMM."""
    if hasattr(model, "blocks"):
        return [model.blocks[0].qkv]
    return [model.encoder[0].attn.q, model.decoder[0].attn.q]


def per_audio_second(block_flops: float, block_frames: int, frame_rate: float) -> float:
    """Block FLOPs -> FLOPs per second of audio (``block_frames / frame_rate`` seconds per block)."""
    return block_flops * frame_rate / block_frames
