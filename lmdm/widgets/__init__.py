"""Custom Jupyter widgets (anywidget): the Python half of the prompt panel, the sketch pad and the live microphone.
The browser half lives in ``widgets/`` at the top of the repository."""
from .mic_jam import ClipJam, MicJam
from .prompt_panel import PromptPanel
from .sketch_pad import SketchPad

__all__ = ["ClipJam", "MicJam", "PromptPanel", "SketchPad"]
