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
(``lmdm.bench.live.measure_policies``), and prints which one did best. :data:`LIVE_POLICY` is the policy the live
commands use. It is torch's default (one thread per physical core, the runtime's wait policy) until a
measurement on a quiet machine shows another policy better *both* under load and not worse when quiet; change it
here, with the numbers in the README's measured table, and nowhere else. A user's ``OMP_NUM_THREADS`` always wins.
"""
from __future__ import annotations

import os
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
    """

    threads: int | None = None
    omp_wait: str | None = None

    def __post_init__(self) -> None:
        """Raises ConfigError: threads not a positive integer or None, or an unknown wait policy."""
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.omp_wait is not None and self.omp_wait not in WAIT_POLICIES:
            raise ConfigError(f"unknown OpenMP wait policy {self.omp_wait!r}; "
                              f"choose one of {', '.join(WAIT_POLICIES)}")

    @property
    def name(self) -> str:
        """A short label, e.g. ``"2 threads, wait passive"``."""
        threads = "torch default threads" if self.threads is None else f"{self.threads} thread" + "s" * (self.threads > 1)
        return f"{threads}, wait {'default' if self.omp_wait is None else self.omp_wait.lower()}"

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

    def apply(self) -> None:
        """Set this process's thread count (the wait policy needs a fresh process: :meth:`env`). A thread count
        the user chose with ``OMP_NUM_THREADS`` is kept."""
        if self.threads is not None and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(self.threads)


#: The policy of ``lmdm generate`` and ``lmdm jam`` (see the module docstring for how it is chosen).
LIVE_POLICY = ThreadPolicy()


#: The policy of live jams, ``lmdm jam`` and the widgets' generation worker (``lmdm.live.worker``): one thread; the
#: bench's jam under a competing load is measured with it (``lmdm.bench.run.summarize``). A live block is computed after
#: about a second of idle waiting for its input, and waking OpenMP's second thread then costs more than it gives:
#: ``python scripts/worker_threads.py`` (real-time jam, 15 s, 2 cores) measured a block's compute median / max at
#: 69 / 83 ms with one thread against 99 / 113 ms with two, quiet, and 70 / 95 against 81 / 97 ms beside one
#: CPU-bound process (2 threads, passive wait: 88 / 127 and 80 / 105). Under ``lmdm bench``'s competing 2-thread load
#: a jam's blocks take a third of the time with one thread (README, "Streaming and cost").
WORKER_POLICY = ThreadPolicy(threads=1)


def use_live_threads(policy: ThreadPolicy = LIVE_POLICY) -> ThreadPolicy:
    """Apply ``policy`` (default :data:`LIVE_POLICY`; ``lmdm jam`` passes :data:`WORKER_POLICY`) to this process; the
    live commands call it before they load a model."""
    policy.apply()
    return policy
