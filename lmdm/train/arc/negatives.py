"""Contrastive negatives: for each real crop, a caption that does not describe it (ARC, arXiv 2505.08175, section
3.2: real audio with its own prompt must outscore the same audio with a mismatched prompt).

Rolling the batch's prompts (item ``i`` gets item ``i - 1``'s) is not enough: two crops of the same work share its
captions, so a roll can give an item its own caption back, and a work's caption variants describe the same music.
A negative here is a caption of **another work** whose **text differs** from the positive's, drawn uniformly
from the captions of the data set's split (not only from the batch), so every item has one even when the whole
batch comes from one work. A data set that cannot give every caption such a negative (a single work, or works
whose captions are all the same text) is refused when the negatives are built, before training starts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdm.train.dataset import DataError, LatentSet


def text_ids(texts: list[str]) -> torch.Tensor:
    """``(n,)`` long: the same id for equal texts, different ids for different texts."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(t, len(ids)) for t in texts], dtype=torch.long)


def negative_counts(caption_work: torch.Tensor, caption_text: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``(n,)`` long: for each caption row, how many allowed rows are a negative of it (another work and another
    text); by inclusion-exclusion over counts, without an ``n x n`` matrix.

    Args:
        caption_work, caption_text: ``(n,)`` long, each row's work index (>= 0) and text id (:func:`text_ids`).
        allowed: ``(n,)`` bool, the rows that may be drawn as negatives.
    """
    a = allowed.double()
    by_work = torch.bincount(caption_work, weights=a, minlength=int(caption_work.max()) + 1).long()
    by_text = torch.bincount(caption_text, weights=a, minlength=int(caption_text.max()) + 1).long()
    pair = caption_work * (int(caption_text.max()) + 1) + caption_text
    _, inverse = torch.unique(pair, return_inverse=True)
    by_pair = torch.bincount(inverse, weights=a).long()
    return a.sum().long() - by_work[caption_work] - by_text[caption_text] + by_pair[inverse]


def draw_negatives(positive: torch.Tensor, caption_work: torch.Tensor, caption_text: torch.Tensor,
                   allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each positive caption row, a negative row drawn uniformly from the allowed rows of another work with
    another text.

    Args:
        positive: ``(b,)`` long caption rows of the crops.
        caption_work, caption_text, allowed: as in :func:`negative_counts`.
        generator: RNG (one uniform number per item, on the generator's device).

    Returns:
        ``(b,)`` long caption rows; ``caption_work`` and ``caption_text`` of each differ from its positive's.

    Raises:
        DataError: an item has no negative (the message names its caption row).
    """
    u = torch.rand(positive.shape, generator=generator, device=generator.device).to(positive.device)
    ok = allowed[None] & (caption_work[None] != caption_work[positive][:, None]) \
        & (caption_text[None] != caption_text[positive][:, None])  # (b, n)
    count = ok.sum(1)
    if bool((count == 0).any()):
        row = int(positive[count == 0][0])
        raise DataError(f"caption row {row} has no contrastive negative: no allowed caption of another work with "
                        "another text; the ARC contrastive loss needs 2 or more works with different captions")
    j = (u * count).long().clamp_max(count - 1)  # the j-th candidate of each row, 0-based
    return (ok & (ok.cumsum(1) == (j + 1)[:, None])).long().argmax(1)


@dataclass
class Negatives:
    """The negatives of one split of a :class:`LatentSet`: :meth:`of` checks that every caption of the split has
    one; :meth:`draw` draws them.

    Attributes:
        caption_work, caption_text: ``(n_captions,)`` long, each caption row's work index and text id.
        allowed: ``(n_captions,)`` bool, the rows of the split's works (negatives are drawn from these).
    """

    caption_work: torch.Tensor
    caption_text: torch.Tensor
    allowed: torch.Tensor

    @classmethod
    def of(cls, data: LatentSet, split: str) -> Negatives:
        """The negatives of ``data``'s works in ``split``.

        Raises:
            DataError: some caption of the split has no negative (one work; or every other work's captions are
                texts of its own); the message names the work.
        """
        work = data.caption_works()
        text = text_ids(data.texts)
        in_split = torch.tensor([s == split for s in data.splits] + [False], dtype=torch.bool)
        allowed = in_split[work]  # row -1 (no work) maps to the trailing False
        counts = negative_counts(work.clamp_min(0), text, allowed)
        bad = allowed & (counts == 0)
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            n_works = sum(s == split for s in data.splits)
            raise DataError(f"work {data.work_ids[int(work[row])]!r} has no contrastive negative: the {split!r} split "
                            f"has {n_works} work(s) and none other with a caption other than {data.texts[row]!r}; "
                            "ARC needs 2 or more works with different captions (build more data: lmdm data build)")
        return cls(work, text, allowed)

    def draw(self, positive: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(b,)`` negative caption rows for the positive rows ``(b,)`` (:func:`draw_negatives`)."""
        return draw_negatives(positive, self.caption_work, self.caption_text, self.allowed, generator)
