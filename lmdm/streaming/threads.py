"""Thread policies of live use: ``lmdm generate`` (:data:`LIVE_POLICY`), live jams and the widgets' worker
(:data:`WORKER_POLICY`): decided here, once.

A live stream must stay real time when another process competes for the cores. Two settings decide how PyTorch
behaves then:

* **threads** (``torch.set_num_threads``): with as many OpenMP threads as cores, every parallel region waits at
  its barrier for the slowest thread, and a thread the scheduler gave to the other process stalls the region
  for a whole time slice; with one thread there is no barrier, but also no parallel speed-up on a quiet machine.
* **OpenMP wait policy** (``OMP_WAIT_POLICY``): ``ACTIVE`` / the runtime's default (GNU libgomp spins a while
  before it sleeps) keeps idle team threads burning the cores the other process needs; ``PASSIVE`` puts them to
  sleep at once. The OpenMP runtime reads it when it starts, i.e. when ``torch`` is imported, so it can only be
  chosen for a fresh process (:meth:`ThreadPolicy.env`); :meth:`ThreadPolicy.apply` sets the thread count only.

``lmdm bench`` measures a few policies, each in a fresh process, quiet and under a competing 2-thread load
(``lmdm.bench.live.measure_policies``), and prints which one did best. :data:`LIVE_POLICY` is ``generate``'s: torch's
default threads made adaptive (below), chosen because the bench measured it better under load and not worse when
quiet; a policy changes here, with the numbers in the README's measured table, and nowhere else. A user's
``OMP_NUM_THREADS`` always wins.

A policy may also be **adaptive** (:class:`ThreadGovernor`): a stream starts with the policy's threads and drops to
one thread for as long as its thread waits for a core (Linux's run-queue accounting, :func:`run_queue_wait`), trying
its threads again every few blocks. Two threads pay on a quiet machine; under contention every parallel region waits
for the thread the scheduler took away, and one thread does not.

A policy may ask for **real-time priority** (``realtime``): the threads that carry live audio (the widgets' worker's
generation and input threads) then call :func:`request_realtime`, which moves the calling thread to the round-robin
real-time class (``SCHED_RR``) at a low priority, as audio servers do (JACK, PipeWire through rtkit). Such a thread
runs as soon as it is runnable instead of waiting behind busy processes for its CFS share; Linux still keeps 5% of
every second for ordinary threads (``/proc/sys/kernel/sched_rt_runtime_us``), and a live block needs ~10% of a core.
It needs ``CAP_SYS_NICE`` or an ``RLIMIT_RTPRIO`` of at least the priority (e.g. the ``@audio - rtprio 95`` line
JACK's packages put in ``/etc/security/limits.d``); where neither is granted the thread keeps its normal class and
the caller reports that it did.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from lmdm.config import ConfigError

WAIT_POLICIES = ("ACTIVE", "PASSIVE")


@dataclass(frozen=True)
class ThreadPolicy:
    """How many threads PyTorch uses and how idle OpenMP threads wait.

    Attributes:
        threads: ``torch.set_num_threads``; None keeps torch's default (one per physical core).
        omp_wait: ``OMP_WAIT_POLICY`` for a fresh process, "ACTIVE" or "PASSIVE"; None keeps the runtime's default
            (GNU libgomp: spin about 300k iterations, then sleep).
        adaptive: streams (``lmdm.streaming.generate``) drop to one thread while their thread waits for a core
            (:class:`ThreadGovernor`).
        realtime: the real-time priority (1-99, ``SCHED_RR``) that live audio threads ask for with
            :func:`request_realtime`; None: they stay in the normal class.
    """

    threads: int | None = None
    omp_wait: str | None = None
    adaptive: bool = False
    realtime: int | None = None

    def __post_init__(self) -> None:
        """Raises ConfigError: threads not a positive integer or None, or an unknown wait policy."""
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.omp_wait is not None and self.omp_wait not in WAIT_POLICIES:
            raise ConfigError(f"unknown OpenMP wait policy {self.omp_wait!r}; "
                              f"choose one of {', '.join(WAIT_POLICIES)}")
        if not isinstance(self.adaptive, bool):
            raise ConfigError(f"adaptive must be true or false, got {self.adaptive!r}")
        if self.realtime is not None and (isinstance(self.realtime, bool) or not isinstance(self.realtime, int)
                                          or not 1 <= self.realtime <= 99):
            raise ConfigError(f"realtime must be a priority from 1 to 99 or None, got {self.realtime!r}")

    @property
    def name(self) -> str:
        """A short label, e.g. ``"2 threads, wait passive"``."""
        threads = "torch default threads" if self.threads is None else f"{self.threads} thread" + "s" * (self.threads > 1)
        return (f"{threads}, wait {'default' if self.omp_wait is None else self.omp_wait.lower()}"
                + (", adaptive" if self.adaptive else "")
                + (f", real-time {self.realtime}" if self.realtime is not None else ""))

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a fresh process that runs under this policy (``base`` default: ``os.environ``): the
        thread variables and ``OMP_WAIT_POLICY`` set, or removed where the policy keeps a default."""
        env = dict(os.environ if base is None else base)
        for key, value in (("OMP_NUM_THREADS", self.threads), ("MKL_NUM_THREADS", self.threads),
                           ("OMP_WAIT_POLICY", self.omp_wait)):
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    def ask_realtime(self) -> bool:
        """:func:`request_realtime` at this policy's ``realtime`` priority, for the calling thread; True if it now
        runs there (False, changing nothing, when the policy asks for none or the system refuses)."""
        return self.realtime is not None and request_realtime(self.realtime)

    def apply(self) -> None:
        """Set this process's thread count (the wait policy needs a fresh process: :meth:`env`). A thread count
        the user chose with ``OMP_NUM_THREADS`` is kept."""
        global _APPLIED
        _APPLIED = self
        if self.threads is not None and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(self.threads)


