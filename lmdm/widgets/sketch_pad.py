"""SketchPad: draw a melody on a canvas (time across, pitch up); the strokes reach Python on pointer-up, the pad
shows the resulting contour, and "generate" renders it with the prompt and plays it back."""
from __future__ import annotations

import math
import threading

import anywidget
import numpy as np
import traitlets

from lmdm.checkpoint import Checkpoint, load_checkpoint
from lmdm.control.evaluate import render_sketch
from lmdm.control.sketch import SketchError, parse_sketch, sketch_pitch
from lmdm.widgets.base import asset, send_audio
from lmdm.widgets.messages import Limits, MessageError, RateLimiter, strokes_from_message, text_from_message


class SketchPad(anywidget.AnyWidget):
    """A drawing pad for sketch-based synthesis.

    Traits: ``strokes`` (set by the browser on pointer-up: a list of strokes of ``[seconds, height]``),
    ``duration`` (s), ``pitch_range`` (MIDI low, high), ``scale``, ``prompt``; computed in Python: ``contour``
    (the drawn MIDI pitch per latent frame, 0 = nothing drawn), ``tracked`` (pitch tracked from the last render),
    ``correlation``, ``busy``, ``error``, ``strokes_received`` (how many stroke updates arrived).
    """

    _esm = asset("audio_player.js", "sketch_pad.js")
    _css = asset("widgets.css")
    strokes = traitlets.List().tag(sync=True)
    duration = traitlets.Float(8.0).tag(sync=True)
    pitch_range = traitlets.List([55, 79]).tag(sync=True)
    scale = traitlets.Unicode("C major").tag(sync=True)
    prompt = traitlets.Unicode("solo flute").tag(sync=True)
    contour = traitlets.List().tag(sync=True)
    tracked = traitlets.List().tag(sync=True)
    correlation = traitlets.Float(None, allow_none=True).tag(sync=True)  # None until a render is scored
    busy = traitlets.Bool(False).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    strokes_received = traitlets.Int(0).tag(sync=True)

    def __init__(self, ckpt: Checkpoint | None = None, limits: Limits = Limits(), **kwargs):
        # plain attributes first: trait observers fire while the constructor sets traits
        self.ckpt = ckpt or load_checkpoint()
        self.limits = limits
        self._rate = RateLimiter(limits.max_messages_per_second)
        self.last_render = None
        super().__init__(**kwargs)
        self.on_msg(self._on_msg)
        self._update_contour()

    def sketch(self):
        """The current drawing as a :class:`lmdm.control.sketch.Sketch`."""
        return parse_sketch({"strokes": self.strokes, "duration": self.duration,
                             "pitch_range": list(self.pitch_range), "scale": self.scale})

    @traitlets.observe("strokes", "duration", "pitch_range", "scale")
    def _drawing_changed(self, change) -> None:
        if change["name"] == "strokes":
            try:
                strokes_from_message(change["new"], self.limits)
            except MessageError as e:
                self.error = str(e)
                return
            self.strokes_received += 1
        self._update_contour()

    def _update_contour(self) -> None:
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sk = self.sketch()
        except (SketchError, ValueError) as e:
            self.error = str(e)
            return
        frames = int(math.ceil(self.duration * self.ckpt.codec.frame_rate))
        self.contour = [float(v) for v in sketch_pitch(sk, frames, self.ckpt.codec.frame_rate)]
        self.error = ""

    def generate(self, wait: bool = False) -> None:
        """Render the drawing with the prompt on a background thread, then play it in the browser."""
        if self.busy:
            return
        try:
            prompt = text_from_message(self.prompt, self.limits)
            sk = self.sketch()
        except (MessageError, SketchError) as e:
            self.error = str(e)
            return
        self.busy = True

        def work():
            try:
                r = render_sketch(self.ckpt, sk, prompt, max(self.duration, 1.0))
                self.last_render = r
                self.tracked = [float(v) for v in r.tracked_midi]
                self.correlation = None if np.isnan(r.correlation) else float(r.correlation)
                send_audio(self, r.audio, r.sample_rate, 0)
            except Exception as e:  # shown in the widget; the kernel carries on
                self.error = f"{type(e).__name__}: {e}"
            finally:
                self.busy = False

        t = threading.Thread(target=work, daemon=True)
        t.start()
        if wait:
            t.join()

    def _on_msg(self, _widget, content, buffers) -> None:
        try:
            self._rate.check()
            kind = content.get("type") if isinstance(content, dict) else None
            if kind == "generate":
                self.generate()
            elif kind == "ping":
                self.send({"type": "pong", "t": content.get("t")})
            else:
                raise MessageError(f"unexpected message {str(content)[:80]!r}")
        except MessageError as e:
            self.error = str(e)
