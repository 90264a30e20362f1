"""A fixed-capacity audio ring buffer addressed by absolute sample index (thread-safe)."""
from __future__ import annotations

import threading

import numpy as np


class RingBuffer:
    """The last ``capacity`` samples of a stream, addressed by absolute sample index.

    Writers append chunks of any size (1 sample or minutes: only the last ``capacity`` are kept); readers copy a
    range ``[start, stop)`` by absolute index, with zeros for samples that are not (or no longer) held.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._data = np.zeros(capacity, dtype=np.float32)
        self.total = 0  # samples written since the start
        self._lock = threading.Lock()

    def write(self, chunk: np.ndarray) -> None:
        """Append ``chunk`` ``(n,)`` float32."""
        chunk = np.asarray(chunk, dtype=np.float32).ravel()
        with self._lock:
            n = len(chunk)
            if n >= self.capacity:
                chunk = chunk[-self.capacity :]
                self.total += n - self.capacity
                n = self.capacity
            i = self.total % self.capacity
            first = min(n, self.capacity - i)
            self._data[i : i + first] = chunk[:first]
            self._data[: n - first] = chunk[first:]
            self.total += n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` by absolute index; zeros where not held (before the start of the stream,
        overwritten, or not yet written)."""
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        with self._lock:
            lo = max(start, self.total - self.capacity, 0)
            hi = min(stop, self.total)
            if hi > lo:
                i, n = lo % self.capacity, hi - lo
                first = min(n, self.capacity - i)
                out[lo - start : lo - start + first] = self._data[i : i + first]
                out[lo - start + first : hi - start] = self._data[: n - first]
        return out
