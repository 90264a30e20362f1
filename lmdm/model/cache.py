"""Block-wise KV caches for streaming (LMDM, arXiv 2605.22717, section 3; DESIGN.md sections 1 and 5).

Two caches over the same :class:`~lmdm.model.dit.DiT`:

* :class:`BlockCausalKVCache` — the persistent sliding-window cache of the block-causal mask. It holds, per layer,
  the keys and values of the last ``W`` finished (clean) chunks in fixed-shape tensors ``(b, H, W * B, hd)``,
  oldest chunk first. Verbs (after Self-Forcing's ``causal_inference.py`` and the public LMDM code):

  - :meth:`~BlockCausalKVCache.bootstrap` — first fill: reset, then prefill any given clean context chunk by chunk;
  - :meth:`~BlockCausalKVCache.advance` — queue the block just generated (clean) as *pending*;
  - :meth:`~BlockCausalKVCache.step` — one denoising step of the target block. The first step after
    ``advance`` is the *fused first step*: in the same pass it runs the pending clean chunk through every layer
    (attending to the old cache and itself), writes its keys/values, evicts the oldest chunk, and then lets the
    target attend to the updated cache. Later steps only run the target.

  **Positions.** Keys are stored after rotary embedding at their *absolute* frame index (chunk ``n`` covers
  frames ``n*B .. n*B + B - 1``) and queries are rotated at theirs. RoPE scores depend only on the distance
  between frames, so when the window slides nothing is re-rotated: evicting a chunk is a shift of the tensors.
  Angles are computed in float64 (``lmdm.model.rope``), so hours-long streams keep full precision.

* :class:`EncDecKVCache` — the enc-dec mask's cache: the context is encoded once per block (bidirectionally) and
  every denoising step of the target attends to it; the streamer rebuilds it for every block because the window
  moved.

Both give the same numbers as the uncached masked forward pass (``DiT.forward`` with ``lmdm.model.masks``);
``tests/test_cache.py`` checks this to 1e-4 across window slides.

A target batch may be ``r`` times the cache batch (classifier-free guidance runs conditional and unconditional
rows over one cache, since cached keys depend on neither prompt nor timestep): target row ``i`` uses cache row
``i % b``, the layout of ``torch.cat([cond, uncond])``.
"""
from __future__ import annotations

import torch

from lmdm.model.dit import DiT, TargetMod


