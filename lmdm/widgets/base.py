"""What the widgets share: their browser half (``lmdm/widgets/static/*.js``, package data loaded with
``importlib.resources``, so a plain ``pip install`` works from any folder), sending audio to the browser as binary
messages, and the pump that forwards a live engine's output and statistics."""
from __future__ import annotations

import threading
import time
from importlib import resources

import numpy as np

STATIC = resources.files("lmdm.widgets") / "static"


def asset(*names: str) -> str:
    """The browser half of a widget: the named files of ``lmdm/widgets/static/`` concatenated into one ES module.

    Raises:
        FileNotFoundError: a file is missing from the installed package (a broken install: reinstall lmdm).
    """
    parts = []
    for name in names:
        path = STATIC / name
        if not path.is_file():
            raise FileNotFoundError(f"widget asset {name} is missing from the installed lmdm package ({STATIC}); "
                                    "reinstall lmdm")
        parts.append(path.read_text(encoding="utf-8"))
    return "\n".join(parts)


def send_audio(widget, audio: np.ndarray, sample_rate: int, seq: int) -> None:
    """Send float32 audio to the browser half as one binary buffer (``{"type": "audio", "rate", "seq"}``)."""
    data = np.ascontiguousarray(audio, dtype="<f4")
    widget.send({"type": "audio", "rate": int(sample_rate), "seq": int(seq), "n": int(len(data))},
                buffers=[data.tobytes()])


class EnginePump:
    """A thread that forwards a live engine's output to the browser every ``period`` seconds and publishes its
    statistics to the widget's ``stats`` trait twice a second.

    Args:
        widget: the widget (``send`` and a ``stats`` trait).
        engine: a started ``LiveEngine``.
        period: seconds between forwards.
    """

    def __init__(self, widget, engine, period: float = 0.04):
        self.widget, self.engine, self.period = widget, engine, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmdm-widget-pump", daemon=True)
        self.seq = 0
        self.samples_sent = 0

    def start(self) -> "EnginePump":
        """Start forwarding; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        last_stats = 0.0
        while not self._stop.is_set():
            audio = self.engine.read_output()
            if len(audio):
                send_audio(self.widget, audio, self.engine.sr, self.seq)
                self.seq += 1
                self.samples_sent += len(audio)
            now = time.monotonic()
            if now - last_stats > 0.5:
                self.widget.stats = stats_dict(self.engine)
                last_stats = now
            self._stop.wait(self.period)

    def stop(self) -> None:
        """Stop forwarding and publish the final statistics."""
        self._stop.set()
        self._thread.join(timeout=1.0)
        self.widget.stats = stats_dict(self.engine)


def stats_dict(engine) -> dict:
    """JSON-ready engine statistics for a widget's readout."""
    s = engine.stats().summary()
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in s.items()}
    clean["running"] = engine.running
    return clean


def dominant_frequency(audio: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak of ``audio`` (0 for silence)."""
    if len(audio) < 256 or not np.any(audio):
        return 0.0
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spec[1:]) + 1) * sample_rate / len(audio)


class EngineWidgetMixin:
    """Start/stop of a real-time ``LiveEngine`` plus its :class:`EnginePump`, for widgets with ``ckpt``,
    ``engine``, ``pump`` attributes and ``running``/``error`` traits."""

    def _start_engine(self, cfg) -> None:
        from lmdm.live.engine import LiveEngine

        if self.engine is not None and self.engine.running:
            return
        self.engine = LiveEngine(self.ckpt, cfg, realtime=True)
        self.engine.warmup()
        self.engine.start()
        self.pump = EnginePump(self, self.engine).start()
        self.error = ""
        if not self.running:
            self.running = True

    def close(self) -> None:
        """Closing the widget stops its engine and pump threads."""
        self.stop()
        super().close()

    def stop(self) -> None:
        """Stop the stream (returns within one block)."""
        if self.engine is not None:
            self.engine.stop()
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        if self.running:
            self.running = False
