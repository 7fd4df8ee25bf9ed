"""collate and build_dataloader: padding, None samples, resume through workers, seeding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from detmine.data.loader import DetectionDataLoader, build_dataloader, collate
from detmine.errors import ConfigError, DataError
from detmine.structures import Target


def make_target(image_id: int, h: int, w: int) -> Target:
    return {
        "boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]),
        "labels": torch.tensor([1]),
        "ignore_boxes": torch.zeros((0, 4)),
        "image_id": image_id,
        "orig_size": (h, w),
        "input_size": (h, w),
    }


class FakeDataset(Dataset):
    """Image i is filled with ``i % 251 + 1``; its size alternates landscape / portrait."""

    def __init__(self, n: int, bad: set[int] = frozenset(), transform=None, id_offset: int = 0) -> None:
        self.n, self.bad, self.transform, self.id_offset = n, set(bad), transform, id_offset

    def __len__(self) -> int:
        return self.n

    def image_size(self, i: int) -> tuple[int, int]:
        return (20, 30) if i % 3 else (30, 20)

    def image_labels(self, i: int) -> set[int]:
        return {1, 2} if i % 5 == 0 else {1}

    def __getitem__(self, i: int):
        if i in self.bad:
            return None
        h, w = self.image_size(i)
        image = torch.full((3, h, w), i % 251 + 1, dtype=torch.uint8)
        target = make_target(i + self.id_offset, h, w)
        if self.transform is not None:
            target["labels"] = torch.tensor([int(self.transform() * 1e9)])
        return image, target


def ids(batch) -> list[int]:
    return [t["image_id"] for t in batch[1]]


def test_collate_pads_bottom_right_to_a_multiple() -> None:
    a = torch.randint(1, 255, (3, 50, 70), dtype=torch.uint8)
    b = torch.randint(1, 255, (3, 64, 40), dtype=torch.uint8)
    images, targets = collate([(a, make_target(1, 50, 70)), None, (b, make_target(2, 64, 40))])
    assert images.shape == (2, 3, 64, 96) and images.dtype == torch.uint8
    assert [t["image_id"] for t in targets] == [1, 2]
    assert torch.equal(images[0, :, :50, :70], a) and torch.equal(images[1, :, :64, :40], b)
    assert images[0, :, 50:].eq(0).all() and images[0, :, :, 70:].eq(0).all()
    assert images[1, :, :, 40:].eq(0).all()
    assert collate([(a, make_target(1, 50, 70))], size_divisible=1)[0].shape == (1, 3, 50, 70)
    empty, none_targets = collate([None, None])
    assert empty.shape == (0, 3, 0, 0) and none_targets == []
    with pytest.raises(DataError, match="image 3 must be a uint8"):
        collate([(a.float(), make_target(3, 50, 70))])


def test_train_loader_covers_epoch_and_counts_bad_samples() -> None:
    loader = build_dataloader(FakeDataset(20, bad={3, 7}), 4, train=True, num_workers=0, seed=1)
    assert isinstance(loader, DetectionDataLoader) and len(loader) == 5
    batches = list(loader)
    seen = [i for b in batches for i in ids(b)]
    assert sorted(seen) == sorted(set(range(20)) - {3, 7})
    assert loader.num_dropped_samples == 2
    for images, targets in batches:
        assert images.shape[0] == len(targets) and images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
        for k, t in enumerate(targets):  # each image sits top-left in its slot
            h, w = t["input_size"]
            assert images[k, :, :h, :w].eq(t["image_id"] % 251 + 1).all()
    # a finished pass moves to the next epoch: a new order without set_epoch
    assert loader.state_dict() == {"epoch": 1, "batches_consumed": 0}
    assert [i for b in loader for i in ids(b)] != seen


def test_batches_of_only_bad_samples_are_skipped() -> None:
    loader = build_dataloader(FakeDataset(4, bad={0, 1, 2, 3}), 2, train=False, num_workers=0)
    assert list(loader) == [] and loader.num_dropped_samples == 4


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_through_the_loader_sees_exactly_the_remaining_batches(num_workers: int) -> None:
    dataset = FakeDataset(40)
    opts = {"num_workers": num_workers, "seed": 3, "aspect_grouping": True, "repeat_factor_threshold": 0.5}
    first = build_dataloader(dataset, 3, train=True, **opts)
    first.set_epoch(2)
    it = iter(first)
    consumed = [ids(next(it)) for _ in range(4)]  # workers have prefetched more than 4 batches
    state = first.state_dict()
    assert state == {"epoch": 2, "batches_consumed": 4}
    rest = [ids(b) for b in it]

    second = build_dataloader(dataset, 3, train=True, **opts)
    second.load_state_dict(state)
    second.set_epoch(2)
    assert [ids(b) for b in second] == rest
    fresh = build_dataloader(dataset, 3, train=True, **opts)
    fresh.set_epoch(2)
    assert consumed + rest == [ids(b) for b in fresh]
    for batch in consumed + rest:  # aspect groups are pure
        assert len({dataset.image_size(i) for i in batch}) == 1


def test_eval_loader_in_order_and_sharded() -> None:
    dataset = FakeDataset(11)
    assert [i for b in build_dataloader(dataset, 4, train=False, num_workers=0) for i in ids(b)] == list(
        range(11)
    )
    shards = [
        [
            i
            for b in build_dataloader(dataset, 2, train=False, num_workers=0, rank=r, world_size=3)
            for i in ids(b)
        ]
        for r in range(3)
    ]
    assert [i for s in shards for i in s] == list(range(11))
    with pytest.raises(ConfigError, match="only training loaders"):
        build_dataloader(dataset, 2, train=False, num_workers=0).state_dict()


def test_train_shards_disjoint_through_wrapped_datasets() -> None:
    dataset = ConcatDataset([Subset(FakeDataset(30), list(range(0, 30, 2))), FakeDataset(9, id_offset=100)])
    opts = {"num_workers": 0, "aspect_grouping": True, "world_size": 2, "drop_last": True}
    shards: list[list[int]] = []
    for r in range(2):
        shards.append([])
        for _, targets in build_dataloader(dataset, 2, train=True, rank=r, **opts):
            assert len({t["input_size"][0] > t["input_size"][1] for t in targets}) == 1  # pure groups
            shards[-1] += [t["image_id"] for t in targets]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) >= 8


class SeededNoise:
    """A stand-in transform with albumentations' ``set_random_seed`` hook."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def set_random_seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> float:
        return float(self.rng.random())


