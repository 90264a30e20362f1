"""Custom Jupyter widgets (anywidget): the Python half of the prompt panel, the sketch pad and the live microphone.
The browser half lives in ``lmdm/widgets/static/`` (package data, shipped by a plain ``pip install``)."""
from lmdm.widgets.mic_jam import ClipJam, MicJam
from lmdm.widgets.prompt_panel import PromptPanel
from lmdm.widgets.sketch_pad import SketchPad

__all__ = ["ClipJam", "MicJam", "PromptPanel", "SketchPad"]
