"""The opt-in compiled model (``lmdm.model.compile``) against the eager reference: the same blocks, through the
KV cache's window slides, the fused first step, guidance rows and a prompt change."""
import copy
import shutil

import pytest
import torch

from lmdm.errors import UsageError
from lmdm.model.compile import compile_blocks
from lmdm.streaming.streamer import BlockCausalStreamer, SamplerConfig
from lmdm.text import encode_prompts


def _stream(model, n_blocks: int = 4) -> torch.Tensor:
    s = BlockCausalStreamer(model, SamplerConfig(steps=2, cfg_scale=2.0, seed=3), keep_history=False)
    s.set_prompt(*encode_prompts("solo flute"))
    out = []
    with torch.inference_mode():
        for i in range(n_blocks):  # window of 2 chunks: blocks 2 and 3 slide the cache
            if i == 2:
                s.set_prompt(*encode_prompts("church organ"))
            out.append(s.next_block().clone())
    return torch.cat(out, 1)


def test_compiled_and_eager_streams_agree(tiny_ckpt):
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):  # set-up installs g++ as root; else: the error
        with pytest.raises(UsageError, match="C\\+\\+ compiler"):
            compile_blocks(copy.deepcopy(tiny_ckpt.model))
        return
    eager = _stream(tiny_ckpt.model)
    compiled = _stream(compile_blocks(copy.deepcopy(tiny_ckpt.model)))
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    assert eager.abs().max() > 0.1  # a real stream, not zeros agreeing with zeros


def test_compiling_without_a_cpp_compiler_says_what_to_install(tiny_ckpt, monkeypatch):
    monkeypatch.setattr("lmdm.model.compile.shutil.which", lambda name: None)
    with pytest.raises(UsageError, match="C\\+\\+ compiler"):
        compile_blocks(copy.deepcopy(tiny_ckpt.model))
