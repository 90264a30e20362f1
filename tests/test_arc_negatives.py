"""ARC's contrastive negatives: every negative is a caption of another work with another text, drawn uniformly,
also for a batch from one work; a data set that cannot give one is refused with a clear error."""
import pytest
import torch

from lmdm.train.arc.negatives import Negatives, draw_negatives, negative_counts, text_ids
from lmdm.train.dataset import DataError, LatentSet


def tiny_set(texts_per_work: list[list[str]]) -> LatentSet:
    """A LatentSet of works with the given caption texts (4 frames each, all in "train")."""
    n = len(texts_per_work)
    counts = [len(t) for t in texts_per_work]
    texts = [t for ts in texts_per_work for t in ts]
    return LatentSet(latents=torch.zeros(4 * n, 8), features=torch.zeros(4 * n, 4),
                     frame_work=torch.arange(n).repeat_interleave(4).int(), work_start=torch.arange(n) * 4,
                     work_frames=torch.full((n,), 4), captions=torch.arange(len(texts)).float()[:, None].repeat(1, 3),
                     caption_start=torch.tensor([sum(counts[:i]) for i in range(n)]),
                     caption_count=torch.tensor(counts), work_ids=[f"w{i}" for i in range(n)], splits=["train"] * n,
                     texts=texts)


def test_negatives_never_describe_the_positive_even_when_the_batch_is_one_work():
    """Every negative is a caption of another work with another text, also when every crop of the batch comes
    from the same work (where rolling the batch's prompts gives items their own captions back), and a caption
    text that another work shares is never a negative of it."""
    data = tiny_set([["piano", "slow piano", "a slow chorale"], ["piano", "organ"], ["choir", "a slow chorale"]])
    neg = Negatives.of(data, "train")
    g = torch.Generator().manual_seed(0)
    seen = set()
    for positive in (torch.zeros(6, dtype=torch.long), torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(7)):
        for _ in range(50):
            rows = neg.draw(positive, g)
            for p, r in zip(positive.tolist(), rows.tolist()):
                assert neg.caption_work[r] != neg.caption_work[p] and data.texts[r] != data.texts[p]
                seen.add((p, r))
    # uniform over the candidates: work 0's "piano" has every other caption but work 1's "piano" as a negative
    assert {r for p, r in seen if p == 0} == {4, 5, 6}
    assert negative_counts(neg.caption_work, neg.caption_text, neg.allowed).tolist() == [3, 4, 3, 4, 5, 5, 4]


def test_a_data_set_without_negatives_is_refused_with_a_clear_error():
    with pytest.raises(DataError, match="work 'w0' has no contrastive negative.*1 work"):
        Negatives.of(tiny_set([["piano", "solo piano"]]), "train")
    with pytest.raises(DataError, match="no contrastive negative"):  # two works, but the same caption texts
        Negatives.of(tiny_set([["piano"], ["piano"]]), "train")
    with pytest.raises(DataError, match="caption row 0"):
        draw_negatives(torch.tensor([0]), torch.tensor([0, 0]), text_ids(["a", "b"]), torch.ones(2, dtype=torch.bool),
                       torch.Generator())
