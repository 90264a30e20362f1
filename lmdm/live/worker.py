"""Live generation in a worker process, so a notebook kernel only moves audio and messages.

In the kernel a :class:`LiveEngine`'s Python work and torch threads compete with the kernel's message handling
(the first answer took 19 s and the round trip reached 2 s on a busy laptop). :class:`WorkerClient` runs the engine
in a fresh process instead (``spawn``: a kernel with torch threads is never forked), under the live thread policy
(``lmdm.streaming.threads``): the policy's variables are in the worker's environment from its first instruction
(``OMP_WAIT_POLICY`` only counts if set before torch is imported), and this module imports torch only inside the
worker. (``spawn`` re-imports the parent's ``__main__`` script, if it has one, before the worker's code runs; a
notebook has none.)

**Warm start.** The worker starts at once: it loads the checkpoint and the text encoder, embeds the prompt, builds
the engine and runs one block of warm-up, and only then reports ``ready``; a start after that begins generating
at once. A start sent while it loads waits in the pipe and runs as soon as the worker is ready.

**Audio** moves through two shared-memory rings (``lmdm.live.shm_ring``): the kernel writes input samples (model
rate) and reads output samples; neither side ever waits for the other. **Messages** go over one
``multiprocessing.Pipe``.

Commands (kernel -> worker), each a tuple:

* ``("start", EngineConfig | None)``: a fresh session at once (None: the current settings). The engine is rebuilt
  and warmed up only when the settings differ in more than the prompt; a new prompt is applied with ``set_prompt``.
* ``("stop",)``, ``("prompt", text)`` (embedded on the command thread, never the generation thread),
  ``("controls", features (frames, 4) | None, present (3,) bool | None)``, ``("quit",)``.

Events (worker -> kernel), each a tuple:

* ``("status", "loading" | "ready" | "running" | "stopped")``;
* ``("info", dict)`` once the worker is ready: pid, torch threads, ``OMP_WAIT_POLICY``, whether torch was already
  imported when the worker's code began (by the parent's ``__main__`` script), seconds spent loading
  (checkpoint, text encoder) and warming up (engine, prompt, one block), sample rate, block size, whether views
  are sent;
* ``("stats", dict)`` twice a second while running and once after a stop: the engine's ``stats().summary()`` with
  NaN as None, plus ``running``, ``late_s`` (the last block's lateness), ``input_dropped`` (input samples the
  worker lost because it fell a whole input ring behind) and ``events_dropped``;
* ``("block", n, {"block", "compute_s", "late_s", "prompt", "samples"})`` per block (``samples``: the audio it
  queued for output);
* ``("view", header, bytes)`` per block from ``lmdm.live.view.block_view`` when that module exists (in jam mode also
  one for the block's input, ``source="input"``);
* ``("error", one line)``: a refused command or input, an engine error, or the reason the worker is exiting.

Threads in the worker: the engine's generation thread; the *mover* (every 5 ms: input ring -> ``push_input``,
``read_output`` -> output ring); the *reporter*, the only one that writes to the pipe (events, the views computed
off the generation thread, stats); and the main thread's command loop, which also exits when the kernel dies.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmdm.errors import UsageError
from lmdm.live.shm_ring import ShmRing
from lmdm.streaming.threads import LIVE_POLICY, ThreadPolicy

if TYPE_CHECKING:
    from lmdm.checkpoint import Checkpoint
    from lmdm.live.engine import EngineConfig

STATUSES = ("loading", "ready", "running", "stopped", "crashed", "closed")
COMMANDS = {"start": (0, 1), "stop": (0, 0), "prompt": (1, 1), "controls": (1, 2), "quit": (0, 0)}  # arg counts
#: How an error event of a worker that is exiting begins (the client quotes it in its crash message).
FATAL = "the generation worker failed: "
MOVE_PERIOD_S = 0.005
STATS_PERIOD_S = 0.5
PARENT_CHECK_S = 0.25
MAX_QUEUED_BLOCKS = 32  # block events held while the kernel does not read; older views are skipped beyond 4
_POLICY_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
_ENV_LOCK = threading.Lock()


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _clean(summary: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


# ---- the worker process ---------------------------------------------------------------------------------------
class _Worker:
    """The worker process's state: the engine, the rings, the event queue and its three threads."""

    def __init__(self, conn, in_name: str, out_name: str, config, policy: ThreadPolicy, torch_preloaded: bool):
        self.conn, self.config, self.policy = conn, config, policy
        self.torch_preloaded = torch_preloaded
        self.in_ring = ShmRing.attach(in_name, from_start=False)
        self.out_ring = ShmRing.attach(out_name)
        self.events: queue.Queue = queue.Queue()
        self.quit = threading.Event()
        self.engine = None
        self.running = False
        self.session = 0  # bumped at each start: the mover then drops input that arrived before it
        self.events_dropped = 0
        self.late_s = None
        self.last_error = None  # the engine's last error already reported
        self.block_view = None

    def emit(self, *event) -> None:
        """Queue an event for the reporter (never blocks)."""
        self.events.put(event)

    def load(self, ckpt_path: str, preload_text_encoder: bool) -> None:
        """Everything expensive, before ``ready``: checkpoint, text encoder, prompt, engine, one warm-up block."""
        t0 = time.perf_counter()
        self.emit("status", "loading")
        import torch

        from lmdm.checkpoint import load_checkpoint
        from lmdm.text import load_text_encoder

        self.policy.apply()
        self.ckpt = load_checkpoint(ckpt_path)
        if preload_text_encoder:
            load_text_encoder()
        try:
            from lmdm.live.view import block_view
            self.block_view = block_view
        except ImportError:
            self.block_view = None
        t1 = time.perf_counter()
        self.build(self.config)
        t2 = time.perf_counter()
        self.emit("info", {"pid": os.getpid(), "torch_threads": torch.get_num_threads(),
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                           "torch_preloaded": self.torch_preloaded, "load_s": t1 - t0, "warmup_s": t2 - t1,
                           "sample_rate": self.engine.sr, "block_samples": self.engine.block_samples,
                           "views": self.block_view is not None})
        self.emit("status", "ready")

    def build(self, config) -> None:
        """A new engine for ``config``, warmed up (the previous one, if any, is stopped first)."""
        from lmdm.live.engine import LiveEngine

        if self.engine is not None:
            self.engine.stop(timeout=2.0)
        engine = LiveEngine(self.ckpt, config, realtime=True)
        engine.on_block = lambda n, audio, heard: self.on_block(engine, n, audio, heard)
        engine.warmup()
        self.engine, self.config = engine, config

    # ---- generation thread -------------------------------------------------------------------------------------
    def on_block(self, engine, n: int, audio: np.ndarray, heard: np.ndarray | None) -> None:
        """Called by the engine after each block, on the generation thread: queue it, nothing more."""
        entry = engine.stats().timeline[-1]
        info = {"block": int(n), "compute_s": float(entry["compute_s"]), "late_s": float(entry["late_s"]),
                "prompt": entry["prompt"], "samples": int(len(audio))}
        self.late_s = info["late_s"]
        if self.events.qsize() > MAX_QUEUED_BLOCKS:
            self.events_dropped += 1
            return
        self.events.put(("_block", n, info, audio, heard, engine.codec))

    # ---- mover thread ------------------------------------------------------------------------------------------
    def mover(self) -> None:
        """Input ring -> engine, engine -> output ring, every ``MOVE_PERIOD_S``."""
        session = self.session
        while not self.quit.is_set():
            engine = self.engine
            if session != self.session:
                session = self.session
                self.in_ring.skip()
            x = self.in_ring.read()
            if engine is not None:
                if len(x) and self.running and engine.cfg.mode == "jam":
                    try:
                        engine.push_input(x, engine.sr)
                    except Exception as e:  # InputError: refused, counted by the engine; the stream goes on
                        self.emit("error", _one_line(e))
                y = engine.read_output()
                if len(y):
                    self.out_ring.write(y)
            self.quit.wait(MOVE_PERIOD_S)

    # ---- reporter thread ---------------------------------------------------------------------------------------
    def reporter(self) -> None:
        """The only writer to the pipe: events in order, views of the queued blocks, stats while running."""
        last_stats = 0.0
        while True:
            try:
                event = self.events.get(timeout=0.05)
            except queue.Empty:
                event = None
            try:
                if event is None:
                    pass
                elif event[0] == "_quit":
                    return
                elif event[0] == "_block":
                    self.send_block(*event[1:])
                elif event[0] == "_stats":
                    self.send_stats()
                else:
                    self.conn.send(event)
                now = time.monotonic()
                if self.running and now - last_stats >= STATS_PERIOD_S:
                    last_stats = now
                    self.send_stats()
            except (OSError, EOFError):  # the kernel is gone
                self.quit.set()
                return

    def send_block(self, n: int, info: dict, audio, heard, codec) -> None:
        self.conn.send(("block", n, info))
        if self.block_view is None or self.events.qsize() > 4:  # behind: the views of old blocks are skipped
            return
        for source, x in (("output", audio), ("input", heard)):
            if x is None:
                continue
            try:
                header, data = self.block_view(n, x, codec, source)
            except Exception as e:  # a view must never stop the stream
                self.conn.send(("error", _one_line(f"block {n} {source} view failed: {type(e).__name__}: {e}")))
                continue
            self.conn.send(("view", header, data))

    def send_stats(self) -> None:
        engine = self.engine
        if engine is None:
            return
        stats = _clean(engine.stats().summary())
        if stats.get("last_error") and stats["last_error"] != self.last_error:
            self.last_error = stats["last_error"]
            self.conn.send(("error", _one_line(self.last_error)))
        if self.running and not engine.running:  # the generation thread died: say so once
            self.running = False
            self.conn.send(("error", _one_line(f"the generation thread stopped: {stats.get('last_error')}")))
            self.conn.send(("status", "stopped"))
        stats.update(running=engine.running, late_s=self.late_s, input_dropped=self.in_ring.dropped,
                     events_dropped=self.events_dropped)
        self.conn.send(("stats", stats))

    # ---- command loop (main thread) ----------------------------------------------------------------------------
    def serve(self) -> None:
        """Handle commands until ``quit``, the kernel's death or a closed pipe."""
        parent = mp.parent_process()
        while not self.quit.is_set():
            if parent is not None and not parent.is_alive():
                break
            try:
                if not self.conn.poll(PARENT_CHECK_S):
                    continue
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception as e:  # a command that does not unpickle here
                self.emit("error", _one_line(f"could not read a command: {type(e).__name__}: {e}"))
                continue
            if self.handle(message) == "quit":
                break

    def handle(self, message) -> str | None:
        """Run one command; a bad one is answered with an error event."""
        if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
            self.emit("error", _one_line(f"malformed command {message!r:.80}: expected a tuple ('name', args...) "
                                         f"with a name from {', '.join(COMMANDS)}"))
            return None
        name, args = message[0], message[1:]
        if name not in COMMANDS:
            self.emit("error", _one_line(f"unknown command {name!r:.40}; valid commands: {', '.join(COMMANDS)}"))
            return None
        low, high = COMMANDS[name]
        if not low <= len(args) <= high:
            self.emit("error", f"malformed command {name!r}: expected {low}" + (f" to {high}" if high > low else "")
                      + f" argument(s), got {len(args)}")
            return None
        try:
            return getattr(self, f"do_{name}")(*args)
        except Exception as e:
            self.emit("error", _one_line(f"{name} failed: {type(e).__name__}: {e}"))
            return None

    def do_start(self, config=None) -> None:
        from lmdm.live.engine import EngineConfig

        if config is not None and not isinstance(config, EngineConfig):
            raise UsageError(f"start takes an EngineConfig or None, got {type(config).__name__}")
        config = self.config if config is None else config
        self.running = False
        if self.engine.running and not self.engine.stop(timeout=2.0):
            raise RuntimeError("the previous session did not stop within 2 s; try again")
        if replace(config, prompt=self.config.prompt) != self.config:
            self.emit("status", "loading")
            try:
                self.build(config)
            except Exception:
                self.emit("status", "stopped")  # the previous engine is kept, stopped
                raise
        elif config.prompt != self.config.prompt:
            self.engine.set_prompt(config.prompt)
            self.config = config
        self.engine.start()
        self.session += 1
        self.running = True
        self.emit("status", "running")

    def do_stop(self) -> None:
        self.running = False
        self.engine.stop(timeout=2.0)
        self.emit("status", "stopped")
        self.emit("_stats")

    def do_prompt(self, text) -> None:
        if not isinstance(text, str):
            raise UsageError(f"a prompt must be text, got {type(text).__name__}")
        self.engine.set_prompt(text)  # embedded here, on the command thread
        self.config = replace(self.config, prompt=text)

    def do_controls(self, features, present=None) -> None:
        self.engine.set_controls(features, present)

    def do_quit(self) -> str:
        return "quit"

    def shutdown(self) -> None:
        self.quit.set()
        self.running = False
        if self.engine is not None:
            self.engine.stop(timeout=1.0)
        for ring in (self.in_ring, self.out_ring):
            ring.close()


