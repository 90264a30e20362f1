"""What the widgets share: their browser half (``lmdm/widgets/static/*.js``, package data loaded with
``importlib.resources``, so a plain ``pip install`` works from any folder), sending audio to the browser as binary
messages, and the pump that forwards a generation worker's output, live view and statistics."""
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


class WorkerPump:
    """A thread that, for a widget's lifetime, moves what its generation worker produces to the browser: audio
    as binary messages every ``period`` seconds, one ``view`` message per block (``lmdm.live.view``: mel image,
    LUFS, peak, clipped count), one ``block`` message per block (index, compute time, lateness, prompt), and the
    worker's ``status``, statistics and errors into the widget's traits.

    Nothing here waits on the worker (``WorkerClient`` never blocks), so a slow or dead worker cannot stall the
    kernel: a crash shows its message in ``error``, ``status`` becomes "crashed" and ``running`` goes back to False;
    the next start restarts the worker.

    Args:
        widget: the widget (``send``, and the ``status``, ``stats``, ``error``, ``running`` traits).
        worker: its ``lmdm.live.worker.WorkerClient``.
        period: seconds between forwards.

    Attributes:
        timeline: the ``block`` events of the current session, in order (dicts with ``block``, ``prompt``, ...).
        samples_sent: audio samples sent to the browser in the current session.
        max_gap_s: the longest time between two forwards in the current session (seconds; the period plus whatever
            held the pump up: a slow send, the kernel's GIL), reported in the widget's ``stats`` as ``pump_gap_ms``.
    """

    def __init__(self, widget, worker, period: float = 0.02):
        self.widget, self.worker, self.period = widget, worker, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmdm-widget-pump", daemon=True)
        self.seq = 0
        self.samples_sent = 0
        self.timeline: list[dict] = []
        self.max_gap_s = 0.0
        self._last = None

    def start(self) -> "WorkerPump":
        """Start forwarding; returns self."""
        self._thread.start()
        return self

    def new_session(self) -> None:
        """Forget the previous session's timeline and sample count (called at each start)."""
        self.timeline, self.samples_sent, self.max_gap_s = [], 0, 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.pump_once()
            except Exception as e:  # a bug here must not end the pump silently: show it and keep going
                self.widget.error = f"widget pump: {type(e).__name__}: {e}"
            self._stop.wait(self.period)

    def pump_once(self) -> None:
        """Forward everything that is waiting (also called directly by tests)."""
        w = self.widget
        now = time.perf_counter()
        if self._last is not None:
            self.max_gap_s = max(self.max_gap_s, now - self._last)
        self._last = now
        audio = self.worker.read_output()  # audio first: it is the only thing with a deadline
        if len(audio):
            send_audio(w, audio, self.worker.sample_rate, self.seq)
            self.seq += 1
            self.samples_sent += len(audio)
        events = self.worker.poll()  # also brings the worker's status up to date
        status = self.worker.status
        if w.status != status:  # before the blocks: whoever sees a new block sees the status it came with
            w.status = status
        for event in events:
            kind = event[0]
            if kind == "stats":
                w.stats = {**clean_stats(event[1]), "samples_sent": self.samples_sent,
                           "pump_gap_ms": round(1000 * self.max_gap_s, 1)}
            elif kind == "block":
                self.timeline.append(event[2])
                w.send({"type": "block", **event[2]})
            elif kind == "view":
                w.send(event[1], buffers=[event[2]])
            elif kind == "error":
                w.error = str(event[1])
        if status == "crashed":
            if self.worker.error and w.error != self.worker.error:
                w.error = self.worker.error
            if w.running:
                w.running = False

    def stop(self) -> None:
        """Stop forwarding (after one last forward)."""
        self._stop.set()
        self._thread.join(timeout=1.0)


def clean_stats(stats: dict) -> dict:
    """Statistics made JSON-ready for a widget trait: NaN becomes None."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in stats.items()}


def dominant_frequency(audio: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak of ``audio`` (0 for silence)."""
    if len(audio) < 256 or not np.any(audio):
        return 0.0
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spec[1:]) + 1) * sample_rate / len(audio)


