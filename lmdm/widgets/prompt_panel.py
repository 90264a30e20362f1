"""PromptPanel: type a prompt, set guidance, steps and seed, start and stop a live stream, read RTF, latency and
underruns. A prompt change applies from the next block."""
from __future__ import annotations

import dataclasses

import anywidget
import traitlets

from lmdm.checkpoint import Checkpoint
from lmdm.config import ConfigError
from lmdm.live.engine import EngineConfig
from lmdm.streaming.streamer import SamplerConfig
from lmdm.widgets.base import EngineWidgetMixin, asset
from lmdm.widgets.messages import Limits

#: The panel's starting sampler: the ``lmdm generate`` defaults (8 ping-pong steps, guidance 2, seed 0).
PANEL_SAMPLER = SamplerConfig()

class PromptPanel(EngineWidgetMixin, anywidget.AnyWidget):
    """A live text-to-music stream in the notebook (the browser plays the blocks as they arrive).

    Traits (synced with the browser): ``prompt``, ``cfg_scale``, ``steps``, ``seed``, ``level_guard``, ``running``;
    read-only for the browser: ``stats`` (engine statistics), ``error`` (last refused input or setting). ``steps``,
    ``cfg_scale`` and ``seed`` are checked by building a :class:`lmdm.streaming.streamer.SamplerConfig`, so its
    ranges are the only ones: a value it refuses keeps the previous one and shows the reason in ``error``.

    ``status`` reads "loading" while the generation worker prepares (model, text encoder, one warm-up block),
    then "ready": a start then begins at once. The browser shows a live view of what is generated (scrolling mel
    spectrogram, per-block LUFS meter with a clip light, block boundaries marked; ``lmdm.live.view``).

    Args:
        ckpt: a loaded checkpoint (default: the bundled one).
        limits: what the kernel accepts from the browser.
        warm: prepare the generation worker now (False: at the first start, e.g. for a widget never shown).
    """

    _esm = asset("audio_player.js", "live_view.js", "prompt_panel.js")
    _css = asset("widgets.css")
    prompt = traitlets.Unicode("a slow Bach chorale on church organ").tag(sync=True)
    cfg_scale = traitlets.Float(PANEL_SAMPLER.cfg_scale).tag(sync=True)
    steps = traitlets.Int(PANEL_SAMPLER.steps).tag(sync=True)
    seed = traitlets.Int(PANEL_SAMPLER.seed).tag(sync=True)

    def __init__(self, ckpt: Checkpoint | None = None, limits: Limits = Limits(), warm: bool = True, **kwargs):
        self._init_engine_widget(ckpt, limits)
        self._sampler_error = None
        super().__init__(**kwargs)
        self.on_msg(self._on_msg)
        if warm:
            self._start_worker()

    @property
    def sampler(self) -> SamplerConfig:
        """The denoising settings of the next start (ping-pong sampling)."""
        return dataclasses.replace(PANEL_SAMPLER, steps=self.steps, cfg_scale=self.cfg_scale, seed=self.seed)

    @traitlets.validate("steps", "cfg_scale", "seed")
    def _valid_sampler(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        settings = {"steps": self.steps, "cfg_scale": self.cfg_scale, "seed": self.seed, name: value}
        try:
            dataclasses.replace(PANEL_SAMPLER, **settings)
        except ConfigError as e:  # SamplerConfig's ConfigError (a ValueError): its message names the range
            self._sampler_error = self.error = str(e)
            return getattr(self, name)
        if self.error and self.error == self._sampler_error:
            self.error = ""
        return value

    def engine_config(self) -> EngineConfig:
        """The engine's settings: the current prompt and sampler (steps, guidance, seed and the level guard apply at
        each start)."""
        return EngineConfig(mode="generate", prompt=self.prompt, sampler=self.sampler, crossfade_s=0.04, gl_iters=16,
                            decoder_lookahead=4, lookahead_blocks=2, level_guard=self.level_guard)
