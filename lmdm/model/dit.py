"""The LMDM DiT: a diffusion transformer over latent frames with clean context decoupled from the noisy target.

Rectified flow with velocity prediction (``lmdm.diffusion``). Each token is one latent frame and enters as
``[noisy x_t | clean latent | context flag | controls]`` (DESIGN.md section 5: the noisy input is zeroed at
context positions and the clean context enters as extra channels plus a flag).

Conditioning is adaLN-Zero (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", section 3.2) with
one twist that makes the KV cache possible (LMDM, arXiv 2605.22717, section 3): tokens belong to *segments*, and
a segment's conditioning vector is

* ``clean_cond`` (a learned constant) for clean context segments: no timestep, no prompt, and
* ``t_embed(t) + text_embed(prompt)`` for noisy target segments.

With the masks of ``lmdm.model.masks`` (context never attends to targets) the keys and values of context tokens
therefore depend on neither the denoising step, the noise, nor the prompt: they are computed once and cached,
and a prompt change between blocks needs no cache rebuild.

Shapes: ``b`` batch, ``L`` tokens (frames), ``d`` width, ``H`` heads, ``hd`` head width, ``ch`` latent channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmdm.errors import UsageError
from lmdm.model.config import DiTConfig
from lmdm.model.rope import apply_rope, rope_angles

KeyValueHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``kv(layer, k, v) -> (keys, values)``: what a layer's tokens attend over, given their own keys and values
(see :meth:`DiT.run_blocks`)."""


