"""Streamers: block-wise generation over one DiT, with or without a KV cache.

All streamers share the sampling loop (``lmdm.diffusion.sample``), classifier-free guidance and timing; they
differ only in how a denoising step computes the velocity of the target block:

* :class:`BlockCausalStreamer` — LMDM with the persistent sliding-window cache (the default; DESIGN.md 1).
* :class:`EncDecStreamer` — LMDM with the enc-dec mask: context encoded once per block, then S cheap steps.
* :class:`OutpaintingStreamer` — the baseline: bidirectional attention over context + block at every step,
  context re-noised each step; nothing is cached.
* :class:`UncachedBlockCausalStreamer` — the block-causal model computed without a cache (every step re-runs
  the whole history): the slow reference that :class:`BlockCausalStreamer` must equal.

Devices: a streamer runs on its model's device; the noise comes from a CPU generator (same numbers on every
device) and is moved there, and every tensor it returns (blocks, ``history``, ``context``) is on that device.

Latencies are reported as in the public LMDM code: *bootstrap* (first fill and the whole first block), *fused
first step* (the first step of every later block, which also writes the previous block into the cache) and
*subsequent steps*.
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field

import torch

from lmdm.config import ConfigError
from lmdm.device import module_device, synchronize
from lmdm.diffusion import SAMPLERS, add_noise, cfg_combine, sample
from lmdm.errors import UsageError
from lmdm.model.cache import BlockCausalKVCache, EncDecKVCache
from lmdm.model.dit import DiT
from lmdm.model.layouts import block_causal_stream_tokens, outpainting_tokens

MASKS = ("block_causal", "enc_dec", "outpainting")


@dataclass(frozen=True)
class SamplerConfig:
    """How each block is denoised.

    Attributes:
        steps: denoising steps ``S`` per block.
        sampler: "euler" or "pingpong".
        cfg_scale: classifier-free guidance scale (1 = no guidance; the unconditional pass is skipped).
        seed: seeds the initial noise and ping-pong's fresh noise.
        eta: ping-pong's share of fresh noise each time it re-noises, from 0 to 1 (``lmdm.diffusion``: 1 =
            ping-pong as stable-audio-tools has it, 0 = DDIM, an Euler step on ping-pong's schedule); Euler
            ignores it.
        guide_controls: when a block has controls, the unconditional branch of classifier-free guidance drops them
            as well as the prompt (joint guidance over text and controls, as in multi-condition CFG), so a scale
            above 1 also pushes the block towards its melody, rhythm and dynamics. On the bundled checkpoint this
            is what makes sketches followed: contour correlation 0.26 without it (scale 2) and 0.59 with it
            at scale 4 or 5.5 (12 tuning sketches; ``lmdm.control.evaluate.SKETCH_SAMPLER``). False = guidance over the prompt only.
        cfg_t_min, cfg_t_max: the guidance interval: guidance applies only at denoising steps whose timestep ``t``
            (1 = pure noise) lies in ``[cfg_t_min, cfg_t_max]``; the other steps run the conditional pass alone
            (and cost one pass instead of two). Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval
            Improves Sample and Distribution Quality in Diffusion Models": guidance at the highest noise levels
            pulls samples together and adds little. Default ``[0, 1]``: every step.

    Ping-pong is the default: on the bundled model it keeps notes long and the block seam low, where Euler at the
    same cost plays twice the notes but halves their length and jumps more at block seams (README, "The sampler,
    at equal cost"); ``eta`` between the two trades one for the other (README, "Fresh noise"). On the old raw-mel
    model the deterministic Euler ODE overshot the spectral peaks by about 28 dB, which is why the project started
    with ping-pong.
    """

    steps: int = 8
    sampler: str = "pingpong"
    cfg_scale: float = 2.0
    seed: int = 0
    eta: float = 1.0
    guide_controls: bool = True
    cfg_t_min: float = 0.0
    cfg_t_max: float = 1.0

    def __post_init__(self) -> None:
        """The one place that checks sampler ranges (the CLI, the live engine and the widgets rely on it).

        Raises:
            ConfigError: steps not an integer in [1, 1000], unknown sampler, cfg scale not in [0, 50], seed not an
                integer in [0, 2**63), eta not in [0, 1], or guide_controls not a bool.
        """
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ConfigError(f"steps must be an integer from 1 to 1000, got {self.steps!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, numbers.Real) \
                or not 0 <= self.cfg_scale <= 50:
            raise ConfigError(f"cfg scale must be between 0 and 50, got {self.cfg_scale}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, numbers.Real) or not 0 <= self.eta <= 1:
            raise ConfigError(f"eta must be a number from 0 to 1, got {self.eta!r}")
        for name in ("cfg_t_min", "cfg_t_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
                raise ConfigError(f"{name} must be a timestep from 0 to 1, got {v!r}")
        if self.cfg_t_min > self.cfg_t_max:
            raise ConfigError(f"the guidance interval is empty: cfg_t_min {self.cfg_t_min} > cfg_t_max {self.cfg_t_max}")
        if not isinstance(self.guide_controls, bool):
            raise ConfigError(f"guide_controls must be true or false, got {self.guide_controls!r}")


#: the fields a checkpoint may recommend (``info["sampler"]``): all but the seed, which is the user's
CHECKPOINT_SAMPLER_FIELDS = ("steps", "sampler", "cfg_scale", "eta", "guide_controls", "cfg_t_min", "cfg_t_max")


def checkpoint_sampler(info: dict, **overrides) -> SamplerConfig:
    """The sampler a checkpoint recommends, with ``overrides`` on top.

    A checkpoint's ``info["sampler"]`` (``config.json``) names the sampler it was measured best with: ``lmdm
    train`` writes its config's ``sampler`` there (the bundled ``lmdm-small``: ping-pong, 8 steps, CFG 2, eta 0.5;
    README, "Fresh noise"), ``lmdm arc`` the student's steps without guidance. ``lmdm generate``, ``eval`` and
    ``drift`` and :func:`lmdm.streaming.generate.generate` start from it, so each checkpoint plays as measured
    unless told otherwise.

    Args:
        info: the checkpoint's ``info`` (``Checkpoint.info``); without a ``"sampler"`` entry,
            :class:`SamplerConfig`'s defaults.
        **overrides: ``SamplerConfig`` fields that win over the checkpoint's (a value of None is ignored).

    Returns:
        the :class:`SamplerConfig`.

    Raises:
        ConfigError: the checkpoint's entry is not a mapping of :data:`CHECKPOINT_SAMPLER_FIELDS`, or a value is
            out of range (``SamplerConfig``'s checks).
    """
    stored = info.get("sampler") or {}
    if not isinstance(stored, dict) or set(stored) - set(CHECKPOINT_SAMPLER_FIELDS):
        raise ConfigError(f"a checkpoint's sampler (its info.sampler, a train config's sampler) must map some of "
                          f"{', '.join(CHECKPOINT_SAMPLER_FIELDS)} to values, got {stored!r}")
    return SamplerConfig(**{**stored, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class StreamStats:
    """Timings of a stream in seconds (wall clock on this machine)."""

    bootstrap_s: float = 0.0
    fused_first_step_s: list[float] = field(default_factory=list)
    subsequent_step_s: list[float] = field(default_factory=list)
    block_s: list[float] = field(default_factory=list)

    @staticmethod
    def _mean(x: list[float]) -> float:
        return sum(x) / len(x) if x else float("nan")

    def summary(self) -> dict[str, float]:
        """Mean latencies in milliseconds."""
        return {"bootstrap_ms": 1000 * self.bootstrap_s,
                "fused_first_step_ms": 1000 * self._mean(self.fused_first_step_s),
                "subsequent_step_ms": 1000 * self._mean(self.subsequent_step_s),
                "block_ms": 1000 * self._mean(self.block_s)}


class Streamer:
    """Base class: prompt handling, CFG, the sampling loop, history and timing. Subclasses implement
    :meth:`_prepare_block` and :meth:`_velocity`.

    Conditioning that depends only on the prompt and the weights (text vectors, the unconditional vector, the
    target modulations of every denoising step) is computed once and reused. It is keyed on the model's weights
    (each parameter's in-place version counter and storage), so when they change after the streamer was built
    (ARC post-training steps, a notebook loading other weights) the next block recomputes it, and
    :class:`BlockCausalStreamer` re-encodes its cache. The check reads every parameter's counter once per block:
    20-50 µs for the bundled model's 113 parameters on a 2-core CPU, against ~120 ms per block.

    Args:
        model: the DiT (eval mode).
        sampler: a :class:`SamplerConfig`.
        batch: parallel streams ``b``.
        keep_history: keep every generated block (``history``); False keeps only the last ``W`` blocks the
            context needs, so an hours-long live session does not grow in memory.
    """

    def __init__(self, model: DiT, sampler: SamplerConfig = SamplerConfig(), batch: int = 1,
                 keep_history: bool = True):
        self.model = model
        self.sampler = sampler
        self.batch = batch
        self.keep_history = keep_history
        cfg = model.cfg
        self.device = module_device(model)
        self.B, self.W, self.ch = cfg.block_frames, cfg.window_chunks, cfg.latent_channels
        self.generator = torch.Generator("cpu").manual_seed(sampler.seed)
        self.stats = StreamStats()
        self.block_index = 0
        self._blocks: list[torch.Tensor] = []
        self._dropped_frames = 0
        # (module, name) of every parameter: the weights' key reads them without walking the module tree
        self._param_slots = [(mod._parameters, name) for mod in model.modules() for name, p in mod._parameters.items()
                             if p is not None]
        #: ``(block (b, B, ch), context (b, <=C, ch)) -> block`` applied to every finished block before the stream
        #: keeps and caches it (never to an ARC rollout's ``exit_step`` block); e.g. ``lmdm.streaming.level_guard``
        self.block_filter = None
        self._cond_weights: tuple | None = None  # the weights' key the conditioning below was computed with
        self._stream_weights: tuple | None = None  # the weights' key the stream's cached context was computed with
        self.set_prompt(torch.zeros(batch, cfg.text_dim, device=self.device),
                        torch.zeros(batch, dtype=torch.bool, device=self.device))

    # ---- controls of the stream -------------------------------------------------------------------------------
    @torch.no_grad()
    def set_prompt(self, embedding: torch.Tensor, has_text: torch.Tensor) -> None:
        """Set the prompt (``(b, text_dim)`` embeddings, ``(b,)`` has_text); it applies from the next block."""
        self._prompt = (embedding.detach().to(self.device, copy=True), has_text.to(self.device, copy=True))
        self._has_text = self._prompt[1]
        self._condition()

    @torch.no_grad()
    def _condition(self) -> None:
        """(Re)compute the prompt's and the unconditional text vectors with the current weights, and forget the
        target modulations computed with earlier ones."""
        self._cond_weights = self._weights_key()
        self._text_c = self.model.text_cond(*self._prompt)
        self._null_c = self.model.text_cond(torch.zeros(self.batch, self.model.cfg.text_dim, device=self.device),
                                            torch.zeros(self.batch, dtype=torch.bool, device=self.device))
        self._mods: dict = {}  # (step index, guided, t) -> TargetMod, valid for this prompt and these weights

    def _weights_key(self) -> tuple:
        """Changes whenever a parameter is modified in place (optimizer step, ``load_state_dict``, ``copy_``) or
        replaced (``load_state_dict(assign=True)``, ``.data =``)."""
        params = [params[name] for params, name in self._param_slots]
        # inference tensors (a model loaded under torch.inference_mode) keep no version counter: storage only
        return tuple([(0 if p.is_inference() else p._version, p.data_ptr()) for p in params])

    def _sync_weights(self) -> bool:
        """Bring the conditioning up to date with the weights; True if the stream's cached context was computed
        with other weights (the caller then re-encodes it or restarts the stream)."""
        key = self._weights_key()
        if key != self._cond_weights:
            self._condition()
        stale = self._stream_weights is not None and key != self._stream_weights
        self._stream_weights = key
        return stale

    def reset(self, context: torch.Tensor | None = None) -> None:
        """Start a new stream, optionally continuing ``context`` ``(b, m*B, ch)`` clean latents."""
        with torch.inference_mode():
            self._reset(context)

    def _reset(self, context: torch.Tensor | None) -> None:
        self._sync_weights()
        context = None if context is None else context.to(self.device)
        self.generator.manual_seed(self.sampler.seed)
        self.stats = StreamStats()
        self.block_index = 0
        self._blocks = [] if context is None else [context.to(self.device, copy=True)]
        self._dropped_frames = 0
        t = time.perf_counter()
        self._bootstrap(context)
        synchronize(self.device)
        self.stats.bootstrap_s = time.perf_counter() - t

    def _bootstrap(self, context: torch.Tensor | None) -> None:
        pass

    # ---- generation -------------------------------------------------------------------------------------------
    def next_block(self, controls: torch.Tensor | None = None, on_step=None,
                   exit_step: int | None = None) -> torch.Tensor:
        """Generate the next block, under ``torch.inference_mode`` (no autograd bookkeeping, no version counters);
        the returned block is an ordinary tensor (a copy made outside that mode), free to use in training code.

        Args:
            controls: ``(b, B, control_dim)`` control channels for this block, or None.
            on_step: called with the step index after every denoising step; a live engine raises from it to
                abandon a block when asked to stop (the stream must then be ``reset`` before further use).
            exit_step: stop at denoising step ``k`` in ``[1, S]`` and keep its x0 prediction as the block
                (``lmdm.diffusion.sample``): what an ARC-Forcing rollout that exits at ``k`` streams
                (``lmdm.train.arc.rollout``); None (default) runs all ``S`` steps, the block of ``exit_step=S``.

        Returns:
            ``(b, B, ch)`` clean latent frames.
        """
        with torch.inference_mode():
            x0 = self._next_block(controls, on_step, exit_step)
        return x0.clone()

    def _next_block(self, controls, on_step, exit_step) -> torch.Tensor:
        t_block = time.perf_counter()
        controls = None if controls is None else controls.to(self.device)
        if self._sync_weights():
            self._weights_changed()
        self._prepare_block()  # per-block context work (enc-dec encodes its context here): part of step 1's latency
        prepare_s = time.perf_counter() - t_block
        steer_controls = self.sampler.guide_controls and controls is not None
        guided_block = self.sampler.cfg_scale != 1.0 and (bool(self._has_text.any()) or steer_controls)
        both_c = torch.cat([self._text_c, self._null_c]) if guided_block else self._text_c
        if controls is None or not guided_block:
            both_ctrl = controls
        else:  # the unconditional branch drops the controls too, so guidance also pushes towards following them
            both_ctrl = torch.cat([controls, torch.zeros_like(controls) if steer_controls else controls])
        lo, hi = self.sampler.cfg_t_min, self.sampler.cfg_t_max
        step_times: list[float] = []

        def velocity(x: torch.Tensor, t: float, i: int) -> torch.Tensor:
            t0 = time.perf_counter()
            guided = guided_block and lo <= t <= hi  # the guidance interval
            xx = torch.cat([x, x]) if guided else x
            text_c, ctrl = (both_c, both_ctrl) if guided else (self._text_c, controls)
            tt = torch.full((xx.shape[0],), t, device=self.device)
            key = (i, guided, t)
            if key not in self._mods:  # the schedule repeats every block: condition once per prompt and step
                self._mods[key] = self.model.target_modulation(tt, text_c)
            v = self._velocity(xx, tt, text_c, ctrl, self._mods[key])
            if guided:
                v = cfg_combine(v[: self.batch], v[self.batch :], self.sampler.cfg_scale)
            synchronize(self.device)  # on a GPU the step is only done when its queued kernels are
            step_times.append(time.perf_counter() - t0)
            return v

        noise = torch.randn(self.batch, self.B, self.ch, generator=self.generator,
                            device=self.generator.device).to(self.device)
        x0 = sample(velocity, noise, self.sampler.sampler, self.sampler.steps, self.generator, on_step,
                    exit_step, float(self.sampler.eta))
        if exit_step is not None:  # the sampler computes an exit step with gradient enabled: keep no graph
            x0 = x0.detach()
        elif self.block_filter is not None:
            x0 = self.block_filter(x0, self.context())
        self._finish_block(x0)
        self._blocks.append(x0)
        if not self.keep_history and len(self._blocks) > self.W + 1:
            self._dropped_frames += self._blocks.pop(0).shape[1]
        elapsed = time.perf_counter() - t_block
        if self.block_index == 0:
            self.stats.bootstrap_s += elapsed
        else:
            self.stats.fused_first_step_s.append(prepare_s + step_times[0])
            self.stats.subsequent_step_s.extend(step_times[1:])
        self.stats.block_s.append(elapsed)
        self.block_index += 1
        return x0

    def _weights_changed(self) -> None:
        """Called before a block when the weights changed mid-stream (the conditioning is already recomputed)."""

    def _prepare_block(self) -> None:
        pass

    def _velocity(self, x_t, t, text_c, controls, mods) -> torch.Tensor:
        """Velocity ``(rows, B, ch)`` of the target; ``mods`` is ``DiT.target_modulation(t, text_c)``."""
        raise NotImplementedError

    def _finish_block(self, x0: torch.Tensor) -> None:
        pass

    @property
    def history(self) -> torch.Tensor:
        """Every kept frame of the stream ``(b, frames, ch)`` (with ``keep_history=False``, only the last blocks)."""
        return torch.cat(self._blocks, 1) if self._blocks else torch.zeros(self.batch, 0, self.ch, device=self.device)

    @property
    def frames(self) -> int:
        """Frames generated (and given as context) since ``reset``, kept or not."""
        return self._dropped_frames + sum(b.shape[1] for b in self._blocks)

    def context(self) -> torch.Tensor:
        """The last ``C = W * B`` frames ``(b, <=C, ch)``."""
        C = self.W * self.B
        tail, n = [], 0
        for blk in reversed(self._blocks):
            if n >= C:
                break
            tail.insert(0, blk)
            n += blk.shape[1]
        ctx = torch.cat(tail, 1) if tail else torch.zeros(self.batch, 0, self.ch, device=self.device)
        return ctx[:, max(0, ctx.shape[1] - C) :]


class BlockCausalStreamer(Streamer):
    """LMDM with the block-causal mask and the persistent KV cache (``BlockCausalKVCache``)."""

    def __init__(self, model: DiT, sampler: SamplerConfig = SamplerConfig(), batch: int = 1,
                 keep_history: bool = True):
        super().__init__(model, sampler, batch, keep_history)
        self.cache = BlockCausalKVCache(model, batch)

    def _bootstrap(self, context):
        if context is not None and context.shape[1] % self.B:
            raise UsageError(f"context must be a whole number of {self.B}-frame blocks, got {context.shape[1]} frames")
        self.cache.bootstrap(context)

    def _weights_changed(self):
        """Re-encode the kept stream (the context given to ``reset`` and every block since) with the new weights,
        as a fresh streamer continuing it would. Exact with ``keep_history=True``; with ``keep_history=False`` only
        the last blocks are kept, so the chunks before them no longer contribute."""
        self.cache.bootstrap(self.history, start_chunk=self._dropped_frames // self.B)

    def _velocity(self, x_t, t, text_c, controls, mods):
        return self.cache.step(x_t, t, text_c, controls, mods)

    def _finish_block(self, x0):
        self.cache.advance(x0)


class EncDecStreamer(Streamer):
    """LMDM with the enc-dec mask: the context cache is rebuilt (one pass over C frames) for every block."""

    def __init__(self, model: DiT, sampler: SamplerConfig = SamplerConfig(), batch: int = 1,
                 keep_history: bool = True):
        super().__init__(model, sampler, batch, keep_history)
        self.cache = EncDecKVCache(model, batch)

    def _prepare_block(self):
        ctx = self.context()
        self.cache.bootstrap(ctx, start_frame=self.frames - ctx.shape[1])

    def _velocity(self, x_t, t, text_c, controls, mods):
        return self.cache.step(x_t, t, text_c, controls, mods)


class OutpaintingStreamer(Streamer):
    """The baseline: every step runs bidirectional attention over ``[context | block]``, context re-noised."""

    def _velocity(self, x_t, t, text_c, controls, mods):
        ctx = self.context()
        rows = x_t.shape[0]
        # one draw, shared by the guidance rows
        eps = torch.randn(ctx.shape, generator=self.generator, device=self.generator.device).to(self.device)
        ctx_t = add_noise(ctx.repeat(rows // self.batch, 1, 1), eps.repeat(rows // self.batch, 1, 1), t)
        ctx = ctx.repeat(rows // self.batch, 1, 1)
        start = self.frames - ctx.shape[1]
        tok = outpainting_tokens(ctx, ctx_t, x_t, t, controls, start_frame=start)
        return self.model.forward_cond(tok, text_c)[:, -self.B :]


class UncachedBlockCausalStreamer(Streamer):
    """Block-causal LMDM without a cache: each step re-runs the masked forward over the whole history."""

    def _velocity(self, x_t, t, text_c, controls, mods):
        rows = x_t.shape[0]
        hist = self.history.repeat(rows // self.batch, 1, 1)
        tok = block_causal_stream_tokens(hist, x_t, t, self.W, controls)
        return self.model.forward_cond(tok, text_c)[:, -self.B :]


def make_streamer(model: DiT, mask: str = "block_causal", sampler: SamplerConfig = SamplerConfig(),
                  batch: int = 1) -> Streamer:
    """A streamer by mask name: "block_causal" (default), "enc_dec" or "outpainting".

    Raises:
        UsageError: unknown mask name.
    """
    kinds = {"block_causal": BlockCausalStreamer, "enc_dec": EncDecStreamer, "outpainting": OutpaintingStreamer}
    if mask not in kinds:
        raise UsageError(f"unknown mask {mask!r}; choose one of {', '.join(kinds)}")
    return kinds[mask](model, sampler, batch)


def block_differences(a: Streamer, b: Streamer, n_blocks: int) -> list[float]:
    """Stream ``n_blocks`` from two streamers (same model, prompt and seed) and return the largest absolute
    difference of each block's output: the cached-equals-uncached check of notebook 02 and the tests."""
    a.reset()
    b.reset()
    return [float((a.next_block() - b.next_block()).abs().max()) for _ in range(n_blocks)]
