"""A uniform model soup of ARC-Forcing students: the mean of the DiT weights of students post-trained from one base
with the same config and different seeds.

Why: the students' rare level runaways (a burst of a few seconds to a minute over a 10-minute stream) differ more
between training seeds than between recipes (README, "Model soups"); averaging weights removes the part of each
student's update that is its seed's own and keeps the part the seeds share. Students fine-tuned from one base stay
in one basin, so their mean is itself a working model: the uniform soup of Wortsman et al., "Model soups: averaging
weights of multiple fine-tuned models improves accuracy without increasing inference time" (ICML 2022, section 2;
arXiv 2203.05482). Inference costs the same as one student's.

Only the DiT is averaged: the members must share the base's autoencoder, model and codec config. The level
ceilings stored in a student's info are statistics of the training data through that autoencoder (see
``lmdm.train.arc.level``), so they must agree too and are kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lmdm.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from lmdm.errors import UsageError

#: The parts of a member's config.json that must be equal across a soup (the info may differ).
SHARED = ("model", "codec", "autoencoder", "text_encoder")
#: The info entries that must be equal across a soup: the base and the data-derived level ceilings.
SHARED_INFO = ("base", "level_ceiling", "frame_level_ceiling", "sampler")


def soup_state(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several state dicts of one model, in float32.

    Args:
        states: two or more ``{name: tensor}`` dicts with the same names and shapes. Floating tensors are averaged
            in float32; other tensors (integer buffers) must be equal in all and are kept.

    Returns:
        ``{name: tensor}``, float32 where the inputs were floating point.

    Raises:
        ValueError: fewer than two states, differing names or shapes, or differing non-floating tensors.
    """
    if len(states) < 2:
        raise ValueError(f"a soup needs at least two state dicts, got {len(states)}")
    names = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != names:
            raise ValueError(f"state {i} has other tensors than state 0: {sorted(set(s) ^ names)[:5]}")
    out = {}
    for k, v in states[0].items():
        if any(s[k].shape != v.shape for s in states):
            raise ValueError(f"tensor {k!r} differs in shape between the states")
        if v.is_floating_point():
            out[k] = torch.stack([s[k].float() for s in states]).mean(0)
        elif all(torch.equal(s[k], v) for s in states):
            out[k] = v.clone()
        else:
            raise ValueError(f"non-floating tensor {k!r} differs between the states")
    return out


def make_soup(members: Sequence[str | Path], out: str | Path) -> Path:
    """Average the DiT weights of ARC students that share a base into a new checkpoint folder.

    Args:
        members: two or more checkpoint folders (``RUN/final`` of ``lmdm arc`` runs, or exports), post-trained from
            the same base checkpoint with the same model, codec and autoencoder.
        out: destination folder (replaced atomically if it exists; may not be one of ``members``).

    Returns:
        ``out``. Its ``info`` is the first member's, with ``soup`` added (the members' paths, their ARC seeds,
        iterations and CPU-hours) and ``arc_hours_cpu`` the members' sum; ``arc_config`` and ``arc_step`` are
        removed (a soup is not one run).

    Raises:
        UsageError: fewer than two members, a member given twice, ``out`` among the members, or members that do
            not share model, codec, autoencoder, base, level ceilings or sampler (the message names the first
            difference).
        CheckpointError: a member folder is missing or corrupt.
    """
    paths = [Path(m) for m in members]
    if len(paths) < 2:
        raise UsageError(f"a soup needs at least two checkpoints, got {len(paths)}")
    if len({p.resolve() for p in paths}) < len(paths):
        raise UsageError("a checkpoint is given twice; a soup's members must be distinct runs")
    out = Path(out)
    if out.resolve() in {p.resolve() for p in paths}:
        raise UsageError(f"the soup's folder {out} is one of its members; write it elsewhere")
    metas = [read_config(p) for p in paths]
    for p, m in zip(paths[1:], metas[1:]):
        for key in SHARED:
            if m.get(key) != metas[0].get(key):
                raise UsageError(f"{p} has another {key} than {paths[0]}; a soup averages students of one base")
        for key in SHARED_INFO:
            if m["info"].get(key) != metas[0]["info"].get(key):
                raise UsageError(f"{p} has another info.{key} ({m['info'].get(key)!r}) than {paths[0]} "
                                 f"({metas[0]['info'].get(key)!r}); a soup averages students of one base and data")
    loaded = [load_checkpoint(p, device="cpu") for p in paths]
    ae = [c.codec.autoencoder for c in loaded]
    if ae[0] is not None and any(not all(torch.equal(a, b) for a, b in zip(ae[0].state_dict().values(),
                                                                         x.state_dict().values())) for x in ae[1:]):
        raise UsageError("the members' autoencoders differ; a soup averages students of one base")
    first = loaded[0]
    try:
        first.model.load_state_dict(soup_state([c.model.state_dict() for c in loaded]), strict=True)
    except (RuntimeError, ValueError) as e:  # config.json agreed, so weights that do not fit are a corrupt member
        raise CheckpointError(f"the members' weights do not fit one model: {str(e)[:300]}") from e
    info = {k: v for k, v in metas[0]["info"].items() if k not in ("arc_config", "arc_step", "arc_hours_cpu")}
    info["arc_hours_cpu"] = round(sum(m["info"].get("arc_hours_cpu") or 0.0 for m in metas), 3)  # the soup's cost
    info["soup"] = {"members": [str(p) for p in paths],
                    "seeds": [(m["info"].get("arc_config") or {}).get("seed") for m in metas],
                    "arc_steps": [m["info"].get("arc_step") for m in metas],
                    "arc_hours_cpu": [m["info"].get("arc_hours_cpu") for m in metas]}
    return save_checkpoint(out, first.model, first.codec, info)