def test_workers_get_distinct_reproducible_transform_seeds() -> None:
    def draws() -> list[int]:
        loader = build_dataloader(
            FakeDataset(8, transform=SeededNoise()), 1, train=True, num_workers=2, seed=9
        )
        return [int(t["labels"][0]) for _, targets in loader for t in targets]

    first = draws()
    assert len(set(first)) == len(first)  # without reseeding, worker 0 and 1 would repeat each other
    assert draws() == first


def test_bad_loader_arguments() -> None:
    with pytest.raises(DataError, match="empty"):
        build_dataloader(FakeDataset(0), 2, train=True, num_workers=0)
    with pytest.raises(ConfigError, match="batch_size"):
        build_dataloader(FakeDataset(3), 0, train=True, num_workers=0)
    with pytest.raises(ConfigError, match="image_labels"):
        build_dataloader(
            torch.utils.data.TensorDataset(torch.zeros(3)), 1, train=True, repeat_factor_threshold=0.1
        )


# ---------------------------------------------------------------- integration with the COCO reader


def test_tiny_coco_ssd_pipeline_keeps_images_without_objects(tiny_coco_root) -> None:
    from detmine.data import build_dataset
    from detmine.data.transforms import build_transforms

    dataset = build_dataset("coco", tiny_coco_root, "train", transform=build_transforms("ssd", 96, seed=0))
    empty_ids = {dataset.image_ids[i] for i in range(len(dataset)) if not dataset.image_labels(i)}
    assert empty_ids  # the fixture has images without objects
    loader = build_dataloader(
        dataset, 4, train=True, num_workers=0, aspect_grouping=True, repeat_factor_threshold=0.3, seed=0
    )
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen: set[int] = set()
        for images, targets in loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 96, 96)
            assert images.shape[0] == len(targets)
            for t in targets:
                seen.add(t["image_id"])
                assert t["input_size"] == (96, 96)
                boxes = t["boxes"]
                assert boxes.shape == (len(t["labels"]), 4) and boxes.dtype == torch.float32
                assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all()
                assert (boxes[:, 2:] > boxes[:, :2]).all()
                assert ((t["labels"] >= 1) & (t["labels"] <= dataset.num_classes)).all()
                if t["image_id"] in empty_ids:
                    assert len(t["labels"]) == 0
        assert seen == set(dataset.image_ids)  # every image, background-only ones included
    assert loader.num_dropped_samples == 0