class EngineWidgetMixin(traitlets.HasTraits):
    """What the live-engine widgets (``PromptPanel``, ``MicJam``) share: the ``prompt``, ``running``,
    ``level_guard``, ``status``, ``stats`` and ``error`` traits, a generation worker process
    (``lmdm.live.worker.WorkerClient``) prepared when the widget is created (warm start: model, text encoder,
    feature extraction and one warm-up block are ready before start is pressed) and its :class:`WorkerPump`, the
    prompt observer (a change applies from the next block; the worker encodes the text off its audio path), and the
    message loop (rate limit, ping -> pong, errors shown in ``error``; nothing a browser sends can raise into the
    kernel).

    The kernel side only moves bytes and updates traits: generation, decoding and the live view run in the worker,
    with torch threads of its own, so a busy kernel and the audio path do not wait for each other.

    A subclass calls :meth:`_init_engine_widget` before ``super().__init__``, :meth:`_start_worker` after it,
    defines :meth:`engine_config`, and overrides :meth:`_on_message` for message types other than ``ping``.
    """

    prompt = traitlets.Unicode("").tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    #: stream through the checkpoint's level guard from the next start (``EngineConfig.level_guard``; the stats'
    #: ``level_guard`` say how many blocks it turned down); a checkpoint without stored ceilings shows why in ``error``
    level_guard = traitlets.Bool(False).tag(sync=True)
    status = traitlets.Unicode("stopped").tag(sync=True)  # loading, ready, running, stopped, crashed, closed
    stats = traitlets.Dict().tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def _init_engine_widget(self, ckpt, limits) -> None:
        """Plain attributes, set before the traits (observers fire while the constructor sets traits)."""
        from lmdm.checkpoint import load_checkpoint

        self.ckpt = ckpt or load_checkpoint()
        self.limits = limits
        self._rate = RateLimiter(limits.max_messages_per_second)
        self.worker = None
        self.pump: WorkerPump | None = None

    def _start_worker(self) -> None:
        """Spawn the generation worker with :meth:`engine_config` and start the pump (``status`` shows "loading"
        until the worker has warmed up, then "ready"). A config or checkpoint it refuses is shown in ``error``."""
        from lmdm.live.worker import WorkerClient

        try:
            self.worker = WorkerClient(self.ckpt, self.engine_config())
        except LmdmError as e:
            self.error = str(e)
            return
        self.status = self.worker.status
        self.pump = WorkerPump(self, self.worker).start()

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
            if self.worker is not None:
                self.worker.set_prompt(text)  # applies from the next block
        except (MessageError, LmdmError) as e:
            self.error = str(e)

    def start(self) -> None:
        """Start a real-time session in the worker with :meth:`engine_config` (returns at once; the browser plays
        the blocks). A worker that crashed is restarted (warm again) first; while it is still loading, the session
        begins as soon as it is ready. A config the engine refuses is shown in ``error`` and ``running`` goes back
        to False."""
        try:
            config = self.engine_config()
            if self.worker is None:
                self._start_worker()
            elif self.worker.status in ("crashed", "closed"):
                self.worker.restart()
            if self.worker is None:
                raise LmdmError(self.error or "the generation worker could not start")
            self.pump.new_session()
            self.stats = {}  # the previous session's figures would read as this one's until the first update
            self.worker.start(config)
        except LmdmError as e:
            self.error = str(e)
            self.running = False
            return
        self.error = ""
        if not self.running:
            self.running = True

    def stop(self) -> None:
        """Stop the stream (the worker stays warm for the next start)."""
        if self.worker is not None:
            self.worker.stop()
        if self.running:
            self.running = False

    def close(self) -> None:
        """Closing the widget ends its pump thread and its worker process."""
        self.stop()
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        if self.worker is not None:
            self.worker.close()
            self.status = self.worker.status
        super().close()

    @property
    def timeline(self) -> list[dict]:
        """The current session's blocks as the worker reported them (``block``, ``prompt``, ``compute_s``,
        ``late_s``), in order."""
        return list(self.pump.timeline) if self.pump is not None else []

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