def _set_env(env: dict) -> None:
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _watch_parent(done: threading.Event) -> None:
    """Hard exit when the kernel dies and the worker has not left on its own within 2 s (e.g. still loading)."""
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:
        return
    wait([parent.sentinel])
    if not done.wait(2.0):
        os._exit(3)


def _worker_main(conn, in_name: str, out_name: str, ckpt_path: str, config_blob: bytes, env: dict,
                 policy: ThreadPolicy, preload_text_encoder: bool) -> None:
    """The worker process (spawned by :class:`WorkerClient`). Sets the thread policy's environment before torch is
    imported, loads and warms up, then serves commands until ``quit`` or the kernel's death. A failure sends
    ``("error", FATAL + its last traceback line)`` and exits with code 1."""
    torch_preloaded = "torch" in sys.modules
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel decides when the worker ends (Ctrl-C is the kernel's)
    _set_env(env)  # already inherited from the kernel at spawn; set again for whatever reads it from here on
    done = threading.Event()
    threading.Thread(target=_watch_parent, args=(done,), name="lmdm-worker-watchdog", daemon=True).start()
    worker = None
    reporter = None
    try:
        worker = _Worker(conn, in_name, out_name, pickle.loads(config_blob), policy, torch_preloaded)
        reporter = threading.Thread(target=worker.reporter, name="lmdm-worker-reporter", daemon=True)
        reporter.start()
        worker.load(ckpt_path, preload_text_encoder)
        threading.Thread(target=worker.mover, name="lmdm-worker-mover", daemon=True).start()
        worker.serve()
    except BaseException as e:
        line = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__  # the traceback's last line, unqualified
        if worker is not None:
            worker.quit.set()
        if reporter is not None and reporter.is_alive():
            worker.emit("error", _one_line(FATAL + line))
            worker.emit("_quit")
            reporter.join(1.0)
        else:
            try:
                conn.send(("error", _one_line(FATAL + line)))
            except (OSError, EOFError):
                pass
        done.set()
        raise SystemExit(1) from None
    if worker is not None:
        worker.emit("_quit")
        reporter.join(1.0)
        worker.shutdown()
    done.set()


# ---- the kernel side ------------------------------------------------------------------------------------------
class _Resources:
    """What a client owns, kept apart from the client so that ``weakref.finalize`` can clean it up."""

    def __init__(self):
        self.proc = None
        self.conn = None
        self.rings: list[ShmRing] = []
        self.tmp: str | None = None


def _end_process(res: _Resources, join_s: float = 2.0) -> None:
    """Ask the worker to quit, then terminate, then kill; close the pipe."""
    proc, conn = res.proc, res.conn
    if conn is not None:
        try:
            conn.send(("quit",))
        except (OSError, EOFError, ValueError):
            pass
    if proc is not None:
        proc.join(join_s)
        if proc.is_alive():
            proc.terminate()
            proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    if conn is not None:
        conn.close()
    res.proc = res.conn = None


def _cleanup(res: _Resources) -> None:
    _end_process(res)
    for ring in res.rings:
        ring.close()
    if res.tmp is not None:
        shutil.rmtree(res.tmp, ignore_errors=True)
        res.tmp = None


def _policy_env(policy: ThreadPolicy) -> dict:
    """The policy's thread variables for the worker (None: remove); a thread count the user chose wins."""
    full = policy.env()
    keep_user = "OMP_NUM_THREADS" in os.environ
    return {k: full.get(k) for k in _POLICY_KEYS if not (keep_user and k != "OMP_WAIT_POLICY")}


class WorkerClient:
    """The kernel's handle on a generation worker process (see the module docstring). Its methods never wait
    for the worker, except :meth:`wait_ready`, :meth:`restart` (which ends the old worker) and :meth:`close`.

    Args:
        checkpoint: a loaded :class:`lmdm.checkpoint.Checkpoint` (one built in memory, ``path`` None, is saved in
            float32 to a temporary folder first, removed on close) or a checkpoint folder.
        config: the engine settings the worker warms up with (and starts with when ``start`` gets none).
        policy: the worker's thread policy (set in its environment before it imports torch).
        input_seconds: capacity of the input ring (seconds at the model rate).
        output_seconds: capacity of the output ring.
        preload_text_encoder: load the text encoder while warming up (about 5 s), so a new prompt costs only its
            embedding; False loads it at the first prompt that needs it (tests, sessions with a fixed prompt).

    Raises:
        UsageError: ``config`` is not an EngineConfig, or a ring size is not positive.
        CheckpointError: the checkpoint folder is missing or not a checkpoint.
    """

    def __init__(self, checkpoint: Checkpoint | str | Path, config: EngineConfig, policy: ThreadPolicy = LIVE_POLICY,
                 input_seconds: float = 10.0, output_seconds: float = 10.0, preload_text_encoder: bool = True):
        from lmdm.live.engine import EngineConfig

        if not isinstance(config, EngineConfig):
            raise UsageError(f"config must be an EngineConfig, got {type(config).__name__}")
        if not isinstance(policy, ThreadPolicy):
            raise UsageError(f"policy must be a ThreadPolicy, got {type(policy).__name__}")
        for name, value in (("input_seconds", input_seconds), ("output_seconds", output_seconds)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise UsageError(f"{name} must be a positive number of seconds, got {value!r}")
        self.config, self.policy, self.preload_text_encoder = config, policy, preload_text_encoder
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, _cleanup, self._res)
        self.path, self.sample_rate = self._checkpoint_path(checkpoint)
        self._res.rings = [ShmRing.create(max(1, int(input_seconds * self.sample_rate))),
                           ShmRing.create(max(1, int(output_seconds * self.sample_rate)))]
        self._in, self._out = self._res.rings
        self._spawn()

    def _checkpoint_path(self, checkpoint) -> tuple[Path, int]:
        from lmdm.audio.codec import CodecConfig
        from lmdm.checkpoint import Checkpoint, read_config, save_checkpoint
        from lmdm.config import from_dict

        if isinstance(checkpoint, Checkpoint):
            path = checkpoint.path
            if path is None:
                import torch

                self._res.tmp = tempfile.mkdtemp(prefix="lmdm-worker-ckpt-")
                path = save_checkpoint(Path(self._res.tmp) / "checkpoint", checkpoint.model, checkpoint.codec,
                                       checkpoint.info, dtype=torch.float32)
            return Path(path), int(checkpoint.codec.sample_rate)
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise UsageError(f"checkpoint must be a Checkpoint or a checkpoint folder, got {type(checkpoint).__name__}")
        path = Path(checkpoint)
        codec = from_dict(CodecConfig, read_config(path)["codec"], where=f"{path}/config.json:codec")
        return path, int(codec.sample_rate)

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_worker_main, name="lmdm-generation-worker", daemon=True,
                           args=(child, self._in.name, self._out.name, str(self.path), pickle.dumps(self.config),
                                 _policy_env(self.policy), self.policy, self.preload_text_encoder))
        env = _policy_env(self.policy)
        with _ENV_LOCK:  # the new interpreter inherits the environment: the policy holds from its first import
            saved = {k: os.environ.get(k) for k in env}
            _set_env(env)
            try:
                proc.start()
            finally:
                _set_env(saved)
        child.close()
        self._res.proc, self._res.conn = proc, conn
        self._status, self.error, self.info = "loading", None, {}
        self._stats: dict = {}
        self._fatal: str | None = None

    # ---- state -------------------------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """One of :data:`STATUSES`, as of the last :meth:`poll`."""
        return self._status

    @property
    def stats(self) -> dict:
        """The latest stats event (empty before the first)."""
        return self._stats

    @property
    def alive(self) -> bool:
        """Whether the worker process is running."""
        return self._res.proc is not None and self._res.proc.is_alive()

    @property
    def pid(self) -> int | None:
        """The worker's process id (None once closed)."""
        return None if self._res.proc is None else self._res.proc.pid

    # ---- commands (never wait for the worker) ------------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        conn = self._res.conn
        if conn is None:
            return
        try:
            conn.send(message)
        except (OSError, EOFError, ValueError):
            pass  # a dead worker: poll() reports it

    def _check_open(self) -> None:
        if self._status == "closed":
            raise UsageError("this WorkerClient is closed; make a new one")

    def start(self, config: EngineConfig | None = None) -> None:
        """Start a fresh session (returns at once; while the worker loads, it starts as soon as it is ready; after
        a crash a fresh worker is started first).

        Raises:
            UsageError: ``config`` is not an EngineConfig, or the client is closed.
        """
        from lmdm.live.engine import EngineConfig

        self._check_open()
        if config is not None and not isinstance(config, EngineConfig):
            raise UsageError(f"config must be an EngineConfig or None, got {type(config).__name__}")
        if config is not None:
            self.config = config
        if self._status == "crashed":
            self.restart()
        self._send(("start", config))

    def stop(self) -> None:
        """Stop the session (the worker stays warm)."""
        if self._status not in ("crashed", "closed"):
            self._send(("stop",))

    def set_prompt(self, text: str) -> None:
        """Change the prompt; it applies from the worker's next block (also kept for later starts).

        Raises:
            UsageError: ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise UsageError(f"a prompt must be text, got {type(text).__name__}")
        self.config = replace(self.config, prompt=text)
        self._send(("prompt", text))

    def set_controls(self, features: np.ndarray | None, present: np.ndarray | None = None) -> None:
        """Sketch controls ``features (frames, 4)`` for the stream from its start and group presence ``(3,)`` bool
        (None removes them); they apply from the next block.

        Raises:
            UsageError: ``features`` is not numeric ``(frames, 4)`` or ``present`` not three flags.
        """
        try:
            f = None if features is None else np.asarray(features, dtype=np.float32)
            p = None if present is None else np.asarray(present, dtype=bool)
        except (TypeError, ValueError) as e:
            raise UsageError(f"control features must be numbers: {e}") from None
        if f is not None and (f.ndim != 2 or f.shape[1] != 4):
            raise UsageError(f"control features must be (frames, 4), got shape {f.shape}")
        if p is not None and p.shape != (3,):
            raise UsageError(f"present must be three flags (one per control group), got shape {p.shape}")
        self._send(("controls", f, p))

    # ---- audio -------------------------------------------------------------------------------------------------
    def push_input(self, samples: np.ndarray) -> None:
        """Input audio ``(n,)`` float32 at :attr:`sample_rate` into the input ring (never blocks; used in jam mode
        while running, dropped otherwise). NaN, clipping and such are repaired by the engine's sanitiser.

        Raises:
            UsageError: not a one-dimensional array of numbers.
        """
        self._check_open()
        try:
            x = np.asarray(samples, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise UsageError(f"input audio must be numbers: {e}") from None
        if x.ndim != 1:
            raise UsageError(f"input audio must be mono (n,) at {self.sample_rate} Hz, got shape {x.shape}")
        self._in.write(x)

    def read_output(self) -> np.ndarray:
        """Everything the worker generated since the last call: ``(n,)`` float32 at :attr:`sample_rate`, contiguous
        (samples lost because the caller read too rarely are counted in :attr:`output_dropped`)."""
        if self._status == "closed":
            return np.zeros(0, dtype=np.float32)
        return self._out.read()

    @property
    def output_dropped(self) -> int:
        """Output samples lost because :meth:`read_output` fell more than ``output_seconds`` behind."""
        return self._out.dropped

    # ---- events ------------------------------------------------------------------------------------------------
    def poll(self) -> list[tuple]:
        """Drain the worker's events (see the module docstring) and update :attr:`status`, :attr:`error` and
        :attr:`stats`; a dead worker turns the status to ``"crashed"`` with the reason in :attr:`error`. Never
        raises on a dead pipe and never waits for the worker."""
        events: list[tuple] = []
        conn = self._res.conn
        if conn is None:
            return events
        while True:
            try:
                if not conn.poll(0):
                    break
                event = conn.recv()
            except (OSError, EOFError):
                break
            except Exception as e:  # an event that does not unpickle here: report, keep going
                self.error = _one_line(f"unreadable event from the worker: {type(e).__name__}: {e}")
                continue
            events.append(event)
            self._apply(event)
        proc = self._res.proc
        if self._status not in ("crashed", "closed") and proc is not None and not proc.is_alive():
            self._status = "crashed"
            why = f" ({self._fatal})" if self._fatal else ""
            self.error = f"the generation worker exited with code {proc.exitcode}{why}; start again to restart it"
        return events

    def _apply(self, event) -> None:
        if not isinstance(event, tuple) or not event:
            return
        kind = event[0]
        if kind == "status" and len(event) == 2 and event[1] in STATUSES:
            self._status = event[1]
        elif kind == "stats" and len(event) == 2 and isinstance(event[1], dict):
            self._stats = event[1]
        elif kind == "info" and len(event) == 2 and isinstance(event[1], dict):
            self.info = event[1]
        elif kind == "error" and len(event) == 2:
            self.error = str(event[1])
            if self.error.startswith(FATAL):
                self._fatal = self.error[len(FATAL):]

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Poll until the worker is warm (``ready``, ``running`` or ``stopped``); False on timeout, crash or close.
        The events read meanwhile update the state but are not returned."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if self._status in ("ready", "running", "stopped"):
                return True
            if self._status in ("crashed", "closed") or time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    # ---- life cycle --------------------------------------------------------------------------------------------
    def restart(self) -> None:
        """End the worker (if it still runs) and start a fresh one with :attr:`config`, warm again; the rings
        are kept, so the output stays readable through the same :meth:`read_output`.

        Raises:
            UsageError: the client is closed.
        """
        self._check_open()
        _end_process(self._res, join_s=1.0)
        self._spawn()

    def close(self) -> None:
        """Quit the worker (join 2 s, then terminate, then kill), unlink the shared memory and remove a temporary
        checkpoint; idempotent. Also runs when the client is garbage-collected or the kernel exits."""
        self._finalizer()
        self._status = "closed"

    def __enter__(self) -> "WorkerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WorkerClient(pid={self.pid}, status={self._status!r}, mode={self.config.mode!r})"
