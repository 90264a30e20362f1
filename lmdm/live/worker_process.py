"""The generation worker process: what runs inside it (the kernel's side is ``lmdm.live.worker``).

Spawned by :class:`lmdm.live.worker.WorkerClient` with :func:`worker_main` as its target. This module imports
torch only inside :func:`worker_main`, after the thread policy's variables are in the environment.

Commands (kernel -> worker), each a tuple:

* ``("start", EngineConfig | None[, input position])``: a fresh session at once (None: the current settings); its
  input begins at that absolute input-ring sample (the kernel's write position when it asked; default: whatever
  arrives next), so the engine's input sample 0 is the first sample the kernel pushed for this session and the
  browser can schedule the answer against its own capture clock. The engine is rebuilt
  and warmed up only when the settings differ in more than the prompt; a new prompt is applied with ``set_prompt``.
* ``("stop",)``, ``("prompt", text)`` (embedded on the command thread, never the generation thread),
  ``("controls", features (frames, 4) | None, present (3,) bool | None)``, ``("quit",)``.

A command that is not a tuple, has an unknown name, the wrong number of arguments or arguments the engine refuses
is answered with an ``error`` event; the worker goes on.

Events (worker -> kernel), each a tuple:

* ``("status", "loading" | "ready" | "running" | "stopped")``;
* ``("output_from", position)`` at each start, before ``running``: the output-ring sample where the new session's
  audio begins (the previous session's engine has stopped by then), so the client can skip what an earlier session
  left unread;
* ``("info", dict)`` once the worker is ready: pid, torch threads, ``OMP_WAIT_POLICY``, whether torch was already
  imported when the worker's code began (by the parent's ``__main__`` script), whether it leads a session of its own
  (see "Scheduling"), seconds spent loading
  (checkpoint, text encoder) and warming up (engine, prompt, one block), sample rate, block size, whether views
  are sent;
* ``("stats", dict)`` twice a second while running and once after a stop: the engine's ``stats().summary()`` with
  NaN as None, plus ``running``, ``late_s`` (the last block's lateness), ``input_dropped`` (input samples the
  worker lost because it fell a whole input ring behind), ``events_dropped`` and ``level_guard`` (the guard's
  ``summary()`` where ``EngineConfig.level_guard`` is on, else None);
* ``("block", n, {"block", "compute_s", "cpu_s", "run_queue_s", "late_s", "prompt", "samples"})`` per block
  (``cpu_s`` and ``run_queue_s``: the generation thread's CPU time and wait for a core, against ``compute_s`` wall
  time, as in ``EngineStats.timeline``; ``samples``: the audio it
  queued for output);
* ``("view", header, bytes)`` per block from ``lmdm.live.view.block_view`` when that module exists (in jam mode also
  one for the block's input, ``source="input"``);
* ``("error", one line)``: a refused command or input, an engine error (also in the stats' ``last_error``), or,
  beginning with :data:`FATAL`, the reason the worker is exiting (with code 1).

Threads in the worker: the engine's generation thread, which also writes each block's audio to the output ring the
moment the block exists (``on_block``: no polling delay on the way out); the *mover* (input ring -> ``push_input`` in
jam mode while running: every 5 ms while the engine waits for input, every 20 ms while a block is computed, when it
needs no input); the *reporter*, the only one that writes to the pipe (events in order, the views computed off the
generation thread, stats); the main thread's command loop, which leaves when the kernel dies (checked every 0.25 s;
a watchdog thread ends a worker still loading 2 s after).

Scheduling: the worker starts a session of its own (``os.setsid``, where the platform has it). On Linux, whose
default scheduler groups the processes of a session (*autogroup*, ``/proc/sys/kernel/sched_autogroup_enabled``), the
worker's share of the CPU then no longer shrinks with every busy thread of the session that started the notebook:
it competes as one group, without privileges. Where autogroup is off, or on other systems, this changes nothing.
When the thread policy asks for real-time priority (``ThreadPolicy.realtime``; ``WORKER_POLICY`` does), the
generation and mover threads ask for it as they start (``lmdm.streaming.threads.request_realtime``): granted where
the process has ``CAP_SYS_NICE`` or an ``RLIMIT_RTPRIO`` that allows it, a block then waits for no ordinary process.
``info["realtime"]`` says what was requested and whether it is permitted; ``stats["realtime"]`` which threads got it.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
from dataclasses import replace

import numpy as np

from lmdm.errors import UsageError
from lmdm.live.shm_ring import ShmRing
from lmdm.streaming.threads import ThreadPolicy

COMMANDS = {"start": (0, 2), "stop": (0, 0), "prompt": (1, 1), "controls": (1, 2), "quit": (0, 0)}  # arg counts
#: How an error event of a worker that is exiting begins (the client quotes it in its crash message).
FATAL = "the generation worker failed: "
# While a block is computed the mover wakes only every 20 ms: every wake-up takes the GIL from the generation thread,
# which releases it at each torch op, and on a starved machine a mover descheduled while holding the GIL stalls the
# block. A block needs no input that arrives while it is computed, so nothing waits for it then; between blocks,
# when the engine waits for its input, it moves input every 5 ms.
MOVE_PERIOD_S = 0.02
MOVE_PERIOD_IDLE_S = 0.005
SWITCH_INTERVAL_S = 0.02  # the generation thread keeps the GIL this long before it must offer it (default 5 ms)
PROMPT_GAP_S = 0.3  # a prompt's encoding starts only when the next block is at least this far away
STATS_PERIOD_S = 0.5
PARENT_CHECK_S = 0.25
MAX_QUEUED_BLOCKS = 32  # block events held while the kernel does not read; older views are skipped beyond 4


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _clean(summary: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


class Worker:
    """The worker process's state: the engine, the rings, the event queue, and the loops of its threads.

    Args:
        conn: the worker's end of the pipe (only the reporter thread sends on it).
        in_name, out_name: the kernel's input and output rings (attached here; the kernel unlinks them).
        config: the ``EngineConfig`` to warm up with.
        policy: the thread policy (its thread count is applied once torch is imported).
        torch_preloaded: whether torch was imported before the worker's code ran (reported in ``info``).
    """

    def __init__(self, conn, in_name: str, out_name: str, config, policy: ThreadPolicy, torch_preloaded: bool):
        self.conn, self.config, self.policy = conn, config, policy
        self.torch_preloaded = torch_preloaded
        self.in_ring = ShmRing.attach(in_name, from_start=False)
        self.out_ring = ShmRing.attach(out_name)
        self.events: queue.Queue = queue.Queue()
        self.quit = threading.Event()
        self.engine = None
        self.running = False
        self.session = 0  # bumped at each start: the mover then drops input from before the session
        self.session_lock = threading.Lock()  # held while ``session`` and ``running`` change, and by the mover
        self.input_from: int | None = None  # the input ring position the kernel started the session at
        self.events_dropped = 0
        self.late_s = None
        self.last_error = None  # the engine's last error already reported
        self.block_view = None
        self.mover_thread: threading.Thread | None = None
        self.own_session = False  # whether the worker leads a session of its own (``own_session``)
        self.realtime = {"requested": policy.realtime, "generation": False, "mover": False}  # see "Scheduling"

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
                           "torch_preloaded": self.torch_preloaded, "own_session": self.own_session,
                           "realtime": {"requested": self.policy.realtime,
                                        "permitted": realtime_permitted(self.policy)},
                           "load_s": t1 - t0, "warmup_s": t2 - t1,
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
        engine.on_thread_start = lambda: self.thread_priority("generation")
        engine.warmup()
        self.engine, self.config = engine, config

    def thread_priority(self, thread: str) -> None:
        """Ask for the policy's real-time priority on the calling thread (``"generation"`` or ``"mover"``) and
        record whether it was granted (reported in ``info`` and ``stats`` as ``realtime``)."""
        self.realtime[thread] = self.policy.ask_realtime()

    # ---- generation thread -------------------------------------------------------------------------------------
    def on_block(self, engine, n: int, audio: np.ndarray, heard: np.ndarray | None) -> None:
        """Called by the engine after each block, on the generation thread: its audio goes to the output ring at
        once (this thread is the ring's only writer), the rest is queued for the reporter."""
        y = engine.read_output()
        if len(y):
            self.out_ring.write(y)
        entry = engine.last_block()
        info = {"block": int(n), "compute_s": float(entry["compute_s"]), "cpu_s": float(entry["cpu_s"]),
                "run_queue_s": float(entry["run_queue_s"]),
                "late_s": float(entry["late_s"]),
                "prompt": entry["prompt"], "samples": int(len(audio))}
        self.late_s = info["late_s"]
        if self.events.qsize() > MAX_QUEUED_BLOCKS:
            self.events_dropped += 1
            return
        # the output chunk of a later block begins with the previous block's tail, which the decoder held back
        seam_s = (n * engine.block_samples - engine.output_start(n)) / engine.sr
        self.events.put(("_block", n, info, audio, heard, engine.codec, min(seam_s, len(audio) / engine.sr)))

    # ---- mover thread ------------------------------------------------------------------------------------------
    def mover(self) -> None:
        """Input ring -> engine: every ``MOVE_PERIOD_IDLE_S`` while the engine waits for input, every
        ``MOVE_PERIOD_S`` while it computes a block."""
        self.thread_priority("mover")
        session = self.session
        while not self.quit.is_set():
            engine = self.engine
            with self.session_lock:  # a session's number and running flag change together (do_start)
                if session != self.session:  # a new session reads input from where the kernel started it
                    session = self.session
                    self.in_ring.skip() if self.input_from is None else self.in_ring.seek(self.input_from)
                x = self.in_ring.read()
                running = self.running
            if engine is not None:
                if len(x) and running and engine.cfg.mode == "jam":
                    try:
                        engine.push_input(x, engine.sr)
                    except Exception as e:  # InputError: refused, counted by the engine; the stream goes on
                        self.emit("error", one_line(e))
            busy = engine is None or engine.computing.is_set() or not self.running
            self.quit.wait(MOVE_PERIOD_S if busy else MOVE_PERIOD_IDLE_S)

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

    def send_block(self, n: int, info: dict, audio, heard, codec, seam_s: float) -> None:
        self.conn.send(("block", n, info))
        if self.block_view is None or self.events.qsize() > 4:  # behind: the views of old blocks are skipped
            return
        for source, x in (("output", audio), ("input", heard)):
            if x is None:
                continue
            try:
                header, data = self.block_view(n, x, codec, source, seam_s if source == "output" else 0.0)
            except Exception as e:  # a view must never stop the stream
                self.conn.send(("error", one_line(f"block {n} {source} view failed: {type(e).__name__}: {e}")))
                continue
            self.conn.send(("view", header, data))

    def send_stats(self) -> None:
        engine = self.engine
        if engine is None:
            return
        stats = _clean(engine.stats().summary())
        if stats.get("last_error") and stats["last_error"] != self.last_error:
            self.last_error = stats["last_error"]
            self.conn.send(("error", one_line(self.last_error)))
        if self.running and not engine.running:  # the generation thread died: say so once
            self.running = False
            self.conn.send(("error", one_line(f"the generation thread stopped: {stats.get('last_error')}")))
            self.conn.send(("status", "stopped"))
        stats.update(running=engine.running, late_s=self.late_s, input_dropped=self.in_ring.dropped,
                     events_dropped=self.events_dropped, realtime=dict(self.realtime),
                     level_guard=None if engine.level_guard is None else _clean(engine.level_guard.summary()))
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
                self.emit("error", one_line(f"could not read a command: {type(e).__name__}: {e}"))
                continue
            if self.handle(message) == "quit":
                break

    def handle(self, message) -> str | None:
        """Run one command; a bad one is answered with an error event."""
        if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
            self.emit("error", one_line(f"malformed command {message!r:.80}: expected a tuple ('name', args...) "
                                         f"with a name from {', '.join(COMMANDS)}"))
            return None
        name, args = message[0], message[1:]
        if name not in COMMANDS:
            self.emit("error", one_line(f"unknown command {name!r:.40}; valid commands: {', '.join(COMMANDS)}"))
            return None
        low, high = COMMANDS[name]
        if not low <= len(args) <= high:
            self.emit("error", f"malformed command {name!r}: expected {low}" + (f" to {high}" if high > low else "")
                      + f" argument(s), got {len(args)}")
            return None
        try:
            return getattr(self, f"do_{name}")(*args)
        except Exception as e:
            self.emit("error", one_line(f"{name} failed: {type(e).__name__}: {e}"))
            return None

    def do_start(self, config=None, input_from=None) -> None:
        from lmdm.live.engine import EngineConfig

        if input_from is not None and (isinstance(input_from, bool) or not isinstance(input_from, int)
                                       or input_from < 0):
            raise UsageError(f"start's input position must be a sample index >= 0 or None, got {input_from!r}")
        self.input_from = input_from

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
        self.emit("output_from", self.out_ring.written)  # the previous engine has stopped: nothing older comes after
        # "running" goes out before the engine's thread can queue its first block: a block is never reported
        # under the status before it
        self.emit("status", "running")
        try:
            self.engine.start()
        except Exception:
            self.emit("status", "stopped")
            raise
        with self.session_lock:  # else the mover could seek to the session's input and drop it as not running
            self.session += 1
            self.running = True

    def do_stop(self) -> None:
        self.running = False
        self.engine.stop(timeout=2.0)
        self.emit("status", "stopped")
        self.emit("_stats")

    def do_prompt(self, text) -> None:
        if not isinstance(text, str):
            raise UsageError(f"a prompt must be text, got {type(text).__name__}")
        # embedded here, on the command thread, between blocks: on a starved machine an encoding that overlapped a
        # block stretched it by 0.2 s (the browser test's prompt change, beside a busy process)
        self.engine.wait_for_gap(PROMPT_GAP_S, timeout=2 * self.engine.block_s)
        self.engine.set_prompt(text)
        self.config = replace(self.config, prompt=text)

    def do_controls(self, features, present=None) -> None:
        self.engine.set_controls(features, present)

    def do_quit(self) -> str:
        return "quit"

    def shutdown(self) -> None:
        """Stop the engine and the mover, then release the rings (neither may touch a closed ring)."""
        self.quit.set()
        self.running = False
        if self.engine is not None and not self.engine.stop(timeout=1.0):
            return  # a block still in progress writes to the output ring: leave the rings to the process's exit
        if self.mover_thread is not None:
            self.mover_thread.join(1.0)
            if self.mover_thread.is_alive():
                return  # leave the rings to the process's exit
        for ring in (self.in_ring, self.out_ring):
            ring.close()


def set_env(env: dict) -> None:
    """Set the variables of ``env`` in ``os.environ`` (None: remove)."""
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def own_session() -> bool:
    """Start a session of this process's own (see the module docstring, "Scheduling"); True if it did. A process
    that already leads a group, or a platform without sessions, keeps what it has."""
    try:
        os.setsid()
    except (AttributeError, OSError):
        return False
    return True


def realtime_permitted(policy: ThreadPolicy) -> bool:
    """Whether this process may give a thread ``policy.realtime`` priority, tried on a short-lived thread (False
    when the policy asks for none)."""
    granted = []
    probe = threading.Thread(target=lambda: granted.append(policy.ask_realtime()), name="lmdm-rt-probe")
    probe.start()
    probe.join()
    return bool(granted and granted[0])


def _watch_parent(done: threading.Event) -> None:
    """Hard exit when the kernel dies and the worker has not left on its own within 2 s (e.g. still loading)."""
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:
        return
    wait([parent.sentinel])
    if not done.wait(2.0):
        os._exit(3)


def worker_main(conn, in_name: str, out_name: str, ckpt_path: str, config_blob: bytes, env: dict,
                 policy: ThreadPolicy, preload_text_encoder: bool) -> None:
    """The worker process (spawned by :class:`WorkerClient`). Sets the thread policy's environment before torch is
    imported, loads and warms up, then serves commands until ``quit`` or the kernel's death. A failure sends
    ``("error", FATAL + its last traceback line)`` and exits with code 1."""
    torch_preloaded = "torch" in sys.modules
    session = own_session()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel decides when the worker ends (Ctrl-C is the kernel's)
    set_env(env)  # already inherited from the kernel at spawn; set again for whatever reads it from here on
    done = threading.Event()
    threading.Thread(target=_watch_parent, args=(done,), name="lmdm-worker-watchdog", daemon=True).start()
    worker = None
    reporter = None
    try:
        worker = Worker(conn, in_name, out_name, pickle.loads(config_blob), policy, torch_preloaded)
        worker.own_session = session
        reporter = threading.Thread(target=worker.reporter, name="lmdm-worker-reporter", daemon=True)
        reporter.start()
        worker.load(ckpt_path, preload_text_encoder)
        worker.mover_thread = threading.Thread(target=worker.mover, name="lmdm-worker-mover", daemon=True)
        worker.mover_thread.start()
        worker.serve()
    except BaseException as e:
        line = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__  # the traceback's last line, unqualified
        if worker is not None:
            worker.quit.set()
        if reporter is not None and reporter.is_alive():
            worker.emit("error", one_line(FATAL + line))
            worker.emit("_quit")
            reporter.join(1.0)
        else:
            try:
                conn.send(("error", one_line(FATAL + line)))
            except (OSError, EOFError):
                pass
        done.set()
        raise SystemExit(1) from None
    if worker is not None:
        worker.emit("_quit")
        reporter.join(1.0)
        worker.shutdown()
    done.set()