def _repeat_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x
    if rows % x.shape[0]:
        raise ValueError(f"target batch {rows} must be a multiple of the cache batch {x.shape[0]}")
    return x.repeat(rows // x.shape[0], *([1] * (x.dim() - 1)))


class BlockCausalKVCache:
    """Sliding-window KV cache of the block-causal mask (see the module docstring).

    Args:
        model: the DiT (its config gives ``B = block_frames`` and ``W = window_chunks``).
        batch: number of parallel streams ``b``.

    Keys and values are stored in the model's dtype.

    Attributes:
        next_chunk: absolute index of the chunk the next :meth:`step` generates.
        n_valid: how many of the ``W`` slots hold a chunk (0 right after an empty bootstrap).
    """

    def __init__(self, model: DiT, batch: int = 1):
        cfg = model.cfg
        dtype = next(model.parameters()).dtype
        self.model = model
        self.B, self.W = cfg.block_frames, cfg.window_chunks
        shape = (batch, cfg.n_heads, self.W * self.B, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(cfg.n_layers)]
        self.batch = batch
        self.n_valid = 0
        self.next_chunk = 0
        self.pending: torch.Tensor | None = None
        self.writes = 0  # chunks written so far (for inspection and tests)
        # Attention buffers per target row count: [cache (repeated over CFG rows) | target slot]. Refreshed once
        # per written chunk, so a denoising step copies only its own B keys instead of concatenating the cache.
        self._buffers: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], list[int]]] = {}
        self._layer_version = [0] * cfg.n_layers  # bumped whenever a layer's cache changes

    # ---- verbs ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def bootstrap(self, context: torch.Tensor | None = None, start_chunk: int = 0) -> None:
        """First fill: empty the cache, then prefill ``context`` chunk by chunk.

        Args:
            context: ``(b, m * B, ch)`` clean latents (a whole number of chunks), or None to start from nothing.
            start_chunk: absolute chunk index of the first context chunk (positions start at ``start_chunk * B``).

        Raises:
            ValueError: the context's shape does not match the cache.
        """
        for t in self.k + self.v:
            t.zero_()
        self.n_valid, self.pending, self.writes = 0, None, 0
        self._buffers.clear()
        self._layer_version = [v + 1 for v in self._layer_version]
        self.next_chunk = start_chunk
        if context is None or context.shape[1] == 0:
            return
        if context.dim() != 3 or context.shape[0] != self.batch or context.shape[1] % self.B:
            raise ValueError(f"context must be (batch={self.batch}, m*{self.B}, channels), got {tuple(context.shape)}")
        for i in range(context.shape[1] // self.B):
            self._forward(clean=context[:, i * self.B : (i + 1) * self.B], clean_chunk=self.next_chunk)
            self.next_chunk += 1

    def advance(self, block: torch.Tensor) -> None:
        """Queue the finished clean ``block`` ``(b, B, ch)``; it is written at the next step (fused first step).

        Raises:
            ValueError: wrong shape, or a previous block is still pending (no step ran in between).
        """
        if block.shape[:2] != (self.batch, self.B):
            raise ValueError(f"block must be (batch={self.batch}, {self.B}, channels), got {tuple(block.shape)}")
        if self.pending is not None:
            raise ValueError("advance() called twice without a step(): the previous block was never written")
        self.pending = block
        self.next_chunk += 1

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, t: torch.Tensor, text_c: torch.Tensor,
             controls: torch.Tensor | None = None, mods: TargetMod | None = None) -> torch.Tensor:
        """One denoising step of target chunk ``next_chunk``.

        Args:
            x_t: ``(r*b, B, ch)`` noisy target latents.
            t: ``(r*b,)`` timesteps in [0, 1].
            text_c: ``(r*b, d)`` text conditioning vectors (``DiT.text_cond``).
            controls: ``(r*b, B, control_dim)`` or None.
            mods: ``DiT.target_modulation(t, text_c)`` if already computed (streamers reuse it across blocks).

        Returns:
            ``(r*b, B, ch)`` predicted velocity (float32).
        """
        mods = mods or self.model.target_modulation(t, text_c)
        out = self._forward(clean=self.pending, clean_chunk=self.next_chunk - 1, target=x_t, mods=mods,
                            controls=controls)
        self.pending = None  # written: only now, so a failed step leaves the block pending instead of lost
        return out

    @torch.no_grad()
    def write_pending(self) -> None:
        """Write the pending clean block now, in a pass of its own (the unfused form of the first step)."""
        if self.pending is not None:
            self._forward(clean=self.pending, clean_chunk=self.next_chunk - 1)
            self.pending = None

    def step_with_grad(self, x_t: torch.Tensor, t: torch.Tensor, text_c: torch.Tensor,
                       controls: torch.Tensor | None = None) -> torch.Tensor:
        """A denoising step whose output carries gradients to the model's parameters (ARC-Forcing's exit step,
        Self-Forcing style). A pending block is first written without gradient: the cache holds constants, so
        earlier blocks are detached. Arguments as in :meth:`step`."""
        self.write_pending()
        with torch.enable_grad():
            return self._forward(target=x_t, mods=self.model.target_modulation(t, text_c), controls=controls)

    @property
    def is_fused_next(self) -> bool:
        """Whether the next :meth:`step` is a fused first step (a clean block is pending)."""
        return self.pending is not None

    # ---- the computation --------------------------------------------------------------------------------------
    def _attention_buffers(self, layer: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, H, W*B + B, hd)`` key and value buffers of a layer with the current cache in front."""
        if rows not in self._buffers:
            shape = (rows, *self.k[0].shape[1:2], self.W * self.B + self.B, self.k[0].shape[-1])
            n = len(self.k)
            self._buffers[rows] = ([torch.zeros(shape, dtype=self.k[0].dtype) for _ in range(n)],
                                   [torch.zeros(shape, dtype=self.k[0].dtype) for _ in range(n)], [-1] * n)
        kb, vb, version = self._buffers[rows]
        if version[layer] != self._layer_version[layer]:
            WB = self.W * self.B
            kb[layer][:, :, :WB] = _repeat_rows(self.k[layer], rows)
            vb[layer][:, :, :WB] = _repeat_rows(self.v[layer], rows)
            version[layer] = self._layer_version[layer]
        return kb[layer], vb[layer]

    def _slot_mask(self, n_valid: int) -> torch.Tensor:
        """``(W*B,)`` bool: which cache slots hold a chunk (valid chunks are right-aligned, newest last)."""
        slots = torch.arange(self.W * self.B) // self.B
        return slots >= self.W - n_valid

    def _forward(self, clean=None, clean_chunk=0, target=None, mods=None, controls=None):
        m, B = self.model, self.B
        dev_dtype = self.k[0].dtype if self.k else torch.float32
        write = clean is not None and self.W > 0
        hc = ht = None
        if write:
            pos_c = torch.arange(clean_chunk * B, (clean_chunk + 1) * B)
            cos_c, sin_c = m.rope(pos_c)
            c_clean = m.clean_cond.to(dev_dtype)[None, None]
            zeros = torch.zeros_like(clean)
            hc = m.embed(zeros, clean.to(dev_dtype), torch.ones(B, dtype=torch.bool), None)
            mask_c = torch.cat([self._slot_mask(self.n_valid), torch.ones(B, dtype=torch.bool)])[None].expand(B, -1)
        if target is not None:
            n_after = min(self.n_valid + 1, self.W) if write else self.n_valid
            pos_t = torch.arange(self.next_chunk * B, (self.next_chunk + 1) * B)
            cos_t, sin_t = m.rope(pos_t)
            ht = m.embed(target, torch.zeros_like(target), torch.zeros(B, dtype=torch.bool), controls)
            mask_t = torch.cat([self._slot_mask(n_after), torch.ones(B, dtype=torch.bool)])[None].expand(B, -1)
            rows = target.shape[0]
        for layer, blk in enumerate(m.blocks):
            if write:
                mod_c = blk.modulation(c_clean)
                q, k, v = blk.project(hc, mod_c, cos_c, sin_c)
                hc = blk.attend(hc, mod_c, q, torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2), mask_c)
                # write the finished chunk, evict the oldest (fixed shape: shift by one chunk)
                self.k[layer] = torch.cat([self.k[layer][:, :, B:], k.detach().to(dev_dtype)], 2)
                self.v[layer] = torch.cat([self.v[layer][:, :, B:], v.detach().to(dev_dtype)], 2)
                self._layer_version[layer] += 1
            if target is not None:
                mod_t = mods.layers[layer]
                q, k, v = blk.project(ht, mod_t, cos_t, sin_t)
                if torch.is_grad_enabled():  # fresh tensors: the reused buffers would break the backward pass
                    kb = torch.cat([_repeat_rows(self.k[layer], rows), k], 2)
                    vb = torch.cat([_repeat_rows(self.v[layer], rows), v], 2)
                else:
                    kb, vb = self._attention_buffers(layer, rows)
                    kb[:, :, self.W * B :] = k
                    vb[:, :, self.W * B :] = v
                ht = blk.attend(ht, mod_t, q, kb, vb, mask_t)
        if write:
            self.n_valid = min(self.n_valid + 1, self.W)
            self.writes += 1
        if target is None:
            return None
        return m.head(ht, mods.head)


class EncDecKVCache:
    """The enc-dec mask's cache: context keys/values encoded once, reused by every denoising step of a block.

    Args:
        model: the DiT.
        batch: parallel streams ``b``.
    """

    def __init__(self, model: DiT, batch: int = 1):
        self.model = model
        self.batch = batch
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.target_start = 0

    @torch.no_grad()
    def bootstrap(self, context: torch.Tensor, start_frame: int = 0) -> None:
        """Encode ``context`` ``(b, C', ch)`` (any length, also 0) with bidirectional context attention.

        ``start_frame`` is the absolute frame index of the first context frame; the target follows the context.
        """
        m = self.model
        b, n, _ = context.shape
        self.target_start = start_frame + n
        self.k, self.v = [], []
        if n == 0:
            return
        cos, sin = m.rope(torch.arange(start_frame, start_frame + n))
        mod_in = m.clean_cond[None, None]
        h = m.embed(torch.zeros_like(context), context, torch.ones(n, dtype=torch.bool), None)
        for blk in m.blocks:
            mod = blk.modulation(mod_in)
            q, k, v = blk.project(h, mod, cos, sin)
            self.k.append(k)
            self.v.append(v)
            h = blk.attend(h, mod, q, k, v, None)

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, t: torch.Tensor, text_c: torch.Tensor,
             controls: torch.Tensor | None = None, mods: TargetMod | None = None) -> torch.Tensor:
        """One denoising step of the target ``(r*b, B, ch)`` attending to the encoded context; returns velocity
        (arguments as in ``BlockCausalKVCache.step``)."""
        m = self.model
        rows, n, _ = x_t.shape
        mods = mods or m.target_modulation(t, text_c)
        cos, sin = m.rope(torch.arange(self.target_start, self.target_start + n))
        h = m.embed(x_t, torch.zeros_like(x_t), torch.zeros(n, dtype=torch.bool), controls)
        for layer, blk in enumerate(m.blocks):
            mod = mods.layers[layer]
            q, k, v = blk.project(h, mod, cos, sin)
            if self.k:
                k = torch.cat([_repeat_rows(self.k[layer], rows), k], 2)
                v = torch.cat([_repeat_rows(self.v[layer], rows), v], 2)
            h = blk.attend(h, mod, q, k, v, None)
        return m.head(h, mods.head)
