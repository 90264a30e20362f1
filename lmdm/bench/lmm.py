"""A discrete autoregressive Live Music Model (LMM) baseline, shaped like Magenta RealTime, for cost comparison.

Magenta RealTime (Google, 2025) streams music in chunks: an encoder reads the context as residual-quantised (RVQ)
tokens (a few coarse levels per frame), and a decoder generates the next chunk *token by token* with a KV cache,
``depth`` RVQ levels for every frame. Per block it costs one encoder pass over the context plus ``B * depth``
sequential one-token decoder steps. LMDM's claim (arXiv 2605.22717, section 3) is that a diffusion model with
block-wise KV caching beats this.

This module builds such a model at the same latent frame rate as our DiT and a matched parameter count
(:func:`matched_config`). **Its weights are untrained**: it exists to measure cost (FLOPs, wall time), not to make
music, and every number it produces is labelled that way. Design choices, documented so the comparison is fair:

* tokens come from a :class:`ResidualQuantizer` over our own latent frames (codebooks sampled from data or noise,
  not trained), so input and output live in the same latent space as the DiT's;
* one token table shared by all RVQ levels plus a level embedding (keeps parameters in the transformer layers,
  where the compute is, instead of in embedding tables that cost nothing to run);
* the prompt enters as one extra encoder token; the decoder's self-attention spans the current block, the
  context arrives through cross-attention;
* classifier-free guidance as the DiT streamers do it (matched guidance, so that the comparison is fair): the
  conditional and the unconditional (zero prompt vector) rows run as one batch of two, and each token is drawn
  from the guided logits ``u + s * (c - u)`` and fed to both rows. The prompt token enters the encoder, so no
  work is shared between the rows: a guided block costs exactly twice the FLOPs of an unguided one
  (:func:`lmdm.bench.cost.lmm_block_flops`), though not twice the time on hardware with spare width.

The LMM runs on the device of its weights (``.to(device)``, like the DiT), and so do the quantiser's codebooks in
an :class:`LMMStreamer`; its sampling generator lives there too (the tokens are noise-like anyway, and a CPU
generator would cost a device round trip per token), so another device draws other tokens from the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmdm.device import module_device
from lmdm.model.rope import apply_rope, rope_angles


@dataclass(frozen=True)
class LMMConfig:
    """Size and geometry of the LMM baseline.

    Attributes:
        d_model, n_heads, mlp_ratio: transformer width, heads, MLP expansion.
        encoder_layers, decoder_layers: depth of encoder and decoder.
        codebook_size: tokens per RVQ level (``K``).
        depth: RVQ levels generated per frame (Magenta RealTime generates 16).
        context_depth: RVQ levels the encoder reads per context frame (Magenta RealTime reads 4).
        block_frames, context_frames: ``B`` and ``C`` in latent frames (same as the DiT's).
        latent_channels: channels of the latent frames the RVQ quantises.
        text_dim: prompt embedding size.
    """

    d_model: int = 256
    n_heads: int = 4
    mlp_ratio: float = 4.0
    encoder_layers: int = 5
    decoder_layers: int = 5
    codebook_size: int = 1024
    depth: int = 16
    context_depth: int = 4
    block_frames: int = 16
    context_frames: int = 64
    latent_channels: int = 512
    text_dim: int = 384

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.d_model * self.mlp_ratio)


class ResidualQuantizer:
    """Residual vector quantisation of latent frames: level ``l`` quantises what levels ``< l`` left over.

    Args:
        codebooks: ``(depth, K, channels)``.
    """

    def __init__(self, codebooks: torch.Tensor):
        self.codebooks = codebooks

    def to(self, device: torch.device | str) -> "ResidualQuantizer":
        """The same quantiser with its codebooks on ``device``."""
        return ResidualQuantizer(self.codebooks.to(device))

    @classmethod
    def sampled(cls, depth: int, size: int, channels: int, data: torch.Tensor | None = None,
                seed: int = 0) -> "ResidualQuantizer":
        """Codebooks whose codewords are residuals of randomly chosen frames of ``data`` ``(frames, channels)``
        (untrained; a k-means would be the trained version), or Gaussian noise without data."""
        g = torch.Generator().manual_seed(seed)
        books = []
        resid = None if data is None else data.float()
        for _ in range(depth):
            if resid is None:
                book = torch.randn(size, channels, generator=g) * 0.5
            else:
                book = resid[torch.randint(len(resid), (size,), generator=g)]
                resid = resid - book[torch.cdist(resid, book).argmin(1)]
            books.append(book)
        return cls(torch.stack(books))

    def encode(self, latents: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """``(b, frames, channels)`` -> tokens ``(b, frames, levels)``."""
        resid = latents.float()
        out = []
        for book in self.codebooks[: levels or len(self.codebooks)]:
            idx = torch.cdist(resid, book[None].expand(resid.shape[0], -1, -1)).argmin(-1)
            out.append(idx)
            resid = resid - book[idx]
        return torch.stack(out, -1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(b, frames, levels)`` -> latents ``(b, frames, channels)`` (sum of the chosen codewords)."""
        return sum(self.codebooks[lvl][tokens[..., lvl]] for lvl in range(tokens.shape[-1]))


class _Attention(nn.Module):
    def __init__(self, cfg: LMMConfig):
        super().__init__()
        self.h = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def split(self, x):
        b, n, d = x.shape
        return x.view(b, n, self.h, d // self.h).transpose(1, 2)

    def keys_values(self, x, rope=None):
        k, v = self.kv(x).chunk(2, -1)
        k, v = self.split(k), self.split(v)
        return (apply_rope(k, *rope) if rope else k), v

    def forward(self, x, k, v, rope=None, mask=None):
        q = self.split(self.q(x))
        if rope:
            q = apply_rope(q, *rope)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(a.transpose(1, 2).reshape(x.shape))


class _Block(nn.Module):
    def __init__(self, cfg: LMMConfig, cross: bool):
        super().__init__()
        d = cfg.d_model
        self.n1, self.attn = nn.LayerNorm(d), _Attention(cfg)
        self.cross = _Attention(cfg) if cross else None
        self.n2 = nn.LayerNorm(d) if cross else None
        self.n3 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_hidden, d))