@dataclass
class TargetMod:
    """Precomputed conditioning of a target block for one timestep and prompt: the per-layer adaLN modulations
    ``(b, 1, 6d)`` and the final layer's modulation ``(b, 1, 2d)`` (:meth:`DiT.head_modulation`). A streamer
    computes these once per (prompt, denoising step) and reuses them for every block, since the schedule repeats.
    """

    layers: list[torch.Tensor]
    head: torch.Tensor
    _folded: dict = field(default_factory=dict, repr=False)

    def folded(self, streams: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The same modulations with the ``r = rows / streams`` guidance rows folded into a segment axis:
        per layer ``(streams, r, 1, 6d)`` and the head's ``(streams, r, 1, 2d)`` (row ``j * streams + i`` becomes
        stream ``i``, segment ``j``: the layout of ``torch.cat([cond, uncond])``). Computed once per object."""
        if streams not in self._folded:
            def fold(m: torch.Tensor) -> torch.Tensor:
                return m.reshape(-1, streams, 1, m.shape[-1]).transpose(0, 1).contiguous()
            self._folded[streams] = ([fold(m) for m in self.layers], fold(self.head))
        return self._folded[streams]


@dataclass
class Tokens:
    """A token sequence for the general (uncached) forward pass.

    Attributes:
        noisy: ``(b, L, ch)`` x_t at target tokens, 0 at clean context tokens.
        clean: ``(b, L, ch)`` clean latents at context tokens, 0 elsewhere.
        is_ctx: ``(b, L)`` or ``(L,)`` bool, the context flag channel.
        seg: ``(b, L)`` or ``(L,)`` long, each token's segment (index into ``t_seg``).
        t_seg: ``(b, n_seg)`` timestep of each segment in [0, 1]; NaN marks a clean (timestep-free) segment.
        pos: ``(b, L)`` or ``(L,)`` frame positions for RoPE.
        mask: ``(L, L)`` or ``(b, L, L)`` bool attention mask (True = may attend).
        controls: ``(b, L, control_dim)`` control channels or None (= all zero: no control).
    """

    noisy: torch.Tensor
    clean: torch.Tensor
    is_ctx: torch.Tensor
    seg: torch.Tensor
    t_seg: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor
    controls: torch.Tensor | None = None


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``t * 1000``; ``(...,)`` -> ``(..., dim)`` (DiT / ADM convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _expand_mask(mask: torch.Tensor) -> torch.Tensor:
    """(Lq, Lk) or (b, Lq, Lk) -> broadcastable to (b, H, Lq, Lk)."""
    return mask[:, None] if mask.dim() == 3 else mask


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation, QK-RMSNorm and RoPE.

    Split into :meth:`project` (queries/keys/values of the tokens) and :meth:`attend` (attention over any keys,
    then the MLP) so that the KV cache can attend over stored keys without a separate code path; the layer loop
    over both is :meth:`DiT.run_blocks`.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads = cfg.n_heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.RMSNorm(hd, eps=1e-6) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(hd, eps=1e-6) if cfg.qk_norm else nn.Identity()
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_hidden, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        """Conditioning vectors ``(b, n, d)`` -> modulation ``(b, n, 6d)``: shift, 1 + scale, gate for attention,
        then the same for the MLP (the ``1 +`` is applied here, once per vector, not once per token)."""
        mod = self.ada(c)
        mod.unflatten(-1, (6, -1))[..., 1::3, :].add_(1.0)  # the two scales (chunks 1 and 4), in place
        return mod

    def project(self, x: torch.Tensor, mod: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated queries, keys and values of tokens ``x``; each ``(b, H, L, hd)``.

        ``x`` is ``(b, L, d)`` with ``mod`` broadcastable to ``(b, L, 6d)``, or chunked ``(b, L/B, B, d)`` with
        ``mod`` ``(b, L/B, 1, 6d)`` (one modulation per chunk, broadcast without copies);
        ``cos``/``sin`` are ``(L, hd/2)`` or ``(b, L, hd/2)``.
        """
        b, d = x.shape[0], x.shape[-1]
        shift, scale = mod[..., :d], mod[..., d : 2 * d]
        h = torch.addcmul(shift, self.norm1(x), scale)
        q, k, v = self.qkv(h).reshape(b, -1, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, x: torch.Tensor, mod: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of queries ``q`` over keys/values ``k, v`` ``(b, H, Lk, hd)``, residual, then the MLP.

        ``mask`` is ``(Lq, Lk)``, ``(b, Lq, Lk)`` or None (all visible): bool (True = may attend) or additive
        float (0 or -inf, as precomputed by ``lmdm.model.cache``). Returns the new ``x`` (shape of ``x``).
        """
        d = x.shape[-1]
        if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:  # an additive mask, autocast
            mask = mask.to(q.dtype)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else _expand_mask(mask))
        a = a.transpose(1, 2).reshape(x.shape)
        gate1, shift2, scale2, gate2 = mod[..., 2 * d : 3 * d], mod[..., 3 * d : 4 * d], mod[..., 4 * d : 5 * d], mod[..., 5 * d :]
        x = torch.addcmul(x, gate1, self.proj(a))
        return torch.addcmul(x, gate2, self.mlp(torch.addcmul(shift2, self.norm2(x), scale2)))


def pitch_roll(controls: torch.Tensor, bins: int, low: int) -> torch.Tensor:
    """Piano roll of the melody control: ``(..., frames, control_dim)`` -> ``(..., frames, bins)``.

    Channel 0 is the pitch feature ``(midi - 60) / 12`` and channel 1 the voiced weight (``lmdm.control.features``); the
    pitch is placed between its two neighbouring semitones of ``low .. low + bins - 1`` by linear interpolation
    (a continuous glide stays continuous), clamped to the range, and scaled by the voiced weight (0 when the
    melody is unvoiced or absent).
    """
    midi = controls[..., 0].float() * 12.0 + 60.0
    pos = (midi - low).clamp(0, bins - 1)
    grid = torch.arange(bins, dtype=pos.dtype, device=pos.device)
    weights = (1.0 - (grid - pos[..., None]).abs()).clamp_min(0.0)
    return weights * controls[..., 1:2].float()


class DiT(nn.Module):
    """The LMDM diffusion transformer (see the module docstring). Predicts the rectified-flow velocity
    ``v = eps - x0`` for every token."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d, ch = cfg.d_model, cfg.latent_channels
        self.in_proj = nn.Linear(2 * ch + 1 + cfg.control_dim, d)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.text_embed = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.null_text = nn.Parameter(torch.zeros(d))  # the "empty prompt" (unconditional, for CFG)
        self.clean_cond = nn.Parameter(torch.zeros(d))  # conditioning of clean context segments
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out_proj = nn.Linear(d, ch)
        self._init_weights()
        # created after the initialisation above so that every other weight is initialised as without it
        self.pitch_proj = nn.Linear(cfg.pitch_bins, d, bias=False) if cfg.pitch_bins else None
        if self.pitch_proj is not None:
            nn.init.zeros_(self.pitch_proj.weight)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        nn.init.normal_(self.clean_cond, std=0.02)
        nn.init.normal_(self.null_text, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.ada[1].weight)
            nn.init.zeros_(blk.ada[1].bias)
        for lin in (self.final_ada[1], self.out_proj):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ---- conditioning -----------------------------------------------------------------------------------------
    def text_cond(self, text: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``(b, text_dim)`` and ``has_text`` ``(b,)`` bool -> ``(b, d)``; items without a prompt
        get the learned unconditional vector. The inputs are moved to the model's device and dtype (prompts are
        embedded on the CPU)."""
        emb = self.text_embed(text.to(self.null_text))
        return torch.where(has_text.to(emb.device)[:, None], emb, self.null_text.expand_as(emb))

    def target_cond(self, t: torch.Tensor, text_c: torch.Tensor) -> torch.Tensor:
        """Conditioning of noisy segments: timesteps ``(b, n)`` and text vectors ``(b, d)`` -> ``(b, n, d)``."""
        return self.t_embed(timestep_embedding(t, 256).to(text_c.dtype)) + text_c[:, None]

    def target_modulation(self, t: torch.Tensor, text_c: torch.Tensor) -> TargetMod:
        """All modulations of a target block at timesteps ``t`` ``(b,)`` with text vectors ``(b, d)``."""
        c = self.target_cond(t[:, None], text_c)
        return TargetMod(layers=[blk.modulation(c) for blk in self.blocks], head=self.head_modulation(c))

    def segment_cond(self, t_seg: torch.Tensor, text_c: torch.Tensor) -> torch.Tensor:
        """``(b, n_seg)`` timesteps (NaN = clean segment) -> conditioning vectors ``(b, n_seg, d)``."""
        clean = torch.isnan(t_seg)
        c = self.target_cond(torch.nan_to_num(t_seg, nan=0.0), text_c)
        return torch.where(clean[..., None], self.clean_cond.to(c.dtype), c)

    # ---- token embedding and head -----------------------------------------------------------------------------
    def embed(self, noisy: torch.Tensor | None, clean: torch.Tensor | None, is_ctx: torch.Tensor | bool,
              controls: torch.Tensor | None) -> torch.Tensor:
        """Input projection of ``[noisy | clean | flag | controls]`` -> ``(b, L, d)``.

        The projection is a sum over the four input groups, so a group that is all zero costs nothing: pass None
        for ``noisy`` (clean context tokens), ``clean`` (target tokens) or ``controls`` (no control), and a plain
        bool for ``is_ctx`` when all tokens share the flag. At least one of ``noisy`` and ``clean`` is given;
        tensors are ``(b, L, ch)``, ``is_ctx`` ``(L,)`` or ``(b, L)``, ``controls`` ``(b, L, control_dim)``.

        Raises:
            UsageError: ``controls`` do not have ``control_dim`` channels.
        """
        ch, dtype = self.cfg.latent_channels, self.in_proj.weight.dtype
        w, bias = self.in_proj.weight, self.in_proj.bias
        if isinstance(is_ctx, bool):  # one flag for every token: a constant folded into the bias
            bias = bias + w[:, 2 * ch] if is_ctx else bias
            flag = None
        else:
            flag = is_ctx.to(dtype)[..., None] * w[:, 2 * ch]  # (b, L, d) or (L, d)
        h = None
        for x, cols in ((noisy, slice(0, ch)), (clean, slice(ch, 2 * ch))):
            if x is not None:
                h = F.linear(x.to(dtype), w[:, cols], bias) if h is None else h + F.linear(x.to(dtype), w[:, cols])
        if flag is not None:
            h = h + flag
        if controls is not None:
            if controls.shape[-1] != self.cfg.control_dim:
                raise UsageError(f"controls have {controls.shape[-1]} channels, the model expects {self.cfg.control_dim}")
            h = h + F.linear(controls.to(dtype), w[:, 2 * ch + 1 :])
            if self.pitch_proj is not None:
                h = h + self.pitch_proj(pitch_roll(controls, self.cfg.pitch_bins, self.cfg.pitch_low).to(dtype))
        return h

    def head_modulation(self, c: torch.Tensor) -> torch.Tensor:
        """Conditioning vectors ``(..., d)`` -> the final layer's shift and ``1 + scale`` ``(..., 2d)``."""
        mod = self.final_ada(c)
        mod.unflatten(-1, (2, -1))[..., 1, :].add_(1.0)
        return mod

    def head(self, h: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """Final adaLN layer: ``(b, L, d)`` (or chunked) with a broadcastable modulation ``mod`` from
        :meth:`head_modulation` -> ``(b, L, ch)`` (always float32, whatever the model's dtype)."""
        d = h.shape[-1]
        return self.out_proj(torch.addcmul(mod[..., :d], self.final_norm(h), mod[..., d:])).float()

    def rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables for frame positions ``(L,)`` or ``(b, L)``."""
        return rope_angles(pos, self.cfg.head_dim, self.cfg.rope_base)

    # ---- the general forward pass -----------------------------------------------------------------------------
    def forward(self, tok: Tokens, text: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        """Velocity prediction for every token of ``tok`` (uncached; masks decide who sees whom).

        Args:
            tok: the token sequence (see :class:`Tokens`).
            text: ``(b, text_dim)`` prompt embeddings.
            has_text: ``(b,)`` bool; False = unconditional.

        Returns:
            ``(b, L, ch)`` predicted velocity ``eps - x0`` (meaningful at noisy tokens only).
        """
        return self.forward_cond(tok, self.text_cond(text, has_text))

    def forward_cond(self, tok: Tokens, text_c: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with precomputed text vectors ``text_c`` ``(b, d)`` (see :meth:`text_cond`)."""
        h, pick, c_seg = self._run(tok, text_c)
        return self.head(h, pick(self.head_modulation(c_seg))).reshape(tok.noisy.shape[0], tok.noisy.shape[1], -1)

    def features(self, tok: Tokens, text_c: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(b, L, d)`` after every block of this module (the ARC discriminator keeps the first
        few blocks of a copy and reads these)."""
        h, _, _ = self._run(tok, text_c)
        return h.reshape(tok.noisy.shape[0], tok.noisy.shape[1], -1)

    def _run(self, tok: Tokens, text_c: torch.Tensor):
        b, n, _ = tok.noisy.shape
        d, B = self.cfg.d_model, self.cfg.block_frames
        c_seg = self.segment_cond(tok.t_seg, text_c)  # (b, n_seg, d)
        seg = tok.seg.expand(b, n)
        cos, sin = self.rope(tok.pos)
        h = self.embed(tok.noisy, tok.clean, tok.is_ctx, tok.controls)
        # Every layout keeps one segment per chunk of B tokens: modulate per chunk by broadcasting, which avoids
        # materialising a (b, L, 6d) modulation per layer (and its scatter in the backward pass).
        chunks = seg.reshape(b, n // B, B) if n % B == 0 else None
        if chunks is not None and bool((chunks == chunks[..., :1]).all()):
            seg_c = chunks[..., 0]  # (b, L/B)
            h = h.reshape(b, n // B, B, d)
            pick = lambda x: torch.gather(x, 1, seg_c[..., None].expand(-1, -1, x.shape[-1]))[:, :, None]
        else:
            h = h.reshape(b, n, d)
            pick = lambda x: torch.gather(x, 1, seg[..., None].expand(-1, -1, x.shape[-1]))
        h = self.run_blocks(h, lambda layer: pick(self.blocks[layer].modulation(c_seg)), cos, sin, tok.mask)
        return h, pick, c_seg

    def run_blocks(self, h: torch.Tensor, mod: Callable[[int], torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                   mask: torch.Tensor | None = None, kv: KeyValueHook | None = None,
                   keys_only: int = 0) -> torch.Tensor:
        """Run tokens through every block: project queries/keys/values, attend over ``[prefix keys | own keys]``,
        then the MLP. The one layer loop of the model: the uncached forward pass and both KV caches
        (``lmdm.model.cache``) call it.

        Args:
            h: ``(b, L, d)`` embedded tokens, or chunked ``(b, L/B, B, d)`` (see :meth:`DiTBlock.project`).
            mod: ``mod(layer)`` -> the layer's adaLN modulation, broadcastable to ``h`` with width ``6d``.
            cos, sin: RoPE tables of the tokens' positions (:meth:`rope`).
            mask: attention mask ``(L, Lk)`` or ``(b, L, Lk)`` over the keys attended to, or None (all visible).
            kv: ``kv(layer, k, v)`` gets the tokens' own rotated keys and values ``(b, H, L, hd)`` and returns the
                keys and values to attend over ``(b, H, Lk, hd)`` (a cache puts its stored keys in front, and may
                store ``k, v``); None attends over the tokens' own keys (``Lk = L``).
            keys_only: the first ``keys_only`` entries along dim 1 of ``h`` (tokens, or chunks of the chunked
                layout) are wanted only for their keys and values (a KV cache's clean chunks): the last layer
                projects them, so ``kv`` still gets their keys, but neither attends nor runs the MLP for them --
                nothing reads their output. With ``mod`` per entry (dim 1 > 1) it must match ``h`` along dim 1.

        Returns:
            The hidden states after the last block (shape of ``h``, less the ``keys_only`` leading entries).
        """
        last = len(self.blocks) - 1
        for layer, blk in enumerate(self.blocks):
            m = mod(layer)
            q, k, v = blk.project(h, m, cos, sin)
            if kv is not None:
                k, v = kv(layer, k, v)
            if layer == last and keys_only:
                per = q.shape[2] // h.shape[1]  # query tokens per entry of dim 1
                h, q = h[:, keys_only:], q[:, :, keys_only * per :]
                if h.shape[1] == 0:
                    return h
                m = m[:, keys_only:] if m.shape[1] > 1 else m
                mask = None if mask is None else mask[..., keys_only * per :, :]
            h = blk.attend(h, m, q, k, v, mask)
        return h

    def num_params(self) -> int:
        """Parameters of the DiT."""
        return sum(p.numel() for p in self.parameters())
