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

import torch

from lmdm.errors import UsageError
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

    Keys and values are stored in the model's dtype, on the model's device (every tensor the cache creates is
    on that device).

    Attributes (read them; the verbs change them):
        next_chunk: absolute index of the chunk the next :meth:`step` generates.
        n_valid: how many of the ``W`` slots hold a chunk (0 right after an empty bootstrap).
        pending: the finished clean block ``(b, B, ch)`` queued by :meth:`advance` (absolute chunk
            ``next_chunk - 1``) and not yet written, or None.
        writes: chunks written since the last :meth:`bootstrap` (prefilled context chunks included).
        k, v: per layer, the stored keys and values ``(b, H, W * B, hd)``, oldest chunk first; the valid
            chunks are the last ``n_valid`` (see :meth:`cached_chunks`).
    """

    def __init__(self, model: DiT, batch: int = 1):
        cfg = model.cfg
        param = next(model.parameters())
        dtype, self.device = param.dtype, param.device
        self.model = model
        self.B, self.W = cfg.block_frames, cfg.window_chunks
        shape = (batch, cfg.n_heads, self.W * self.B, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(cfg.n_layers)]
        self.batch = batch
        self.n_valid = 0
        self.next_chunk = 0
        self.pending: torch.Tensor | None = None
        self.writes = 0
        self._newest = -1  # absolute index of the newest written chunk
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
            UsageError: the context's shape does not match the cache.
        """
        if context is not None and (context.dim() != 3 or context.shape[0] != self.batch
                                    or context.shape[1] % self.B):
            raise UsageError(f"context must be (batch={self.batch}, m*{self.B}, channels), got {tuple(context.shape)}")
        for t in self.k + self.v:
            t.zero_()
        self.n_valid, self.pending, self.writes = 0, None, 0
        self._buffers.clear()
        self._layer_version = [v + 1 for v in self._layer_version]
        self.next_chunk = start_chunk
        self._newest = start_chunk - 1
        if context is None or context.shape[1] == 0:
            return
        for i in range(context.shape[1] // self.B):
            self._write(context[:, i * self.B : (i + 1) * self.B], self.next_chunk)
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
        step (it writes the pending block first, in the same call).

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
        self.write_pending()
        return self._target(x_t, mods, controls)

    @torch.no_grad()
    def write_pending(self) -> None:
        """Write the pending clean block now (what the fused first step does before the target's pass)."""
        if self.pending is not None:
            self._write(self.pending, self.next_chunk - 1)
            self.pending = None  # only once written, so a failed write leaves the block pending instead of lost

    def step_with_grad(self, x_t: torch.Tensor, t: torch.Tensor, text_c: torch.Tensor,
                       controls: torch.Tensor | None = None) -> torch.Tensor:
        """A denoising step whose output carries gradients to the model's parameters (ARC-Forcing's exit step,
        Self-Forcing style). A pending block is first written without gradient: the cache holds constants, so
        earlier blocks are detached. Arguments as in :meth:`step`."""
        self.write_pending()
        with torch.enable_grad():
            return self._target(x_t, self.model.target_modulation(t, text_c), controls)

    # ---- inspection -------------------------------------------------------------------------------------------
    def cached_chunks(self) -> list[int]:
        """Absolute indices of the chunks whose keys/values the cache holds now, oldest first (slot order).

        Empty right after an empty :meth:`bootstrap`; a pending block (queued by :meth:`advance`, written by the
        next :meth:`step`) is not included. At most ``W`` entries; chunk ``n`` covers frames ``n*B .. n*B+B-1``.
        """
        return list(range(self._newest - self.n_valid + 1, self._newest + 1))

    # ---- the computation --------------------------------------------------------------------------------------
    def _attention_buffers(self, layer: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, H, W*B + B, hd)`` key and value buffers of a layer with the current cache in front."""
        if rows not in self._buffers:
            shape = (rows, *self.k[0].shape[1:2], self.W * self.B + self.B, self.k[0].shape[-1])
            n = len(self.k)
            like = dict(dtype=self.k[0].dtype, device=self.device)
            self._buffers[rows] = ([torch.zeros(shape, **like) for _ in range(n)],
                                   [torch.zeros(shape, **like) for _ in range(n)], [-1] * n)
        kb, vb, version = self._buffers[rows]
        if version[layer] != self._layer_version[layer]:
            WB = self.W * self.B
            kb[layer][:, :, :WB] = _repeat_rows(self.k[layer], rows)
            vb[layer][:, :, :WB] = _repeat_rows(self.v[layer], rows)
            version[layer] = self._layer_version[layer]
        return kb[layer], vb[layer]

    def _mask(self) -> torch.Tensor:
        """``(B, W*B + B)`` bool mask of a chunk's queries over ``[cache slots | own chunk]``: the valid slots
        (right-aligned, newest last) and the chunk itself."""
        slots = torch.arange(self.W * self.B, device=self.device) // self.B
        own = torch.ones(self.B, dtype=torch.bool, device=self.device)
        return torch.cat([slots >= self.W - self.n_valid, own])[None].expand(self.B, -1)

    def _write(self, clean: torch.Tensor, chunk: int) -> None:
        """Run clean chunk ``chunk`` ``(b, B, ch)`` through every layer (attending to the cache and itself), write
        its keys/values and evict the oldest chunk (fixed shape: a shift by one chunk)."""
        if self.W == 0:
            return
        m, B, dtype, dev = self.model, self.B, self.k[0].dtype, self.device
        clean = clean.to(dev)
        cos, sin = m.rope(torch.arange(chunk * B, (chunk + 1) * B, device=dev))
        c_clean = m.clean_cond.to(dtype)[None, None]
        h = m.embed(torch.zeros_like(clean), clean.to(dtype), torch.ones(B, dtype=torch.bool, device=dev), None)

        def attend_and_store(layer: int, k: torch.Tensor, v: torch.Tensor):
            keys, values = torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)
            self.k[layer] = torch.cat([self.k[layer][:, :, B:], k.detach().to(dtype)], 2)
            self.v[layer] = torch.cat([self.v[layer][:, :, B:], v.detach().to(dtype)], 2)
            self._layer_version[layer] += 1
            return keys, values

        m.run_blocks(h, lambda layer: m.blocks[layer].modulation(c_clean), cos, sin, self._mask(), attend_and_store)
        self.n_valid = min(self.n_valid + 1, self.W)
        self.writes += 1
        self._newest = chunk

    def _target(self, x_t: torch.Tensor, mods: TargetMod, controls: torch.Tensor | None) -> torch.Tensor:
        """Velocity ``(rows, B, ch)`` of the target chunk ``next_chunk`` attending to ``[cache | itself]``."""
        m, B, rows, dev = self.model, self.B, x_t.shape[0], self.device
        cos, sin = m.rope(torch.arange(self.next_chunk * B, (self.next_chunk + 1) * B, device=dev))
        h = m.embed(x_t, torch.zeros_like(x_t), torch.zeros(B, dtype=torch.bool, device=dev), controls)
        WB = self.W * B
        if torch.is_grad_enabled():  # fresh tensors: the reused buffers would break the backward pass
            def keys(layer: int, k: torch.Tensor, v: torch.Tensor):
                return (torch.cat([_repeat_rows(self.k[layer], rows), k], 2),
                        torch.cat([_repeat_rows(self.v[layer], rows), v], 2))
        else:
            def keys(layer: int, k: torch.Tensor, v: torch.Tensor):
                kb, vb = self._attention_buffers(layer, rows)
                kb[:, :, WB:] = k
                vb[:, :, WB:] = v
                return kb, vb
        h = m.run_blocks(h, mods.layers.__getitem__, cos, sin, self._mask(), keys)
        return m.head(h, mods.head)


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
        h = m.embed(torch.zeros_like(context), context, torch.ones(n, dtype=torch.bool, device=dev), None)

        def store(layer: int, k: torch.Tensor, v: torch.Tensor):
            self.k.append(k)
            self.v.append(v)
            return k, v

        m.run_blocks(h, lambda layer: m.blocks[layer].modulation(mod_in), cos, sin, None, store)

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
        h = m.embed(x_t, torch.zeros_like(x_t), torch.zeros(n, dtype=torch.bool, device=dev), controls)

        def with_context(layer: int, k: torch.Tensor, v: torch.Tensor):
            return (torch.cat([_repeat_rows(self.k[layer], rows), k], 2),
                    torch.cat([_repeat_rows(self.v[layer], rows), v], 2))

        h = m.run_blocks(h, mods.layers.__getitem__, cos, sin, None, with_context if self.k else None)
        return m.head(h, mods.head)
