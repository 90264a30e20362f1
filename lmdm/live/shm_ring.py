"""A single-producer single-consumer float32 audio ring in shared memory, for moving audio between two processes
(the notebook kernel and the generation worker, ``lmdm.live.worker``) without a pipe or a lock.

Layout of the block (``multiprocessing.shared_memory.SharedMemory``)::

    [0:8]    committed   uint64  samples the producer has finished writing since the start
    [8:16]   reserved    uint64  samples the producer is writing (committed + chunk while a write is in progress)
    [16:24]  capacity    uint64  samples the data area holds
    [24:64]  unused
    [64:]    data        float32 (capacity,)  sample with absolute index i lives at i % capacity

The producer never blocks: it bumps ``reserved``, copies the chunk, then sets ``committed`` (a chunk longer than
the capacity keeps its newest ``capacity`` samples). The consumer keeps its own position; a read copies
``[position, committed)`` and then re-reads ``reserved``: a sample older than ``reserved - capacity`` may have been
overwritten while it was copied, so it is discarded and counted in ``dropped``, like samples the consumer fell more
than ``capacity`` behind on. What a read returns is therefore always intact and contiguous with the previous
read unless ``dropped`` grew. (The counters are aligned 8-byte words, read and written whole; the ordering relies
on the producer's stores becoming visible in program order, as on x86 and for Python's GIL-serialised writes.)

The creator owns the block and unlinks it; a process that attaches only closes it. Python's ``SharedMemory``
registers an attached block with the resource tracker too (CPython gh-82300), which then unlinks it when the
attaching process exits, or prints a ``KeyError`` traceback when the creator unlinks it later; attaching
therefore skips that registration (``track=False`` on Python 3.13+, the registration suppressed below 3.13).
"""
from __future__ import annotations

import sys
import threading
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from lmdm.errors import UsageError

HEADER_BYTES = 64
_COMMITTED, _RESERVED, _CAPACITY = 0, 1, 2
_ATTACH_LOCK = threading.Lock()  # the <3.13 work-around swaps a module function: one attach at a time


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open an existing block without registering it with this process's resource tracker."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    with _ATTACH_LOCK:
        register = resource_tracker.register
        resource_tracker.register = lambda *args, **kwargs: None
        try:
            return shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = register


class ShmRing:
    """One end of a shared-memory audio ring (see the module docstring); make it with :meth:`create` or
    :meth:`attach`. One process writes (:meth:`write`), one reads (:meth:`read`); either end may do either, but
    only one writer and one reader at a time.

    Attributes:
        name: the shared-memory block's name (give it to :meth:`attach` in the other process).
        capacity: samples held.
        dropped: samples this reader lost: fell more than ``capacity`` behind, or overwritten while copied.
        owner: whether this end created the block (and unlinks it on :meth:`close`).
    """

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool):
        self._shm, self.owner, self.name = shm, owner, shm.name
        self._head = np.ndarray((8,), dtype=np.uint64, buffer=shm.buf)
        self.capacity = int(self._head[_CAPACITY])
        if self.capacity < 1 or HEADER_BYTES + 4 * self.capacity > shm.size:
            raise UsageError(f"shared memory {shm.name!r} is not an lmdm audio ring (capacity {self.capacity}, "
                             f"{shm.size} bytes)")
        self._data = np.ndarray((self.capacity,), dtype=np.float32, buffer=shm.buf, offset=HEADER_BYTES)
        self.position = 0
        self.dropped = 0
        self.closed = False

    @classmethod
    def create(cls, capacity: int) -> "ShmRing":
        """A new, empty ring of ``capacity`` samples (``64 + 4 * capacity`` bytes of shared memory).

        Raises:
            UsageError: ``capacity`` is not a positive whole number.
        """
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise UsageError(f"ring capacity must be a positive whole number of samples, got {capacity!r}")
        shm = shared_memory.SharedMemory(create=True, size=HEADER_BYTES + 4 * int(capacity))
        head = np.ndarray((8,), dtype=np.uint64, buffer=shm.buf)
        head[:] = 0
        head[_CAPACITY] = capacity
        del head  # no view may outlive the block (close refuses to run while one exists)
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str, from_start: bool = True) -> "ShmRing":
        """The ring another process created, by name.

        Args:
            name: the creator's :attr:`name`.
            from_start: read from sample 0 (True) or only what is written after attaching (False).

        Raises:
            FileNotFoundError: no block of that name (the creator closed it).
            UsageError: the block is not a ring.
        """
        ring = cls(_attach(name), owner=False)
        if not from_start:
            ring.skip()
        return ring

    @property
    def written(self) -> int:
        """Samples the producer has committed since the start."""
        return int(self._head[_COMMITTED])

    @property
    def available(self) -> int:
        """Samples a :meth:`read` would return now (before any drop)."""
        return min(self.written - self.position, self.capacity)

    def write(self, samples: np.ndarray) -> int:
        """Append samples; never blocks. A chunk longer than the capacity keeps its newest ``capacity`` samples
        (the older ones count as written and are dropped by the reader).

        Args:
            samples: ``(n,)`` audio, converted to float32.

        Returns:
            ``n``.
        """
        x = np.asarray(samples, dtype=np.float32).ravel()
        n = len(x)
        if n == 0:
            return 0
        total = int(self._head[_COMMITTED])
        self._head[_RESERVED] = total + n
        if n > self.capacity:
            total, x = total + n - self.capacity, x[-self.capacity:]
        i, m = total % self.capacity, len(x)
        first = min(m, self.capacity - i)
        self._data[i : i + first] = x[:first]
        self._data[: m - first] = x[first:]
        self._head[_COMMITTED] = total + m
        return n

    def read(self) -> np.ndarray:
        """Everything written since the last read: ``(n,)`` float32, contiguous with the previous read unless
        :attr:`dropped` grew (empty when nothing is new)."""
        end = int(self._head[_COMMITTED])
        start = max(self.position, end - self.capacity)
        out = np.empty(end - start, dtype=np.float32)
        i, m = start % self.capacity, end - start
        first = min(m, self.capacity - i)
        out[:first] = self._data[i : i + first]
        out[first:] = self._data[: m - first]
        safe = int(self._head[_RESERVED]) - self.capacity  # anything older may have been overwritten meanwhile
        if safe > start:
            out = out[min(safe, end) - start :]
            start = min(safe, end)
        self.dropped += start - self.position
        self.position = end
        return out

    def skip(self) -> int:
        """Forget what is unread (not counted as dropped); returns how many samples were skipped."""
        end = self.written
        skipped, self.position = end - self.position, end
        return skipped

    def seek(self, position: int) -> int:
        """Read next from absolute sample ``position`` (clamped to what the ring still holds: at most
        ``capacity`` samples back, at most :attr:`written`); nothing is counted as dropped. Returns the position
        set. A reader that had already read past ``position`` reads those samples again."""
        end = self.written
        self.position = min(max(int(position), end - self.capacity, 0), end)
        return self.position

    def close(self) -> None:
        """Release this end (the creator also unlinks the block); idempotent."""
        if self.closed:
            return
        self.closed = True
        del self._head, self._data
        self._shm.close()
        if self.owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "ShmRing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShmRing({self.name!r}, capacity={self.capacity}, owner={self.owner})"
