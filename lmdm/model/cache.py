"""Block-wise KV caches for streaming (LMDM, arXiv 2605.22717, section 3; DESIGN.md sections 1 and 5).

Two caches over the same :class:`~lmdm.model.dit.DiT`:

* :class:`BlockCausalKVCache` — the persistent sliding-window cache of the block-causal mask. It holds, per layer,
  the keys and values of the last ``W`` finished (clean) chunks in fixed-shape tensors ``(b, H, W * B, hd)``,
  oldest chunk first. Verbs (after Self-Forcing's ``causal_inference.py`` and the public LMDM code):

  - :meth:`~BlockCausalKVCache.bootstrap` — first fill: reset, then prefill any given clean context chunk by chunk;
  - :meth:`~BlockCausalKVCache.advance` — queue the block just generated (clean) as *pending*;
  - :meth:`~BlockCausalKVCache.step` — one denoising step of the target block. The first step after
    ``advance`` is the *fused first step*: in the same call it runs the pending clean chunk through every layer
    (attending to the old cache and itself), writes its keys/values, evicts the oldest chunk, and then lets the
    target attend to the updated cache. Later steps only run the target.
  - :meth:`~BlockCausalKVCache.cached_chunks` — which absolute chunks the slots hold (for plots and tests).

  Both passes (the clean chunk's and the target's) are ``DiT.run_blocks``, the model's one layer loop, with a
  hook that puts the cached keys in front of the tokens' own (and, for the clean chunk, stores them).

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

from dataclasses import dataclass

import torch

from lmdm.errors import UsageError
from lmdm.model.dit import DiT, TargetMod
from lmdm.model.masks import block_causal_mask


def _repeat_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x
    if rows % x.shape[0]:
        raise ValueError(f"target batch {rows} must be a multiple of the cache batch {x.shape[0]}")
    return x.repeat(rows // x.shape[0], *([1] * (x.dim() - 1)))


@dataclass
class _Pass:
    """What one pass through the layers needs besides the tokens, computed once per block and pass kind:
    RoPE tables ``(L, hd/2)`` of the queries and the additive attention mask ``(L, W*B + L)`` over
    ``[ring slots | the pass's own tokens]`` (None when every query sees every key)."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None


class BlockCausalKVCache:
    """Sliding-window KV cache of the block-causal mask (see the module docstring).

    Args:
        model: the DiT (its config gives ``B = block_frames`` and ``W = window_chunks``).
        batch: number of parallel streams ``b``.

    Keys and values are stored in the model's dtype, on the model's device (every tensor the cache creates is
    on that device).

    **Layout (a ring buffer).** Per layer one key and one value buffer ``(b, H, W*B + S*B, hd)``: ``W`` ring slots
    (absolute chunk ``c`` lives in slot ``c % W``, so evicting the oldest chunk is overwriting its slot) followed
    by a scratch region of ``S`` chunks for the tokens of the pass in flight. A pass writes its own keys into the
    scratch region and attends over the buffer's prefix ``[ring | its tokens]``; nothing is concatenated and no
    slot is copied as the window slides. Attention is order-free, so slot order does not matter: the mask (built
    by ``lmdm.model.masks.block_causal_mask`` from each key's chunk, once per block) says who sees what.

    **Guidance rows.** ``r`` target rows per stream (classifier-free guidance: ``torch.cat([cond, uncond])``) are
    folded into ``r`` segments of one row's tokens, so the cache holds one row per stream and is never repeated;
    the mask keeps the segments from seeing each other.

    **Fused first step.** The first step after :meth:`advance` runs the pending clean chunk and the ``r`` target
    segments as one batch ``[clean n-1 | target n (r segments)]`` through every layer: the clean tokens see the
    window's ``W`` chunks and themselves, the targets see the newest ``W - 1`` of them, the clean chunk and
    themselves. After the pass the clean chunk's keys and values move from the scratch region to the slot of the
    chunk they evict (``B`` frames per layer).

    Attributes (read them; the verbs change them):
        next_chunk: absolute index of the chunk the next :meth:`step` generates.
        n_valid: how many of the ``W`` slots hold a chunk (0 right after an empty bootstrap).
        pending: the finished clean block ``(b, B, ch)`` queued by :meth:`advance` (absolute chunk
            ``next_chunk - 1``) and not yet written, or None.
        writes: chunks written since the last :meth:`bootstrap` (prefilled context chunks included).
    """

    def __init__(self, model: DiT, batch: int = 1):
        cfg = model.cfg
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.model = model
        self.B, self.W = cfg.block_frames, cfg.window_chunks
        self._kv_shape = (batch, cfg.n_heads, cfg.head_dim)
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._alloc(3)  # a clean chunk and two guidance segments; grows if a pass needs more
        self.batch = batch
        self.n_valid = 0
        self.next_chunk = 0
        self.pending: torch.Tensor | None = None
        self.writes = 0
        self._newest = -1  # absolute index of the newest written chunk
        self._passes: dict[tuple[int, int, int], _Pass] = {}  # (first query chunk, clean chunks, segments) -> _Pass
        # additive masks by the ring's layout relative to the first query chunk: the mask depends on chunk
        # differences only, so once the window is full its W layouts repeat, and a block's plan reuses one
        self._masks: dict[tuple, torch.Tensor | None] = {}
        self._clean_mod: list[torch.Tensor] | None = None  # per layer (1, 1, 1, 6d): the clean chunks' modulation

    def _alloc(self, scratch_chunks: int) -> None:
        """(Re)allocate the buffers with room for ``scratch_chunks`` chunks of pass tokens, keeping the ring."""
        b, H, hd = self._kv_shape
        shape = (b, H, (self.W + scratch_chunks) * self.B, hd)
        WB = self.W * self.B
        with torch.inference_mode(False):  # ordinary tensors even when a streamer runs under inference_mode
            for store in (self._k, self._v):
                old = list(store)
                store[:] = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.model.blocks]
                for new, o in zip(store, old):
                    new[:, :, :WB] = o[:, :, :WB]

    # ---- verbs ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def bootstrap(self, context: torch.Tensor | None = None, start_chunk: int = 0) -> None:
        """First fill: empty the cache, then prefill ``context`` chunk by chunk.

        Args:
            context: ``(b, m * B, ch)`` clean latents (a whole number of chunks), or None to start from nothing.
            start_chunk: absolute chunk index of the first context chunk (positions start at ``start_chunk * B``).

        Raises:
            UsageError: the context's shape does not match the cache.
        """
        if context is not None and (context.dim() != 3 or context.shape[0] != self.batch
                                    or context.shape[1] % self.B):
            raise UsageError(f"context must be (batch={self.batch}, m*{self.B}, channels), got {tuple(context.shape)}")
        for t in self._k + self._v:
            t.zero_()
        self.n_valid, self.pending, self.writes = 0, None, 0
        self._passes.clear()
        self._clean_mod = self._clean_modulation()  # constant: once per bootstrap (the weights may have changed)
        self.next_chunk = start_chunk
        self._newest = start_chunk - 1
        if context is None or context.shape[1] == 0:
            return
        for i in range(context.shape[1] // self.B):
            self._run(context[:, i * self.B : (i + 1) * self.B], None, None, self.next_chunk)
            self.next_chunk += 1

    def advance(self, block: torch.Tensor) -> None:
        """Queue the finished clean ``block`` ``(b, B, ch)``; it is written at the next step (fused first step).

        Raises:
            UsageError: wrong shape.
            ValueError: a previous block is still pending (no step ran in between).
        """
        if block.shape[:2] != (self.batch, self.B):
            raise UsageError(f"block must be (batch={self.batch}, {self.B}, channels), got {tuple(block.shape)}")
        if self.pending is not None:
            raise ValueError("advance() called twice without a step(): the previous block was never written")
        self.pending = block
        self.next_chunk += 1

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, t: torch.Tensor, text_c: torch.Tensor,
             controls: torch.Tensor | None = None, mods: TargetMod | None = None) -> torch.Tensor:
        """One denoising step of target chunk ``next_chunk``; the first after :meth:`advance` is the fused first
        step (it writes the pending block in the same batch, see the class docstring).

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
        pending, self.pending = self.pending, None
        try:
            return self._run(pending, x_t, mods, self.next_chunk - 1, controls)
        except BaseException:
            self.pending = pending  # a failed step leaves the block pending instead of lost
            raise

    @torch.no_grad()
    def write_pending(self) -> None:
        """Write the pending clean block now, in a pass of its own (without a target)."""
        if self.pending is not None:
            self._run(self.pending, None, None, self.next_chunk - 1)
            self.pending = None  # only once written, so a failed write leaves the block pending instead of lost

    def step_with_grad(self, x_t: torch.Tensor, t: torch.Tensor, text_c: torch.Tensor,
                       controls: torch.Tensor | None = None) -> torch.Tensor:
        """A denoising step whose output carries gradients to the model's parameters (ARC-Forcing's exit step,
        Self-Forcing style). A pending block is first written without gradient: the cache holds constants, so
        earlier blocks are detached. Arguments as in :meth:`step`."""
        self.write_pending()
        with torch.enable_grad():
            return self._run(None, x_t, self.model.target_modulation(t, text_c), self.next_chunk - 1, controls)

    # ---- inspection -------------------------------------------------------------------------------------------
    def cached_chunks(self) -> list[int]:
        """Absolute indices of the chunks whose keys/values the cache holds now, oldest first.

        Empty right after an empty :meth:`bootstrap`; a pending block (queued by :meth:`advance`, written by the
        next :meth:`step`) is not included. At most ``W`` entries; chunk ``n`` covers frames ``n*B .. n*B+B-1``.
        """
        return list(range(self._newest - self.n_valid + 1, self._newest + 1))

    def chunk_kv(self, layer: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored keys and values ``(b, H, B, hd)`` of cached ``chunk`` (one of :meth:`cached_chunks`) at ``layer``
        (views of the ring slot)."""
        if chunk not in self.cached_chunks():
            raise KeyError(f"chunk {chunk} is not cached; the cache holds {self.cached_chunks()}")
        s = (chunk % self.W) * self.B
        return self._k[layer][:, :, s : s + self.B], self._v[layer][:, :, s : s + self.B]

    @property
    def k(self) -> list[torch.Tensor]:
        """Per layer, the ring slots' keys ``(b, H, W*B, hd)`` (chunk ``c`` in slot ``c % W``; views)."""
        return [k[:, :, : self.W * self.B] for k in self._k]

    @property
    def v(self) -> list[torch.Tensor]:
        """Per layer, the ring slots' values ``(b, H, W*B, hd)`` (views; see :attr:`k`)."""
        return [v[:, :, : self.W * self.B] for v in self._v]

    # ---- the computation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _clean_modulation(self) -> list[torch.Tensor]:
        """Per layer, the modulation of clean chunks ``(1, 1, 1, 6d)`` (no timestep, no prompt: a constant)."""
        m = self.model
        return [blk.modulation(m.clean_cond.to(self.dtype))[None, None, None] for blk in m.blocks]

    def _plan(self, first: int, n_clean: int, segments: int) -> _Pass:
        """RoPE tables and mask of a pass whose queries are ``n_clean`` (0 or 1) clean chunk ``first`` followed by
        ``segments`` target segments of chunk ``first + n_clean``; cached until the ring changes, the mask
        memoised by the ring's layout relative to ``first`` (so a full window reuses its W masks)."""
        key = (first, n_clean, segments)
        if key not in self._passes:
            B, W, dev = self.B, self.W, self.device
            q_chunk = torch.tensor([first] * n_clean + [first + n_clean] * segments, device=dev)
            q_clean = torch.tensor([True] * n_clean + [False] * segments, device=dev)
            q_seg = torch.arange(n_clean + segments, device=dev)
            # ring slot s holds the chunk c = s (mod W) among the cached ones; an empty slot holds "no chunk"
            held = {c % W: c for c in self.cached_chunks()}
            layout = (tuple(held[s] - first if s in held else None for s in range(W)), n_clean, segments)
            if layout not in self._masks:
                k_chunk = torch.cat([torch.tensor([held.get(s, -(2**40)) for s in range(W)], dtype=torch.long,
                                                  device=dev), q_chunk])
                k_clean = torch.cat([torch.ones(W, dtype=torch.bool, device=dev), q_clean])
                k_seg = torch.cat([torch.full((W,), -1, dtype=torch.long, device=dev), q_seg])
                chunk_mask = block_causal_mask(q_chunk, q_clean, k_chunk, k_clean, W)  # (chunks, W + chunks)
                chunk_mask &= q_clean[:, None] | k_clean[None, :] | (q_seg[:, None] == k_seg[None, :])  # segments
                mask = chunk_mask.repeat_interleave(B, 0).repeat_interleave(B, 1)  # (L, W*B + L)
                self._masks[layout] = None if bool(mask.all()) else \
                    torch.zeros(mask.shape, dtype=self.dtype, device=dev).masked_fill_(~mask, float("-inf"))
            pos = q_chunk.repeat_interleave(B) * B + torch.arange(B, device=dev).repeat(len(q_chunk))
            cos, sin = self.model.rope(pos)
            self._passes[key] = _Pass(cos, sin, self._masks[layout])
        return self._passes[key]

    def _run(self, clean: torch.Tensor | None, x_t: torch.Tensor | None, mods: TargetMod | None, first: int,
             controls: torch.Tensor | None = None) -> torch.Tensor | None:
        """One pass through every layer of ``[clean chunk first (b, B, ch) | target chunk first+1 (r*b, B, ch)]``
        (either may be None) over the ring; writes the clean chunk's keys/values into the ring. Returns the
        target's velocity ``(r*b, B, ch)`` (float32), or None without a target."""
        m, B, b, W = self.model, self.B, self.batch, self.W
        WB = W * B
        if clean is not None and W == 0:  # nothing is ever cached
            clean = None
        n_clean = int(clean is not None)
        r = 0 if x_t is None else x_t.shape[0] // b
        if x_t is not None and x_t.shape[0] != r * b:
            raise ValueError(f"target batch {x_t.shape[0]} must be a multiple of the cache batch {b}")
        if n_clean + r == 0:
            return None
        if self._clean_mod is None:  # used without a bootstrap
            self._clean_mod = self._clean_modulation()
        if (self._k[0].shape[2] - WB) // B < n_clean + r:
            self._alloc(n_clean + r)
        plan = self._plan(first if n_clean else first + 1, n_clean, r)
        parts, layer_mods = [], []
        if n_clean:
            parts.append(m.embed(None, clean.to(self.device), True, None)[:, None])  # (b, 1, B, d)
        if r:
            fold = lambda x: x.reshape(r, b, *x.shape[1:]).transpose(0, 1)  # (r*b, ...) -> (b, r, ...)
            ctrl = None if controls is None else fold(controls.to(self.device))
            parts.append(m.embed(fold(x_t), None, False, ctrl))  # (b, r, B, d)
            tmods, head_mod = mods.folded(b)
        h = parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # (b, n_clean + r, B, d)
        if n_clean and r:
            layer_mods = [torch.cat([cm.expand(b, 1, 1, -1), tm], 1) for cm, tm in zip(self._clean_mod, tmods)]
        else:
            layer_mods = tmods if r else self._clean_mod
        L = (n_clean + r) * B
        grad = torch.is_grad_enabled()

        def keys(layer: int, k: torch.Tensor, v: torch.Tensor):
            if grad:  # fresh tensors: writing into the reused buffers would break the backward pass
                return (torch.cat([self._k[layer][:, :, :WB], k], 2), torch.cat([self._v[layer][:, :, :WB], v], 2))
            kb, vb = self._k[layer], self._v[layer]
            kb[:, :, WB : WB + L] = k
            vb[:, :, WB : WB + L] = v
            return kb[:, :, : WB + L], vb[:, :, : WB + L]

        h = m.run_blocks(h, layer_mods.__getitem__, plan.cos, plan.sin, plan.mask, keys, keys_only=n_clean)
        if n_clean:  # commit: the clean chunk's keys/values move from the scratch region into its ring slot
            s = (first % W) * B
            for kb, vb in zip(self._k, self._v):
                kb[:, :, s : s + B] = kb[:, :, WB : WB + B]
                vb[:, :, s : s + B] = vb[:, :, WB : WB + B]
            self.n_valid = min(self.n_valid + 1, W)
            self.writes += 1
            self._newest = first
            self._passes.clear()
        if not r:
            return None
        v = m.head(h, head_mod)  # (b, r, B, ch): run_blocks left the clean chunk out after its last keys
        return v.transpose(0, 1).reshape(r * b, B, -1)


