"""What the widgets share: their browser half (``lmdm/widgets/static/*.js``, package data loaded with
``importlib.resources``, so a plain ``pip install`` works from any folder), sending audio to the browser as binary
messages, and the pump that forwards a live engine's output and statistics."""
from __future__ import annotations

import threading
import time
from importlib import resources

import numpy as np
import traitlets

from lmdm.errors import LmdmError
from lmdm.widgets.messages import MessageError, RateLimiter, text_from_message

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


class EngineWidgetMixin(traitlets.HasTraits):
    """What the live-engine widgets (``PromptPanel``, ``MicJam``) share: the ``prompt``, ``running``, ``stats`` and
    ``error`` traits, start/stop of a real-time ``LiveEngine`` and its :class:`EnginePump`, the prompt observer
    (a change applies from the next block), and the message loop (rate limit, ping -> pong, errors shown in
    ``error``; nothing a browser sends can raise into the kernel).

    A subclass calls :meth:`_init_engine_widget` before ``super().__init__``, defines :meth:`engine_config`, and
    overrides :meth:`_on_message` for message types other than ``ping``.
    """

    prompt = traitlets.Unicode("").tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    stats = traitlets.Dict().tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def _init_engine_widget(self, ckpt, limits) -> None:
        """Plain attributes, set before the traits (observers fire while the constructor sets traits)."""
        from lmdm.checkpoint import load_checkpoint

        self.ckpt = ckpt or load_checkpoint()
        self.limits = limits
        self._rate = RateLimiter(limits.max_messages_per_second)
        self.engine = None
        self.pump: EnginePump | None = None

    def engine_config(self):
        """The ``EngineConfig`` a start uses (subclasses define it from their traits)."""
        raise NotImplementedError

    @traitlets.observe("running")
    def _running_changed(self, change) -> None:
        self.start() if change["new"] else self.stop()

    @traitlets.observe("prompt")
    def _prompt_changed(self, change) -> None:
        try:
            text = text_from_message(change["new"], self.limits)
            if self.engine is not None:
                self.engine.set_prompt(text)  # applies from the next block
        except (MessageError, LmdmError) as e:
            self.error = str(e)

    def start(self) -> None:
        """Start a real-time engine with :meth:`engine_config` (returns at once; the browser plays the blocks).
        A config or checkpoint the engine refuses is shown in ``error`` and ``running`` goes back to False."""
        from lmdm.live.engine import LiveEngine

        if self.pump is not None:  # a session is running (one that is only stopping is left to finish on its own)
            return
        try:
            self.engine = LiveEngine(self.ckpt, self.engine_config(), realtime=True)
            self.engine.warmup()
            self.engine.start()
        except LmdmError as e:
            self.error = str(e)
            self.running = False
            return
        self.pump = EnginePump(self, self.engine).start()
        self.error = ""
        if not self.running:
            self.running = True

    def stop(self) -> None:
        """Stop the stream (returns within one block) and publish the final statistics."""
        if self.engine is not None:
            self.engine.stop()
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        if self.running:
            self.running = False

    def close(self) -> None:
        """Closing the widget stops its engine and pump threads."""
        self.stop()
        super().close()

    def refresh_stats(self) -> dict:
        """Publish the engine's current statistics to the ``stats`` trait (and return them)."""
        if self.engine is not None:
            self.stats = stats_dict(self.engine)
        return self.stats

    def _on_msg(self, _widget, content, buffers) -> None:
        try:
            self._rate.check()
            kind = content.get("type") if isinstance(content, dict) else None
            if kind == "ping":
                self.send({"type": "pong", "t": content.get("t")})
            else:
                self._on_message(kind, content, buffers)
        except (MessageError, LmdmError) as e:
            self.error = str(e)

    def _on_message(self, kind, content, buffers) -> None:
        """Handle a message other than ``ping`` (already rate-limited).

        Raises:
            MessageError: a message this widget does not take (shown in ``error``).
        """
        raise MessageError(f"unexpected message {str(content)[:80]!r}")
