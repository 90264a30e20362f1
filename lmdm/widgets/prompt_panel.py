"""PromptPanel: type a prompt, set guidance, steps and seed, start and stop a live stream, read RTF, latency and
underruns. A prompt change applies from the next block."""
from __future__ import annotations

import anywidget
import traitlets

from lmdm.checkpoint import Checkpoint, load_checkpoint
from lmdm.live.engine import EngineConfig, LiveEngine
from lmdm.widgets.base import EnginePump, EngineWidgetMixin, asset, stats_dict
from lmdm.widgets.messages import Limits, MessageError, RateLimiter, text_from_message


class PromptPanel(EngineWidgetMixin, anywidget.AnyWidget):
    """A live text-to-music stream in the notebook (the browser plays the blocks as they arrive).

    Traits (synced with the browser): ``prompt``, ``cfg_scale``, ``steps``, ``seed``, ``running``; read-only for
    the browser: ``stats`` (engine statistics), ``error`` (last refused input).

    Args:
        ckpt: a loaded checkpoint (default: the bundled one).
    """

    _esm = asset("audio_player.js", "prompt_panel.js")
    _css = asset("widgets.css")
    prompt = traitlets.Unicode("a slow Bach chorale on church organ").tag(sync=True)
    cfg_scale = traitlets.Float(2.0).tag(sync=True)
    steps = traitlets.Int(8).tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    stats = traitlets.Dict().tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, ckpt: Checkpoint | None = None, limits: Limits = Limits(), **kwargs):
        # plain attributes first: trait observers fire while the constructor sets traits
        self.ckpt = ckpt or load_checkpoint()
        self.limits = limits
        self.engine: LiveEngine | None = None
        self.pump: EnginePump | None = None
        self._rate = RateLimiter(limits.max_messages_per_second)
        super().__init__(**kwargs)
        self.on_msg(self._on_msg)

    @traitlets.validate("steps")
    def _valid_steps(self, proposal):
        if not 1 <= proposal["value"] <= 64:
            self.error = f"steps must be 1..64, got {proposal['value']}"
            return self.steps
        return proposal["value"]

    @traitlets.validate("cfg_scale")
    def _valid_cfg(self, proposal):
        if not 0 <= proposal["value"] <= 20:
            self.error = f"guidance must be 0..20, got {proposal['value']}"
            return self.cfg_scale
        return proposal["value"]

    @traitlets.observe("prompt")
    def _prompt_changed(self, change) -> None:
        try:
            text = text_from_message(change["new"], self.limits)
        except MessageError as e:
            self.error = str(e)
            return
        if self.engine is not None:
            self.engine.set_prompt(text)  # applies from the next block

    @traitlets.observe("running")
    def _running_changed(self, change) -> None:
        if change["new"]:
            self.start()
        else:
            self.stop()

    def start(self) -> None:
        """Start streaming with the current settings (steps, guidance and seed apply at each start)."""
        self._start_engine(EngineConfig(mode="generate", prompt=self.prompt, steps=self.steps,
                                        cfg_scale=self.cfg_scale, seed=self.seed, crossfade_s=0.04, gl_iters=32,
                                        lookahead_blocks=2))

    def _on_msg(self, _widget, content, buffers) -> None:
        try:
            self._rate.check()
            if not isinstance(content, dict) or content.get("type") not in ("ping",):
                raise MessageError(f"unexpected message {str(content)[:80]!r}")
            self.send({"type": "pong", "t": content.get("t")})
        except MessageError as e:
            self.error = str(e)

    def refresh_stats(self) -> dict:
        """Publish the engine's current statistics to the ``stats`` trait (and return them)."""
        if self.engine is not None:
            self.stats = stats_dict(self.engine)
        return self.stats