def test_tiny_coco_eval_pipeline_scales_boxes_and_counts_bad_images(tiny_coco_root, tmp_path) -> None:
    import shutil

    from detmine.data import build_dataset
    from detmine.data.transforms import build_transforms

    root = tmp_path / "coco"
    shutil.copytree(tiny_coco_root, root)
    plain = build_dataset("coco", root, "val")
    dataset = build_dataset("coco", root, "val", transform=build_transforms("eval", 64))
    broken = dataset.records[1].path
    with open(broken, "wb") as f:
        f.write(b"not a jpeg")
    loader = build_dataloader(dataset, 4, train=False, num_workers=0)
    with warnings.catch_warnings():  # a skip is counted by the loader, not warned per image
        warnings.simplefilter("error")
        batches = list(loader)
    got = [t for _, targets in batches for t in targets]
    assert [t["image_id"] for t in got] == [i for k, i in enumerate(dataset.image_ids) if k != 1]
    assert loader.num_dropped_samples == 1
    assert loader.skipped_summary() == (
        f"1 of {len(dataset)} images skipped: 1 unreadable; first: {broken} (cannot be decoded "
        "(corrupt or not an image))"
    )
    for t in got:
        k = dataset.image_ids.index(t["image_id"])
        h, w = dataset.image_size(k)
        scale = torch.tensor([64 / w, 64 / h, 64 / w, 64 / h])
        ref = plain.records[k].boxes
        torch.testing.assert_close(t["boxes"], torch.as_tensor(ref) * scale, atol=0.05, rtol=0)


def test_padding_follows_the_model_divisibility_and_mean() -> None:
    from detmine.data.transforms import IMAGENET_MEAN_255

    big = torch.randint(0, 255, (3, 300, 300), dtype=torch.uint8)
    small = torch.randint(0, 255, (3, 280, 290), dtype=torch.uint8)
    samples = [(big, make_target(1, 300, 300)), (small, make_target(2, 280, 290))]
    images, _ = collate(samples, size_divisible=1, pad_value=IMAGENET_MEAN_255)
    assert images.shape == (2, 3, 300, 300)
    assert torch.equal(images[0], big) and torch.equal(images[1, :, :280, :290], small)
    mean = torch.tensor([124, 116, 104], dtype=torch.uint8).view(3, 1, 1)  # rounded half up
    assert images[1, :, 280:].eq(mean).all() and images[1, :, :, 290:].eq(mean).all()
    assert collate(samples, pad_value=7)[0][1, :, 300:].eq(7).all()  # one value, all channels

    class Square(FakeDataset):
        def image_size(self, i: int) -> tuple[int, int]:
            return (300, 300)

    loader = build_dataloader(
        Square(5), 2, train=True, num_workers=0, size_divisible=1, pad_value=IMAGENET_MEAN_255
    )
    assert {tuple(images.shape[2:]) for images, _ in loader} == {(300, 300)}
    for bad in ((1, 2), (0, 0, 300), "grey"):
        with pytest.raises(ConfigError, match="pad_value"):
            build_dataloader(Square(2), 1, train=False, num_workers=0, pad_value=bad)


def test_worker_batches_equal_main_process_batches_field_by_field(tiny_coco_root) -> None:
    """Targets travel from workers as numpy arrays and the batch in shared memory: what the
    loader yields is the same tensors, dtypes and values as without workers."""
    from detmine.data import build_dataset
    from detmine.data.transforms import build_transforms

    dataset = build_dataset(
        "coco", tiny_coco_root, "train", transform=build_transforms("retinanet", 64, max_size=96)
    )
    batches = {w: list(build_dataloader(dataset, 4, train=False, num_workers=w)) for w in (0, 2)}
    assert len(batches[0]) == len(batches[2]) == 3
    for (images, targets), (images_w, targets_w) in zip(batches[0], batches[2], strict=True):
        assert images.dtype == images_w.dtype and torch.equal(images, images_w)
        for t, tw in zip(targets, targets_w, strict=True):
            assert t.keys() == tw.keys()
            for key, value in t.items():
                assert type(tw[key]) is type(value), key
                if isinstance(value, torch.Tensor):
                    assert value.dtype == tw[key].dtype and torch.equal(value, tw[key]), key
                else:
                    assert value == tw[key], key


def test_training_loaders_keep_their_workers_between_epochs() -> None:
    assert build_dataloader(FakeDataset(8), 2, train=True, num_workers=1).persistent_workers
    assert not build_dataloader(FakeDataset(8), 2, train=False, num_workers=1).persistent_workers
    assert not build_dataloader(
        FakeDataset(8), 2, train=True, num_workers=1, persistent_workers=False
    ).persistent_workers
