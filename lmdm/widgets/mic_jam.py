"""MicJam: the live microphone through the generative delay. The browser captures the microphone with an
AudioWorklet (echo cancellation, noise suppression and auto-gain off) and sends Float32 chunks as binary
messages; the kernel feeds them to a real-time jam engine and streams the answer back, which the browser plays
through a small jitter buffer. ClipJam records one phrase with ipywebrtc's AudioRecorder and jams on it."""
from __future__ import annotations

import collections
import io
import time
from dataclasses import replace

import anywidget
import numpy as np
import traitlets

from lmdm.audio.sanitize import StreamSanitizer
from lmdm.checkpoint import Checkpoint, load_checkpoint
from lmdm.live.engine import EngineConfig, InputError
from lmdm.live.ringbuffer import RingBuffer
from lmdm.widgets.base import EngineWidgetMixin, asset, dominant_frequency
from lmdm.widgets.messages import Limits, MessageError, audio_from_message


class MicJam(EngineWidgetMixin, anywidget.AnyWidget):
    """Play into the microphone; hear the model answer one block (plus a margin) later.

    Traits: ``prompt`` (the answer's timbre; applies from the next block), ``level_guard`` (from the next start;
    default: ``config``'s), ``running``, ``monitor_volume``
    (browser-side), ``stats`` (engine: latency, RTF, underruns), ``input_stats`` (what the kernel received:
    seconds, RMS, dominant frequency of the last 2 s), ``rtt_ms`` (kernel websocket round trip, measured by the
    browser), ``error``.

    The kernel sanitises what arrives (``lmdm.audio.sanitize``: one stateful resampler to the model rate; each
    repair counted in ``input_stats["repairs"]``) and moves it into the generation worker's shared input ring;
    generation, feature extraction and the live view (input and answer spectrograms, per-block LUFS and clip light,
    block boundaries) run in the worker, prepared when the widget is created (``status``: "loading", then "ready").

    Args:
        ckpt: a loaded checkpoint (default: the bundled one).
        config: the jam engine's settings (its prompt is replaced by the ``prompt`` trait at each start).
        limits: what the kernel accepts from the browser.
        warm: prepare the generation worker now (False: at the first start).
    """

    _esm = asset("audio_player.js", "live_view.js", "mic_jam.js")
    _css = asset("widgets.css")
    prompt = traitlets.Unicode("string ensemble").tag(sync=True)
    monitor_volume = traitlets.Float(0.0).tag(sync=True)
    input_stats = traitlets.Dict().tag(sync=True)
    rtt_ms = traitlets.Float(None, allow_none=True).tag(sync=True)  # None until the browser measured it

    def __init__(self, ckpt: Checkpoint | None = None, config: EngineConfig | None = None,
                 limits: Limits = Limits(), warm: bool = True, **kwargs):
        self._init_engine_widget(ckpt, limits)
        self.config = config or EngineConfig(mode="jam")
        sr = self.ckpt.codec.sample_rate
        # what the kernel received, at the model rate: the same sanitiser as the engine's, resampling statefully
        self._sanitizer = StreamSanitizer(sr, max_seconds=limits.max_audio_seconds)
        self.received = RingBuffer(2 * sr)
        self.received_seconds = 0.0
        self._last_input_stats = 0.0
        self.repairs: collections.Counter = collections.Counter()
        kwargs.setdefault("level_guard", self.config.level_guard)
        super().__init__(**kwargs)
        self.on_msg(self._on_msg)
        if warm:
            self._start_worker()

    def engine_config(self) -> EngineConfig:
        """The jam engine's settings with the current prompt and ``level_guard``."""
        return replace(self.config, prompt=self.prompt, level_guard=self.level_guard)

    def _on_message(self, kind, content, buffers) -> None:
        if kind == "audio":
            audio, rate = audio_from_message(content, buffers, self.limits)
            clean = self._received(audio, rate)
            if self.running and self.worker is not None:
                self.worker.push_input(clean)
        elif kind == "rtt":
            value = content.get("ms")
            if isinstance(value, (int, float)) and 0 <= value < 60_000:
                self.rtt_ms = float(value)
        else:
            raise MessageError(f"unexpected message {str(content)[:80]!r}")

    def _received(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """Sanitise what arrived to the model rate (repairs counted), keep its last 2 s, and publish
        ``input_stats`` (seconds, RMS and dominant frequency of the last 2 s, repairs) at most four times a second.

        Returns:
            the sanitised audio ``(samples,)`` float32 at the model's sample rate.

        Raises:
            AudioError: audio the sanitiser refuses (shown in ``error``; nothing is kept).
        """
        sr = self.ckpt.codec.sample_rate
        clean = self._sanitizer(audio, rate)
        x = clean.audio
        self.repairs.update(clean.repairs)
        self.received.write(x)
        self.received_seconds += len(audio) / rate
        now = time.monotonic()
        if now - self._last_input_stats > 0.25:
            self._last_input_stats = now
            last = self.received.read(self.received.total - 2 * sr, self.received.total)
            last = last[np.argmax(last != 0):] if np.any(last) else last
            self.input_stats = {"seconds": round(self.received_seconds, 3),
                                "rms": float(np.sqrt(np.mean(last**2))) if len(last) else 0.0,
                                "dominant_hz": dominant_frequency(last, sr), "repairs": dict(self.repairs)}
        return x


class ClipJam:
    """Record a phrase with ipywebrtc's AudioRecorder (one webm clip after recording stops, decoded with PyAV),
    then jam on it offline and play the answer.

    Args:
        ckpt: a loaded checkpoint (default: the bundled one).
        prompt: the answer's timbre.
    """

    def __init__(self, ckpt: Checkpoint | None = None, prompt: str = "string ensemble"):
        import ipywidgets as w
        from ipywebrtc import AudioRecorder, CameraStream

        self.ckpt = ckpt or load_checkpoint()
        self.stream = CameraStream(constraints={"audio": {"echoCancellation": False, "noiseSuppression": False,
                                                          "autoGainControl": False}, "video": False})
        self.recorder = AudioRecorder(stream=self.stream)
        self.prompt = w.Text(prompt, description="answer as")
        self.button = w.Button(description="jam on the recording")
        self.output = w.Output()
        self.button.on_click(lambda _: self.jam())
        self.widget = w.VBox([self.recorder, self.prompt, self.button, self.output])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def jam(self):
        """Decode the recorded clip, run it through a jam-mode engine offline and play input and answer."""
        from IPython.display import Audio, display

        from lmdm.live.jam import jam

        self.output.clear_output()
        with self.output:
            data = bytes(self.recorder.audio.value or b"")
            if not data:
                print("record a phrase first (the round button), then stop the recording")
                return None
            audio, rate = decode_webm(data)
            result = jam(self.ckpt, audio, rate, EngineConfig(mode="jam", prompt=self.prompt.value))
            display(Audio(result.mix().T, rate=result.sample_rate))
            return result


def decode_webm(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a webm/opus (or any container PyAV reads) clip into mono float32 and its sample rate.

    Raises:
        InputError: the bytes are not decodable audio.
    """
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [f.to_ndarray().ravel() for frame in container.decode(stream) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().ravel() for f in resampler.resample(None)]
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise InputError(f"could not decode the recording ({e})") from e
    if not chunks:
        raise InputError("the recording holds no audio")
    return np.concatenate(chunks).astype(np.float32), int(rate)


