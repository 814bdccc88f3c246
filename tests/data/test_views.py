"""data.views.TrainingViews: the one place a training batch gets its views and stored soft labels."""
import pytest
import torch

from sskt.data.augment import apply_view, to_float
from sskt.data.views import TrainingViews


class FakeStore:
    """K = 2 stored views per image; soft label of (image i, slot k) = [i, k]."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.views = torch.cat([torch.randint(0, 5, (n, 2, 2), generator=g), torch.randint(0, 2, (n, 2, 1), generator=g)], 2)

    def stored_views(self, index, epoch, seed):
        slot = (index + epoch + seed) % 2
        return self.views[index, slot], slot

    def soft_labels(self, index, slot, device=None):
        return {"s": torch.stack([index.float(), slot.float()], 1).to(device)}


def _batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), "index": torch.arange(n)}


def test_random_views_depend_on_seed_epoch_and_rank_only():
    def views(seed: int, epoch: int, rank: int = 0) -> torch.Tensor:
        tv = TrainingViews(padding=2, flip=True, seed=seed)
        tv.start_epoch(epoch, rank)
        return tv(_batch())["view"]

    assert torch.equal(views(0, 3), views(0, 3))  # a resumed run draws what the uninterrupted one drew
    assert not torch.equal(views(0, 3), views(0, 4))
    assert not torch.equal(views(0, 3), views(1, 3))
    assert not torch.equal(views(0, 3), views(0, 3, rank=1))


def test_stored_views_are_replayed_with_their_soft_labels():
    store = FakeStore(6)
    tv = TrainingViews(padding=2, flip=True, seed=5, store=store)
    tv.start_epoch(2)
    batch = _batch()
    out = tv(batch)
    view, slot = store.stored_views(batch["index"], 2, 5)
    assert torch.equal(out["view"], view)
    assert torch.equal(out["image"], to_float(apply_view(batch["image"], view, 2)))  # exactly the stored view
    assert torch.equal(out["soft_labels"]["s"][:, 1], slot.float())  # the soft labels of that slot
    assert out["image"].dtype == torch.float32 and float(out["image"].max()) <= 1.0


def test_a_batch_before_start_epoch_is_refused():
    with pytest.raises(RuntimeError, match="start_epoch"):
        TrainingViews(padding=2, flip=True, seed=0)(_batch())