class LMM(nn.Module):
    """Encoder-decoder LMM over RVQ tokens (see the module docstring). Untrained: for cost measurements."""

    def __init__(self, cfg: LMMConfig):
        super().__init__()
        self.cfg = cfg
        d, K = cfg.d_model, cfg.codebook_size
        self.token = nn.Embedding(K, d)
        self.level = nn.Embedding(cfg.depth + 1, d)  # + the begin-of-block position
        self.text = nn.Linear(cfg.text_dim, d)
        self.encoder = nn.ModuleList(_Block(cfg, cross=False) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(_Block(cfg, cross=True) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, K)

    def num_params(self) -> int:
        """Parameters of the LMM (embeddings included)."""
        return sum(p.numel() for p in self.parameters())

    def encode(self, context: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Encoder pass: ``context`` tokens ``(b, C, context_depth)`` and prompt ``(b, text_dim)`` ->
        ``(b, C + 1, d)``."""
        levels = torch.arange(context.shape[-1], device=context.device)
        x = (self.token(context) + self.level(levels)).sum(2)  # one vector per frame
        x = torch.cat([self.text(text)[:, None], x], 1)
        rope = rope_angles(torch.arange(x.shape[1], device=x.device), self.cfg.head_dim)
        for blk in self.encoder:
            h = blk.n1(x)
            k, v = blk.attn.keys_values(h, rope)
            x = x + blk.attn(h, k, v, rope)
            x = x + blk.mlp(blk.n3(x))
        return x

    @torch.no_grad()
    def generate_block(self, context: torch.Tensor, text: torch.Tensor, generator: torch.Generator,
                       temperature: float = 1.0, cfg_scale: float = 1.0) -> torch.Tensor:
        """Generate one block of ``B`` frames, ``depth`` tokens each, one token per decoder step.

        Args:
            context: ``(b, C, context_depth)`` context tokens.
            text: ``(b, text_dim)`` prompt embedding.
            generator: RNG for sampling, on the model's device.
            temperature: softmax temperature.
            cfg_scale: classifier-free guidance scale; other than 1, the ``b`` conditional rows and ``b``
                unconditional rows (zero prompt) run as one batch and tokens are drawn from the guided logits.

        Returns:
            ``(b, B, depth)`` tokens.
        """
        cfg = self.cfg
        b, dev = context.shape[0], context.device
        n = cfg.block_frames * cfg.depth
        guided = cfg_scale != 1.0
        if guided:  # rows [cond | uncond], as the DiT streamers batch them
            context, text = torch.cat([context, context]), torch.cat([text, torch.zeros_like(text)])
        rows = context.shape[0]
        enc = self.encode(context, text)
        cross = [blk.cross.keys_values(enc) for blk in self.decoder]
        shape = (rows, cfg.n_heads, n, cfg.head_dim)
        ks = [torch.zeros(shape, dtype=enc.dtype, device=dev) for _ in self.decoder]
        vs = [torch.zeros(shape, dtype=enc.dtype, device=dev) for _ in self.decoder]
        cos, sin = rope_angles(torch.arange(n, device=dev), cfg.head_dim)
        out = torch.zeros(b, n, dtype=torch.long, device=dev)
        x = self.level(torch.full((rows, 1), cfg.depth, device=dev))  # begin-of-block input
        for i in range(n):
            rope = (cos[i : i + 1], sin[i : i + 1])
            for layer, blk in enumerate(self.decoder):
                h = blk.n1(x)
                k, v = blk.attn.keys_values(h, rope)
                ks[layer][:, :, i : i + 1], vs[layer][:, :, i : i + 1] = k, v
                x = x + blk.attn(h, ks[layer][:, :, : i + 1], vs[layer][:, :, : i + 1], rope)
                x = x + blk.cross(blk.n2(x), *cross[layer])
                x = x + blk.mlp(blk.n3(x))
            logits = self.head(self.norm(x))[:, 0]
            if guided:
                logits = logits[b:] + cfg_scale * (logits[:b] - logits[b:])
            tok = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
            out[:, i] = tok
            tok = torch.cat([tok, tok]) if guided else tok  # both rows continue from the guided token
            x = self.token(tok)[:, None] + self.level(torch.full((rows, 1), (i + 1) % cfg.depth, device=dev))
        return out.view(b, cfg.block_frames, cfg.depth)


def matched_config(target_params: int, **overrides) -> LMMConfig:
    """The LMM config (equal encoder and decoder depth) whose parameter count is closest to ``target_params``."""
    best = None
    for layers in range(1, 33):
        cfg = LMMConfig(encoder_layers=layers, decoder_layers=layers, **overrides)
        gap = abs(count_params(cfg) - target_params)
        if best is None or gap < best[0]:
            best = (gap, cfg)
    return best[1]


def count_params(cfg: LMMConfig) -> int:
    """Parameter count of :class:`LMM` for ``cfg`` (without building it)."""
    d, h, K = cfg.d_model, cfg.mlp_hidden, cfg.codebook_size
    attn = 4 * d * d + 4 * d
    mlp = 2 * d * h + h + d
    ln = 2 * d
    enc = cfg.encoder_layers * (attn + mlp + 2 * ln)
    dec = cfg.decoder_layers * (2 * attn + mlp + 3 * ln)
    return enc + dec + K * d + (cfg.depth + 1) * d + cfg.text_dim * d + d + ln + d * K + K


class LMMStreamer:
    """Streams the LMM block by block: encoder pass over the last ``C`` frames of its own tokens (their first
    ``context_depth`` levels), then the token-by-token decoder. Generated tokens are kept, so the context never
    needs re-quantising; latents are only decoded for listening.

    Args:
        model: the (untrained) LMM, on the device it streams on.
        rvq: quantiser over the DiT's latent space (``depth`` levels); its codebooks are moved to the model's device.
        seed: sampling seed (of a generator on the model's device).
        cfg_scale: classifier-free guidance scale (1 = none; see the module docstring).

    Attributes:
        text: the prompt ``(1, text_dim)`` (set it on any device; it is moved to the model's).
    """

    def __init__(self, model: LMM, rvq: ResidualQuantizer, seed: int = 0, cfg_scale: float = 1.0):
        self.device = module_device(model)
        self.model, self.rvq = model, rvq.to(self.device)
        self.seed, self.cfg_scale = seed, cfg_scale
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.text = torch.zeros(1, model.cfg.text_dim, device=self.device)
        self.tokens = torch.zeros(1, 0, model.cfg.depth, dtype=torch.long, device=self.device)

    def reset(self, context: torch.Tensor | None = None) -> None:
        """Start a stream, optionally from context latents ``(1, frames, channels)`` (quantised once)."""
        self.generator.manual_seed(self.seed)
        depth = self.model.cfg.depth
        self.tokens = (torch.zeros(1, 0, depth, dtype=torch.long, device=self.device) if context is None
                       else self.rvq.encode(context.to(self.device), depth))

    @torch.no_grad()
    def next_block(self) -> torch.Tensor:
        """The next block of latent frames ``(1, B, channels)`` (noise-like: the weights are untrained)."""
        cfg = self.model.cfg
        ctx = self.tokens[:, max(0, self.tokens.shape[1] - cfg.context_frames) :, : cfg.context_depth]
        block = self.model.generate_block(ctx, self.text.to(self.device), self.generator, cfg_scale=self.cfg_scale)
        self.tokens = torch.cat([self.tokens, block], 1)
        return self.rvq.decode(block)
