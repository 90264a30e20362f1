"""Live generation in a worker process, so a notebook kernel only moves audio and messages.

In the kernel a :class:`LiveEngine`'s Python work and torch threads compete with the kernel's message handling
(the first answer took 19 s and the round trip reached 2 s on a busy laptop). :class:`WorkerClient` runs the engine
in a fresh process instead (``spawn``: a kernel with torch threads is never forked), under the live thread policy
(``lmdm.streaming.threads.WORKER_POLICY``: one thread, measured by ``scripts/worker_threads.py``): the policy's
variables are in the worker's environment from its first instruction (``OMP_WAIT_POLICY`` only counts if set
before torch is imported), and the worker's module imports torch only after setting them. ``spawn`` re-imports the
parent's ``__main__`` script, if it has one, before the worker's code runs (a notebook has none): a plain script
that creates a widget or a ``WorkerClient`` must do so under ``if __name__ == "__main__":``, as with any
``multiprocessing`` code.

**Warm start.** The worker starts at once: it loads the checkpoint and the text encoder, embeds the prompt, builds
the engine and runs two blocks of warm-up (``LiveEngine.warmup``), and only then reports ``ready``; a start after
that begins generating at once. A start sent while it loads waits in the pipe and runs as soon as the worker is ready.

**Audio** moves through two shared-memory rings (``lmdm.live.shm_ring``): the kernel writes input samples (model
rate) and reads output samples; neither side ever waits for the other. **Messages** go over one
``multiprocessing.Pipe``.

The protocol (commands, events) and the worker's threads are described in ``lmdm.live.worker_process``.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import shutil
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
from lmdm.live.worker_process import FATAL, one_line, set_env, worker_main
from lmdm.streaming.threads import WORKER_POLICY, ThreadPolicy

if TYPE_CHECKING:
    from lmdm.checkpoint import Checkpoint
    from lmdm.live.engine import EngineConfig

STATUSES = ("loading", "ready", "running", "stopped", "crashed", "closed")
_POLICY_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
_ENV_LOCK = threading.Lock()


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

    Attributes:
        config: the settings of the next plain :meth:`start` (and of a restart); :meth:`set_prompt` updates its prompt.
        path: the checkpoint folder the worker loads.
        sample_rate: Hz of all audio in and out (the checkpoint codec's).
        error: the last error event, or why the worker died (None after a restart).
        info: the worker's ``info`` event (empty until it is ready).

    Raises:
        UsageError: ``config`` is not an EngineConfig, a ring size is not positive, or ``checkpoint`` is neither a
            Checkpoint nor a folder.
        CheckpointError: the checkpoint folder is missing or not a checkpoint.
    """

    def __init__(self, checkpoint: Checkpoint | str | Path, config: EngineConfig, policy: ThreadPolicy = WORKER_POLICY,
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
        proc = ctx.Process(target=worker_main, name="lmdm-generation-worker", daemon=True,
                           args=(child, self._in.name, self._out.name, str(self.path), pickle.dumps(self.config),
                                 _policy_env(self.policy), self.policy, self.preload_text_encoder))
        env = _policy_env(self.policy)
        with _ENV_LOCK:  # the new interpreter inherits the environment: the policy holds from its first import
            saved = {k: os.environ.get(k) for k in env}
            set_env(env)
            try:
                proc.start()
            finally:
                set_env(saved)
        child.close()
        self._res.proc, self._res.conn = proc, conn
        self._status, self.error, self.info = "loading", None, {}
        self._awaiting_output = False  # after start(): read nothing until the worker says where the session begins
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
        self._awaiting_output = True  # what the output ring holds now may be an earlier session's tail
        self._send(("start", config, self._in.written))  # input pushed from now on belongs to this session

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
        (samples lost because the caller read too rarely are counted in :attr:`output_dropped`). After
        :meth:`start`, nothing until :meth:`poll` has seen where the new session's output begins: what an earlier
        session left unread is skipped, never played as the new session's first audio."""
        if self._status == "closed" or self._awaiting_output:
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
                self.error = one_line(f"unreadable event from the worker: {type(e).__name__}: {e}")
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
        elif kind == "output_from" and len(event) == 2 and isinstance(event[1], int):
            self._out.seek(event[1])
            self._awaiting_output = False
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