_APPLIED: ThreadPolicy | None = None  # the policy this process applied last (``ThreadPolicy.apply``)


def run_queue_wait() -> float:
    """Seconds the calling thread has spent runnable but waiting for a core since it started (Linux's
    ``/proc/thread-self/schedstat``, second field); NaN where that is not available."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


def request_realtime(priority: int) -> bool:
    """Move the calling thread to the real-time round-robin class (``SCHED_RR``) at ``priority`` (1-99; see the
    module docstring); True if it is now there. Threads it starts afterwards inherit the class.

    Returns False, changing nothing, where the platform has no ``SCHED_RR`` or the process may not use it (no
    ``CAP_SYS_NICE`` and an ``RLIMIT_RTPRIO`` below ``priority``).

    Raises:
        ValueError: ``priority`` outside 1-99.
    """
    if not 1 <= priority <= 99:
        raise ValueError(f"a real-time priority is from 1 to 99, got {priority}")
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_RR"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))  # pid 0: the calling thread (Linux)
    except (PermissionError, OSError):
        return False
    return True


def is_realtime() -> bool:
    """Whether the calling thread runs in a real-time class (``SCHED_RR`` or ``SCHED_FIFO``)."""
    if not hasattr(os, "sched_getscheduler"):
        return False
    return os.sched_getscheduler(0) in (getattr(os, "SCHED_RR", -1), getattr(os, "SCHED_FIFO", -1))


class ThreadGovernor:
    """The adaptive part of a thread policy, for one stream on the calling thread.

    After each block (:meth:`after_block`, given its wall time and its run-queue wait), a block that waited for a
    core more than ``contended`` of its wall time drops torch to one thread; after ``probe_every`` blocks at one
    thread, the next block tries the full count again and drops back if still contended, waiting twice as long
    before the next try (up to ``max_probe_every``: under a lasting load, a probe block at full count is the slow
    one). :meth:`close` restores the count the stream started with.

    Args:
        threads: the count to run with when not contended (default: torch's current count).
        contended: run-queue wait over wall time above which a block counts as contended.
        probe_every: blocks at one thread before trying ``threads`` again.
        max_probe_every: the longest wait between tries.
    """

    def __init__(self, threads: int | None = None, contended: float = 0.25, probe_every: int = 8,
                 max_probe_every: int = 64):
        import torch

        self._torch = torch
        self.start_threads = torch.get_num_threads()
        self.threads = threads or self.start_threads
        self.contended, self.probe_every, self.max_probe_every = contended, probe_every, max_probe_every
        self.interval = probe_every  # blocks at one thread before the next try
        self.probing = False  # whether this block is a try at full count
        self.current = self.threads
        self.at_one = 0  # blocks run at one thread since the last drop
        self.drops = 0  # times the stream dropped to one thread
        self._set(self.threads)
        self._mark = (time.perf_counter(), run_queue_wait())

    def _set(self, n: int) -> None:
        if self._torch.get_num_threads() != n:
            self._torch.set_num_threads(n)
        self.current = n

    def start_block(self) -> None:
        """Mark the start of a block (the wall time and run-queue wait of :meth:`end_block` count from here)."""
        self._mark = (time.perf_counter(), run_queue_wait())

    def end_block(self) -> int:
        """:meth:`after_block` with the wall time and run-queue wait since :meth:`start_block`."""
        t0, w0 = self._mark
        return self.after_block(time.perf_counter() - t0, run_queue_wait() - w0)

    def after_block(self, wall_s: float, queued_s: float) -> int:
        """Decide the next block's thread count from this block's ``wall_s`` and run-queue wait ``queued_s``
        (seconds; NaN = unknown: no change); returns it."""
        if self.current == 1 and self.threads > 1:
            self.at_one += 1
            if self.at_one >= self.interval:
                self._set(self.threads)
                self.probing = True
        elif self.current > 1 and wall_s > 0 and queued_s > self.contended * wall_s:
            self.interval = min(2 * self.interval, self.max_probe_every) if self.probing else self.probe_every
            self._set(1)
            self.at_one = 0
            self.drops += 1
            self.probing = False
        elif self.current > 1:
            self.probing = False
            self.interval = self.probe_every
        return self.current

    def close(self) -> None:
        """Restore the thread count the stream started with."""
        self._set(self.start_threads)


def stream_governor() -> ThreadGovernor | None:
    """A :class:`ThreadGovernor` for a new stream when the policy this process applied is adaptive, and the user
    did not fix the thread count with ``OMP_NUM_THREADS``; otherwise None."""
    if _APPLIED is None or not _APPLIED.adaptive or "OMP_NUM_THREADS" in os.environ:
        return None
    return ThreadGovernor(_APPLIED.threads)


#: The policy of ``lmdm generate`` (see the module docstring for how it is chosen): torch's default threads, adaptive.
#: ``lmdm bench`` (2 cores, under its competing 2-thread load, 30 s of generate) measured RTF 2.11 with torch's
#: default threads against 0.33 adaptive, and 0.15 against 0.11 quiet: on a quiet machine the governor keeps both
#: threads, so adaptive costs nothing there (README, "Streaming and cost").
LIVE_POLICY = ThreadPolicy(adaptive=True)


#: The policy of live jams, ``lmdm jam`` and the widgets' generation worker (``lmdm.live.worker``): one thread; the
#: bench's jam under a competing load is measured with it (``lmdm.bench.run.summarize``). A live block is computed after
#: about a second of idle waiting for its input, and waking OpenMP's second thread then costs more than it gives:
#: ``python scripts/worker_threads.py`` (real-time jam, 15 s, 2 cores) measured a block's compute median / max at
#: 69 / 83 ms with one thread against 99 / 113 ms with two, quiet, and 70 / 95 against 81 / 97 ms beside one
#: CPU-bound process (2 threads, passive wait: 88 / 127 and 80 / 105). Under ``lmdm bench``'s competing 2-thread load
#: a jam's blocks take a third of the time with one thread (README, "Streaming and cost").
#: Its generation and input threads ask for real-time priority 1 (``SCHED_RR``, the lowest) where the system grants
#: it (see the module docstring): above every ordinary thread, below the audio I/O threads that ask for more. Chromium
#: runs its audio input, output and AudioWorklet threads at ``SCHED_RR`` 8 when it may; with the worker at 10, a
#: block's 90 ms of compute preempted them, and in 4 of 11 runs of the browser test under load the page's capture
#: stalled (no answer within 60 s, or only after 58 s). A producer with a third of a second of margin must never
#: preempt the device's own deadline.
WORKER_POLICY = ThreadPolicy(threads=1, realtime=1)


def use_live_threads(policy: ThreadPolicy = LIVE_POLICY) -> ThreadPolicy:
    """Apply ``policy`` (default :data:`LIVE_POLICY`; ``lmdm jam`` passes :data:`WORKER_POLICY`) to this process; the
    live commands call it before they load a model."""
    policy.apply()
    return policy
