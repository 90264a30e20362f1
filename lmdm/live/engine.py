"""The live engine: one generation session that takes audio chunks in and gives audio chunks out.

Used by ``lmdm jam`` (driven offline, chunk by chunk as if live) and by the microphone widget (real time, on a
background thread). Modes:

* ``"generate"`` — text to music, paced by the wall clock in real time;
* ``"jam"`` — the **generative delay** (LMDM, arXiv 2605.22717, section 5; DESIGN.md section 5): control features
  of the input (pitch, voicing, onsets, loudness; ``lmdm.control.features``) condition the output, delayed by a fixed
  *latency horizon* of one block plus a compute margin. The output at time ``t`` answers what the musician played
  at ``t - delay``, re-rendered in the prompted timbre;
* ``"sketch"`` — controls from a drawn sketch (``set_controls``).

Timing model (real time and simulated alike). Output sample ``s`` plays at ``t0 + s / sr``, where ``t0`` is when
the first input sample arrived (jam) or, in real time, when the first block was ready (generate and sketch:
playback cannot start earlier; simulated: the session start). Block ``n`` needs input up to sample
``(n + 1) * B * spf - delay``; its audio (which begins ``decoder.latency_samples`` before the seam: the streaming
decoder's lookahead frames and the crossfade) is due when it starts playing. A block finished after that is an
**underrun**: counted (from block 1 on: block 0 starts the stream, so a late block 0 only shifts or cuts the
start of the answer; its lateness stays in the timeline), never waited for, and the output stays contiguous (no
sample is dropped or repeated). **Latency** is the time from hearing the last input sample a block depends on to
that block being available; the answer is *heard* ``delay`` seconds after the input.

Bad input never stops the engine: :meth:`LiveEngine.push_input` repairs what it can with the one audio sanitiser
(``lmdm.audio.sanitize``: NaN/inf, clipping, stereo, integer PCM, other sample rates via a stateful soxr stream,
chunks of any size), counts the repairs, and raises a clear ``InputError`` for what it cannot (non-numeric data,
chunks over ``max_chunk_seconds``), leaving the session running.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from lmdm.audio.decoder import StreamingDecoder
from lmdm.audio.sanitize import AudioError, StreamSanitizer
from lmdm.checkpoint import Checkpoint
from lmdm.config import ConfigError
from lmdm.control.features import GROUPS, control_input, features_from_audio
from lmdm.errors import LmdmError
from lmdm.live.ringbuffer import RingBuffer
from lmdm.model.precision import PRECISIONS, with_precision
from lmdm.streaming.streamer import BlockCausalStreamer, SamplerConfig, Streamer
from lmdm.streaming.threads import run_queue_wait
from lmdm.text import encode_prompts

MODES = ("generate", "jam", "sketch")
#: The engine's denoising defaults: few steps and no guidance keep jam latency low.
ENGINE_SAMPLER = SamplerConfig(steps=4, sampler="pingpong", cfg_scale=1.0, seed=0)


class EngineBusy(LmdmError, RuntimeError):
    """A session was started while the previous one is still stopping; try again in a moment."""


class InputError(AudioError):
    """An input chunk the engine refused (the session keeps running); the message says what is accepted.

    An :class:`lmdm.audio.sanitize.AudioError`, hence an ``LmdmError`` and a ``ValueError``."""


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class EngineConfig:
    """Settings of a live session.

    Attributes:
        mode: "generate", "jam" or "sketch".
        prompt: text prompt ("" = unconditional); changeable at any time with ``set_prompt``.
        sampler: denoising per block, a :class:`lmdm.streaming.streamer.SamplerConfig` (its ranges apply); the
            default (:data:`ENGINE_SAMPLER`: 4 ping-pong steps, no guidance) keeps jam latency low. Its seed also
            seeds the Griffin-Lim phases.
        margin_s: the input delay is one block plus this; a jam block's compute budget is this less what the decoder
            holds back (``decoder_lookahead`` frames and the crossfade: 68 ms by default), so a margin below that
            makes every answering block late.
        crossfade_s: seam crossfade length (held back until the next block, with the decoder's lookahead).
        gl_iters: Griffin-Lim iterations per block (8 from the gradient phase reconstruct as closely as the 16 from
            random phase used before: ``scripts/gl_convergence.py``).
        decoder_lookahead: mel frames (16 ms each) before every block boundary that the streaming decoder leaves to
            the next block's decode (``lmdm.audio.decoder``): 3 frames + the 20 ms crossfade hold back 68 ms of each
            block, which the compute margin pays for; 0 puts the crossfade at the boundary (spectral block seams).
        tracker: pitch tracker for jam input ("yin": fast, "pyin": accurate).
        feature_context_s: input audio before a block's window given to the pitch tracker.
        input_seconds: input ring buffer capacity.
        max_chunk_seconds: larger input chunks are refused.
        lookahead_blocks: in real-time generate mode, blocks generated ahead of playback.
        precision: the model's matrix multiplications (``lmdm.model.precision``): "auto" (bfloat16 where the
            device has it natively), "float32" or "bfloat16". A bfloat16 engine streams a copy of the model made
            when the engine is built (later changes to the checkpoint's weights are not seen; float32 follows them).
        level_guard: stream through a level guard (``lmdm.streaming.level_guard.checkpoint_guard``: a block louder
            than the training data's loudest 0.4 s, or with a 16 ms frame above its ``FRAME_QUANTILE``, is turned
            down before it is cached; the checkpoint must store its ``level_ceiling``); off by default.
    """

    mode: str = "jam"
    prompt: str = ""
    sampler: SamplerConfig = ENGINE_SAMPLER
    # a live 4-step jam block takes ~0.07 s on a quiet 2-core machine, up to ~0.3 s beside a busy process and a
    # browser (README, "The live path"); 0.1 s left most live blocks late
    margin_s: float = 0.33
    crossfade_s: float = 0.02
    gl_iters: int = 8
    decoder_lookahead: int = 3
    tracker: str = "yin"
    feature_context_s: float = 0.25
    input_seconds: float = 30.0
    max_chunk_seconds: float = 60.0
    lookahead_blocks: int = 1
    precision: str = "auto"
    level_guard: bool = False

    def __post_init__(self) -> None:
        """Raises ConfigError: an unknown mode or tracker, a sampler that is not a SamplerConfig, a prompt that
        is not text, or a time or size out of range."""
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.tracker not in ("yin", "pyin"):
            raise ConfigError(f"unknown pitch tracker {self.tracker!r}; choose 'yin' or 'pyin'")
        if not isinstance(self.sampler, SamplerConfig):
            raise ConfigError(f"sampler must be a SamplerConfig (steps, sampler, cfg_scale, seed), got "
                              f"{type(self.sampler).__name__}")
        if not isinstance(self.prompt, str):
            raise ConfigError(f"prompt must be text, got {type(self.prompt).__name__}")
        if not isinstance(self.level_guard, bool):
            raise ConfigError(f"level_guard must be True or False, got {self.level_guard!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        numbers = ("margin_s", "crossfade_s", "gl_iters", "feature_context_s", "input_seconds", "max_chunk_seconds",
                   "lookahead_blocks", "decoder_lookahead")
        wrong = [k for k in numbers if isinstance(getattr(self, k), bool)
                 or not isinstance(getattr(self, k), (int, float)) or not math.isfinite(getattr(self, k))]
        if wrong:
            raise ConfigError(f"invalid engine settings: {', '.join(f'{k}={getattr(self, k)!r}' for k in wrong)} "
                              "(finite numbers expected)")
        checks = {"margin_s": self.margin_s >= 0, "crossfade_s": self.crossfade_s >= 0,
                  "feature_context_s": self.feature_context_s >= 0, "input_seconds": self.input_seconds > 0,
                  "max_chunk_seconds": self.max_chunk_seconds > 0, "gl_iters": self.gl_iters >= 1,
                  "lookahead_blocks": self.lookahead_blocks >= 0, "decoder_lookahead": self.decoder_lookahead >= 0}
        checks.update({k: checks[k] and isinstance(getattr(self, k), int)
                       for k in ("gl_iters", "lookahead_blocks", "decoder_lookahead")})
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid engine settings: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} "
                              "(times and sizes must be positive; gl_iters >= 1, lookahead_blocks >= 0 and "
                              "decoder_lookahead >= 0 whole numbers)")


@dataclass
class EngineStats:
    """Counters and timings of a session (read them at any time with ``LiveEngine.stats()``).

    ``timeline`` holds one dict per block: ``block``; ``input_heard_s``, ``generated_s`` and ``plays_s`` (seconds
    from the session's clock origin: the input it needed arrived, it was ready, it starts playing); ``late_s``;
    ``compute_s`` (wall time of the block), ``cpu_s`` (CPU time the generating thread spent on it) and
    ``run_queue_s`` (time it was ready to run but waited for a core, from Linux's ``/proc/thread-self/schedstat``;
    NaN elsewhere): wall time far above CPU time is waiting, for a core when ``run_queue_s`` accounts for it,
    otherwise for a lock (the GIL); ``prompt``.
    """

    blocks: int = 0
    underruns: int = 0
    compute_s: float = 0.0
    audio_s: float = 0.0
    latency_s: list[float] = field(default_factory=list)
    late_s: list[float] = field(default_factory=list)
    input_s: float = 0.0
    repairs: collections.Counter = field(default_factory=collections.Counter)
    rejected: int = 0
    last_error: str | None = None
    delay_s: float = 0.0
    timeline: list[dict] = field(default_factory=list)

    @property
    def rtf(self) -> float:
        """Compute time / generated audio time."""
        return self.compute_s / self.audio_s if self.audio_s else float("nan")

    def summary(self) -> dict:
        """JSON-ready headline numbers: blocks, underruns, RTF, latency (ms), delay (ms), input repairs."""
        lat = self.latency_s
        return {"blocks": self.blocks, "underruns": self.underruns, "rtf": self.rtf,
                "latency_ms_mean": 1000 * float(np.mean(lat)) if lat else float("nan"),
                "latency_ms_max": 1000 * float(np.max(lat)) if lat else float("nan"),
                "delay_ms": 1000 * self.delay_s, "input_s": self.input_s, "repairs": dict(self.repairs),
                "rejected": self.rejected, "last_error": self.last_error}


class LiveEngine:
    """A live generation session (see the module docstring).

    Args:
        ckpt: the loaded checkpoint.
        cfg: session settings.
        streamer: a streamer to use instead of the block-causal LMDM one (tests pass a slow stub).
        realtime: pace by the wall clock (True) or simulate the clock from measured compute times (False, used
            by ``lmdm jam`` and tests; the audio is the same either way).
        on_block: called after each block, on the generation thread, with ``(block index, audio (samples,) float32
            as queued for output, input audio (samples,) of the block's input window or None outside jam mode)``;
            the live view (``lmdm.live.view``) hangs here. What it raises is kept in ``stats().last_error`` and
            never stops the stream.

    Attributes:
        on_thread_start: called with no arguments first thing on each session's generation thread (:meth:`start`),
            e.g. to set that thread's scheduling (the widgets' worker asks for real-time priority there); what it
            raises is kept in ``stats().last_error`` and the session goes on.
        prompt_text: the prompt of the latest generated block (each ``stats().timeline`` entry records the prompt
            its block was generated with, so a prompt change can be traced to the block it applied from).

    Raises:
        ConfigError: the decoder's lookahead and crossfade would hold back a whole block of the checkpoint.
        UsageError: ``cfg.level_guard`` with a checkpoint that stores no ``level_ceiling``.
    """

    def __init__(self, ckpt: Checkpoint, cfg: EngineConfig = EngineConfig(), streamer: Streamer | None = None,
                 realtime: bool = False, on_block: Callable[[int, np.ndarray, np.ndarray | None], None] | None = None):
        self.ckpt, self.cfg, self.realtime, self.on_block = ckpt, cfg, realtime, on_block
        self.on_thread_start: Callable[[], None] | None = None
        self.codec = c = ckpt.codec
        self.sr, self.spf = c.sample_rate, c.samples_per_frame
        self.B = ckpt.model.cfg.block_frames
        self.block_samples = self.B * self.spf
        self.block_s = self.block_samples / self.sr
        self.xf = int(round(cfg.crossfade_s * self.sr))
        self.delay = self.block_samples + int(round(cfg.margin_s * self.sr))
        self.streamer = streamer or BlockCausalStreamer(with_precision(ckpt.model, cfg.precision), cfg.sampler,
                                                        keep_history=False)
        #: the level guard of ``cfg.level_guard`` (its ``summary()`` says how often it acted), else None
        self.level_guard = None
        if cfg.level_guard:
            from lmdm.streaming.level_guard import checkpoint_guard

            self.level_guard = self.streamer.block_filter = checkpoint_guard(ckpt)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._input_lock = threading.Lock()  # one input chunk at a time through the stateful sanitiser
        # a prompt waiting to be applied at the next block: (text, (embedding, has_text))
        self._prompt: tuple[str, tuple[torch.Tensor, torch.Tensor]] | None = (cfg.prompt, encode_prompts(cfg.prompt))
        self.prompt_text = cfg.prompt  # the prompt of the latest block
        self._controls: tuple[np.ndarray, np.ndarray] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.computing = threading.Event()  # set while a block is being generated (seconds_to_next_block)
        self._reset_stream()
        if self.decoder.latency_samples >= self.block_samples:
            raise ConfigError(f"decoder_lookahead ({cfg.decoder_lookahead} frames) plus crossfade_s "
                              f"({cfg.crossfade_s} s) hold back {self.decoder.latency_samples} samples, not less "
                              f"than a block ({self.block_samples}); lower either")

    # ---- session state ----------------------------------------------------------------------------------------
    def _reset_stream(self) -> None:
        """A fresh session: stream, decoder, clock, input buffer, output queue and statistics (prompt and sketch
        controls are kept)."""
        with self._lock:
            self.streamer.reset()
            if self.level_guard is not None:
                self.level_guard.reset()
            overlap = max(8, self.cfg.decoder_lookahead - (-self.xf // self.codec.cfg.hop) + 1)
            self.decoder = StreamingDecoder(self.codec, overlap_mel_frames=overlap, crossfade_s=self.xf / self.sr,
                                            seed=self.cfg.sampler.seed, gl_iters=self.cfg.gl_iters,
                                            lookahead_mel_frames=self.cfg.decoder_lookahead)
            self._input = RingBuffer(int(self.cfg.input_seconds * self.sr))
            self._sanitizer = StreamSanitizer(self.sr, max_seconds=self.cfg.max_chunk_seconds)
            self._out: collections.deque[np.ndarray] = collections.deque()
            self._arrivals: collections.deque[tuple[int, float]] = collections.deque(maxlen=4096)
            self.block_index = 0
            self.t0: float | None = None
            self.sim_now = 0.0
            self._stats = EngineStats(delay_s=self.delay / self.sr if self.cfg.mode == "jam" else 0.0)

    def stats(self) -> EngineStats:
        """A snapshot of the session's statistics."""
        with self._lock:
            s = self._stats
            return EngineStats(s.blocks, s.underruns, s.compute_s, s.audio_s, list(s.latency_s), list(s.late_s),
                               s.input_s, collections.Counter(s.repairs), s.rejected, s.last_error, s.delay_s,
                               list(s.timeline))

    def last_block(self) -> dict | None:
        """A copy of the latest ``stats().timeline`` entry (None before the first block), without copying the rest
        of the session's statistics (what a per-block observer needs, on the generation thread)."""
        with self._lock:
            return dict(self._stats.timeline[-1]) if self._stats.timeline else None

    def set_prompt(self, prompt: str) -> None:
        """Change the prompt; it applies from the next block. The text is embedded here, in the caller's thread,
        so the generation thread never waits for the text encoder.

        Raises:
            InputError: ``prompt`` is not text.
        """
        if not isinstance(prompt, str):
            raise InputError(f"a prompt must be text, got {type(prompt).__name__}")
        embedded = encode_prompts(prompt)
        with self._lock:
            self._prompt = (prompt, embedded)

    def seconds_to_next_block(self) -> float:
        """Estimated seconds until the next block starts: 0 while one is being generated or its input is already
        there; in jam mode, until the input it needs has arrived; in real-time generate and sketch modes, until
        the wall-clock pacing lets it start; inf when no session runs."""
        if not self.running:
            return math.inf
        if self.computing.is_set():
            return 0.0
        if self.cfg.mode == "jam":
            return max(0.0, (self.needed_input(self.block_index) - self._input.total) / self.sr)
        ahead = self.block_index - self.cfg.lookahead_blocks
        return max(0.0, (self.t0 or 0.0) + ahead * self.block_s - time.perf_counter())

    def wait_for_gap(self, seconds: float, timeout: float) -> bool:
        """Wait (up to ``timeout`` seconds) until the next block is at least ``seconds`` away, or no session runs;
        returns whether it is. Work that would compete with the generation thread for the cores (a prompt's text
        encoding) waits here, so on a busy machine it runs between blocks instead of stretching one: right away
        when the gap allows, else just after the coming block (a block reads the prompt when it starts, so a
        change made at once would apply to the same block either way)."""
        deadline = time.perf_counter() + timeout
        while self.seconds_to_next_block() < seconds:
            if time.perf_counter() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def set_controls(self, features: np.ndarray | None, present: np.ndarray | None = None) -> None:
        """Controls for sketch mode: ``features (frames, 4)`` for the whole stream from its start and the group
        presence ``(3,)``; they apply from the next block. None removes them."""
        with self._lock:
            if features is None:
                self._controls = None
                return
            f = np.asarray(features, dtype=np.float32)
            if f.ndim != 2 or f.shape[1] != 4:
                raise InputError(f"control features must be (frames, 4), got shape {f.shape}")
            p = np.ones(len(GROUPS), dtype=bool) if present is None else np.asarray(present, dtype=bool)
            if p.shape != (len(GROUPS),):
                raise InputError(f"present must have one flag per control group {tuple(GROUPS)}, got shape {p.shape}")
            self._controls = (np.nan_to_num(f), p)

    # ---- input ------------------------------------------------------------------------------------------------
    def push_input(self, samples, sample_rate: int | None = None) -> int:
        """Feed an input chunk of any size; never blocks on generation.

        The chunk passes the one audio sanitiser (``lmdm.audio.sanitize.StreamSanitizer``): integer PCM is
        scaled, channels downmixed, NaN/inf zeroed, values clipped, other rates resampled with soxr statefully (chunk
        boundaries leave no trace). Each repair is counted in ``stats().repairs``.

        Args:
            samples: ``(n,)`` or ``(n, channels)`` numbers (any real dtype; integers are PCM).
            sample_rate: Hz of ``samples`` (default: the engine's), an integer from 1000 to 384000.

        Returns:
            the number of (resampled) samples appended.

        Raises:
            InputError: non-numeric data, bad shape or rate, or a chunk over ``max_chunk_seconds`` (counted in
                ``stats().rejected``; the session keeps running and the resampler's state is unchanged).
        """
        try:
            with self._input_lock:  # the sanitiser's resampler is stream state: one chunk at a time
                clean = self._sanitizer(samples, self.sr if sample_rate is None else sample_rate)
        except AudioError as e:
            with self._lock:
                self._stats.rejected += 1
                self._stats.last_error = str(e)
            raise InputError(str(e)) from None
        a = clean.audio
        now = time.perf_counter()
        with self._wake:
            self._stats.repairs.update(clean.repairs)
            if self.t0 is None and len(a):
                self.t0 = now - len(a) / self.sr if self.realtime else 0.0
            self._input.write(a)
            self._arrivals.append((self._input.total, now))
            self._stats.input_s = self._input.total / self.sr
            self._wake.notify_all()
        return len(a)

    # ---- output -----------------------------------------------------------------------------------------------
    def read_output(self) -> np.ndarray:
        """All audio generated since the last call (possibly empty), contiguous with what came before."""
        with self._lock:
            chunks = list(self._out)
            self._out.clear()
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def output_start(self, n: int) -> int:
        """The stream sample where block ``n``'s output chunk begins: its seam ``n * block_samples`` less what the
        streaming decoder holds back (``decoder.latency_samples``), 0 for block 0. The chunk plays from there, so
        it is due then; its block begins ``n * block_samples - output_start(n)`` samples into it."""
        return max(0, n * self.block_samples - self.decoder.latency_samples)

    def flush_output(self) -> np.ndarray:
        """End of stream: the audio the decoder still holds back (its lookahead frames and the crossfade)."""
        with self._lock:
            return self.decoder.flush()

    # ---- generation -------------------------------------------------------------------------------------------
    def needed_input(self, n: int) -> int:
        """Absolute input sample index up to which block ``n`` needs input (0 in generate and sketch modes)."""
        if self.cfg.mode != "jam":
            return 0
        return max(0, (n + 1) * self.block_samples - self.delay)

    def ready(self) -> bool:
        """Whether the next block has all the input it needs."""
        return self._input.total >= self.needed_input(self.block_index)

    def _block_controls(self, n: int) -> torch.Tensor | None:
        B, spf = self.B, self.spf
        if self.cfg.mode == "jam":
            start = n * self.block_samples - self.delay
            ctx = int(self.cfg.feature_context_s * self.sr) // spf * spf
            audio = self._input.read(start - ctx, start + self.block_samples)
            feats = features_from_audio(audio, self.sr, spf, self.cfg.tracker)[ctx // spf :][:B]
            present = np.ones(len(GROUPS), dtype=bool)
        else:
            with self._lock:
                ctrl = self._controls
            if ctrl is None:
                return None
            f, present = ctrl
            feats = np.zeros((B, 4), dtype=np.float32)
            part = f[n * B : (n + 1) * B]
            feats[: len(part)] = part
            if not len(part):
                present = np.zeros(len(GROUPS), dtype=bool)
        return control_input(torch.from_numpy(np.ascontiguousarray(feats))[None],
                             torch.from_numpy(np.asarray(present))[None])

    def step(self) -> bool:
        """Generate the next block if its input is there; returns whether a block was made.

        A block that fails (a bug, not bad input: input is repaired on arrival) is replaced by silence, the stream
        restarts from the next block and the error is kept in ``stats().last_error``: the timeline stays aligned
        and the session keeps running.

        Raises:
            _Stopped: internal, when :meth:`stop` interrupts a block (caught by the session thread).
        """
        n = self.block_index
        need = self.needed_input(n)
        if self._input.total < need:
            return False
        t_start, cpu_start, wait_start = time.perf_counter(), time.thread_time(), run_queue_wait()
        self.computing.set()
        with self._lock:
            prompt, self._prompt = self._prompt, None
        if prompt is not None:
            self.prompt_text = prompt[0]
            self.streamer.set_prompt(*prompt[1])

        def check_stop(_step: int) -> None:
            if self._stop.is_set():
                raise _Stopped()

        try:
            ctrl = self._block_controls(n)
            block = self.streamer.next_block(ctrl, on_step=check_stop)
            with self._lock:
                audio = self.decoder.push(block[0].cpu())  # the codec decodes on the CPU
        except _Stopped:
            self.computing.clear()
            raise
        except Exception as e:
            with self._lock:
                self._stats.last_error = f"block {n} failed and was replaced by silence: {type(e).__name__}: {e}"
                self.streamer.reset()  # the cache may hold half a block: start the stream afresh
                audio = np.zeros(self.block_samples, dtype=np.float32)
        compute, cpu = time.perf_counter() - t_start, time.thread_time() - cpu_start
        waited = run_queue_wait() - wait_start
        self.computing.clear()
        self._account(n, need, t_start, compute, audio, cpu, waited)
        if self.on_block is not None:
            try:
                heard = None
                if self.cfg.mode == "jam":
                    start = n * self.block_samples - self.delay
                    heard = self._input.read(start, start + self.block_samples)
                self.on_block(n, audio, heard)
            except Exception as e:  # an observer must never stop the stream
                with self._lock:
                    self._stats.last_error = f"block {n} observer failed: {type(e).__name__}: {e}"
        return True

    def _account(self, n: int, need: int, t_start: float, compute: float, audio: np.ndarray, cpu: float,
                 waited: float) -> None:
        with self._lock:
            if self.realtime:
                if n == 0 and self.cfg.mode != "jam":  # playback starts when the first block exists
                    self.t0 = t_start + compute
                t0 = self.t0 if self.t0 is not None else t_start + compute  # no input yet: pre-roll, on time
                heard = self._arrival_time(need) if need else t0
                done = t_start + compute
            else:  # simulated clock: input arrives in real time, compute takes what it took here
                t0, heard = 0.0, need / self.sr
                if need:
                    self.sim_now = max(self.sim_now, heard) + compute
            due = t0 + self.output_start(n) / self.sr
            if not self.realtime:
                # blocks that need no input are generated before the input starts (pre-roll)
                done = self.sim_now if need else min(due, self.sim_now)
            late = max(0.0, done - due)
            s = self._stats
            s.blocks += 1
            s.compute_s += compute
            s.audio_s += self.block_s
            s.underruns += late > 0 and n > 0  # block 0 starts the stream: a late one shifts or cuts its start
            s.late_s.append(late)
            if need:
                s.latency_s.append(done - heard)
            s.timeline.append({"block": n, "input_heard_s": heard - t0, "generated_s": done - t0,
                               "plays_s": due - t0, "late_s": late, "compute_s": compute, "cpu_s": cpu,
                               "run_queue_s": waited,
                               "prompt": self.prompt_text})
            self._out.append(audio)
            self.block_index += 1

    def _arrival_time(self, sample: int) -> float:
        for total, t in self._arrivals:
            if total >= sample:
                return t
        return time.perf_counter()

    def warmup(self) -> None:
        """Run two blocks of generation, decoding and feature extraction so one-time costs (imports, allocations,
        the cached path's first use) do not land on the first live blocks; the stream is reset afterwards."""
        if self.cfg.mode == "jam":
            features_from_audio(np.zeros(self.block_samples, np.float32), self.sr, self.spf, self.cfg.tracker)
        for _ in range(2):  # block 0 runs without context; block 1 takes the cached path (fused first step)
            block = self.streamer.next_block(self._block_controls(0) if self.cfg.mode == "jam" else None)
            self.decoder.push(block[0].cpu())
        self._reset_stream()

    # ---- real time --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Run a fresh session on a background thread, paced by the wall clock (returns at once).

        Raises:
            EngineBusy: the previous session's thread has not finished yet (call :meth:`stop` and wait).
        """
        if self._thread is not None and self._thread.is_alive():
            if not self._stop.is_set():
                return  # already running
            self._thread.join(2 * self.block_s)
            if self._thread.is_alive():
                raise EngineBusy("the previous session is still stopping; try again in a moment")
        self._stop = threading.Event()  # a fresh event: an old thread can never be revived by clearing it
        self._reset_stream()
        self.realtime = True
        if self.cfg.mode != "jam":
            self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="lmdm-live-engine", daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        if self.on_thread_start is not None:
            try:
                self.on_thread_start()
            except Exception as e:  # the session runs without what the hook wanted
                with self._lock:
                    self._stats.last_error = f"thread start hook failed: {type(e).__name__}: {e}"
        while not stop.is_set():
            try:
                if self.cfg.mode != "jam":
                    ahead = self.block_index - self.cfg.lookahead_blocks
                    wait = (self.t0 or 0.0) + ahead * self.block_s - time.perf_counter()
                    if wait > 0:
                        stop.wait(min(wait, 0.05))
                        continue
                if not self.step():
                    with self._wake:
                        self._wake.wait(timeout=0.01)
            except _Stopped:
                break

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the session thread to stop and wait up to ``timeout`` seconds (default: one block); a block in
        progress is abandoned at its next denoising step.

        Returns:
            True if the thread has finished (``running`` is then False).
        """
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.block_s)
            if not self._thread.is_alive():
                self._thread = None
        return self._thread is None

    @property
    def running(self) -> bool:
        """Whether the session thread is alive."""
        return self._thread is not None and self._thread.is_alive()
