"""A competing CPU load that the benchmark starts and stops itself (issue 14: real time under contention).

Live use shares the machine: a browser, a DAW, another model training. :func:`competing_load` runs, in a
subprocess, a CPU-bound loop on ``threads`` threads (float32 ``torch.matmul`` of 256x256 matrices, one OpenMP team
of ``threads``, its threads spinning between products as any OpenMP program's do), which is about what a
second PyTorch job does to the cores. The subprocess

* is always stopped: the context manager kills it on leaving, whatever ends the block (an exception, Ctrl-C);
* stops itself if its parent dies without that (``kill -9``, a crashed interpreter): it checks its parent's pid
  between products, so an orphan lives at most a few milliseconds;
* signals readiness (torch imported, threads started) before the block runs, so no measurement starts on a
  machine that is still quiet.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

_LOOP = """
import os, sys
parent = int(sys.argv[2])
import torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(256, 256)
b = torch.empty(256, 256)
torch.matmul(a, a, out=b)
print("ready", flush=True)
while os.getppid() == parent:
    for _ in range(4):
        torch.matmul(a, a, out=b)
"""


class LoadError(RuntimeError):
    """The load generator did not start (its stderr is in the message)."""


@contextlib.contextmanager
def competing_load(threads: int = 2, start_timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """Run a ``threads``-thread CPU load in a subprocess for the duration of the ``with`` block.

    Yields:
        the load's ``subprocess.Popen`` (its ``pid`` is worth recording beside the numbers measured under it).

    Raises:
        LoadError: the load process exited before it was ready, or was not ready within ``start_timeout`` s.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", _LOOP, str(threads), str(os.getpid())], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(proc, start_timeout)
        yield proc
    finally:
        stop(proc)


def _wait_ready(proc: subprocess.Popen, timeout: float) -> None:
    import selectors

    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                line = proc.stdout.readline()
                if line.strip() == "ready":
                    return
                if not line:  # end of file: the process is gone
                    break
            elif proc.poll() is not None:
                break
    code = proc.poll()
    err = "" if code is None else proc.stderr.read()[-2000:]
    why = "timeout" if code is None else f"exit status {code}"
    raise LoadError(f"the competing load did not start ({why})" + (f": {err.strip()}" if err.strip() else ""))


def stop(proc: subprocess.Popen) -> None:
    """Kill the load process and reap it (idempotent)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists and is not a zombie (Linux ``/proc``; elsewhere: ``kill(pid, 0)``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