class EncDecKVCache:
    """The enc-dec mask's cache: context keys/values encoded once, reused by every denoising step of a block.

    Args:
        model: the DiT.
        batch: parallel streams ``b``.

    Attributes:
        k, v: per layer, the context's keys and values ``(b, H, C', hd)`` (empty lists before a bootstrap or for
            an empty context).
        target_start: absolute frame index of the target's first frame (right after the context).
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
        dev = context.device
        cos, sin = m.rope(torch.arange(start_frame, start_frame + n, device=dev))
        mod_in = m.clean_cond[None, None]
        h = m.embed(None, context, True, None)

        def store(layer: int, k: torch.Tensor, v: torch.Tensor):
            self.k.append(k)
            self.v.append(v)
            return k, v

        m.run_blocks(h, lambda layer: m.blocks[layer].modulation(mod_in), cos, sin, None, store, keys_only=n)

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, t: torch.Tensor, text_c: torch.Tensor,
             controls: torch.Tensor | None = None, mods: TargetMod | None = None) -> torch.Tensor:
        """One denoising step of the target ``(r*b, B, ch)`` attending to the encoded context; returns velocity
        (arguments as in ``BlockCausalKVCache.step``)."""
        m = self.model
        rows, n, _ = x_t.shape
        mods = mods or m.target_modulation(t, text_c)
        dev = x_t.device
        cos, sin = m.rope(torch.arange(self.target_start, self.target_start + n, device=dev))
        h = m.embed(x_t, None, False, controls)

        def with_context(layer: int, k: torch.Tensor, v: torch.Tensor):
            return (torch.cat([_repeat_rows(self.k[layer], rows), k], 2),
                    torch.cat([_repeat_rows(self.v[layer], rows), v], 2))

        h = m.run_blocks(h, mods.layers.__getitem__, cos, sin, None, with_context if self.k else None)
        return m.head(h, mods.head)
