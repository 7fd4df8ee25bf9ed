"""The hard-negative pool: its file format and one-line errors, its samples (whole images and
crops, no boxes), and the training stream it is mixed into (the sampler's share, determinism
with any worker count and across a resume, a config change on resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detmine.config import config_to_dict, load_config
from detmine.data import build_dataset
from detmine.data.hard_negatives import (
    POOL_FORMAT,
    HardNegativePool,
    PoolEntry,
    read_pool,
    sort_entries,
    write_pool,
)
from detmine.data.loader import build_dataloader
from detmine.data.negative_mining import background_indices
from detmine.data.pool_dataset import PoolDataset, WithHardNegatives, crop_window
from detmine.data.samplers import TrainingBatchSampler, pool_draw_count, pool_draws
from detmine.data.synthetic import CLASS_NAMES
from detmine.data.transforms import build_transforms
from detmine.engine import builders
from detmine.engine.resume import diff_configs
from detmine.errors import ConfigError, DataError
from detmine.matching import build_matcher


def _entries(root: Path, n: int = 4) -> list[PoolEntry]:
    """``n`` entries on the first training images of the tiny set (128 x 128)."""
    images = sorted((root / "images" / "train").glob("*.jpg"))[:n]
    return [
        PoolEntry(
            str(p), 128, 128, (10.0 + j, 20.0, 40.0 + j, 44.0), 0.9 - 0.1 * j, 1 + j % 6, "train", j + 1
        )
        for j, p in enumerate(images)
    ]


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory, tiny_coco_root) -> Path:
    pool = HardNegativePool(_entries(tiny_coco_root), list(CLASS_NAMES), {"note": "test"})
    return write_pool(tmp_path_factory.mktemp("pool") / "pool.json", pool)


# ----------------------------------------------------------------------------- the file


def test_pool_round_trip(pool_file, tiny_coco_root) -> None:
    pool = read_pool(pool_file)
    assert pool.entries == _entries(tiny_coco_root) and pool.info == {"note": "test"}
    raw = json.loads(pool_file.read_text())
    assert raw["format"] == POOL_FORMAT and raw["entries"][1]["class"] == "square"
    assert all(Path(e["path"]).is_absolute() for e in raw["entries"])


def test_relative_paths_are_read_relative_to_the_pool_file(tmp_path, tiny_coco_root) -> None:
    data = json.loads(json.dumps({"format": POOL_FORMAT, "version": 1, "entries": []}))
    data["entries"].append(
        {"path": "img/x.jpg", "width": 8, "height": 8, "box": [0, 0, 4, 4], "score": 0.5, "label": 1}
    )
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert read_pool(tmp_path / "p.json").entries[0].path == str(tmp_path / "img" / "x.jpg")


def test_entries_sort_by_score_then_path_and_are_cut_at_top(tiny_coco_root) -> None:
    entries = _entries(tiny_coco_root)
    tie = PoolEntry("/a.jpg", 8, 8, (0, 0, 1, 1), entries[0].score, 1, "folder")
    ordered = sort_entries([*reversed(entries), tie], top=3)
    assert ordered == [tie, entries[0], entries[1]]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        (json.dumps([1, 2]), "not a hard-negative pool"),
        (json.dumps({"format": POOL_FORMAT, "version": 7, "entries": []}), "version 7 is not supported"),
        (json.dumps({"format": POOL_FORMAT, "version": 1, "entries": {}}), "'entries' must be a list"),
        (
            json.dumps({"format": POOL_FORMAT, "version": 1, "entries": [{"path": "x"}]}),
            "entry 0: missing 'width'",
        ),
        (
            json.dumps(
                {
                    "format": POOL_FORMAT,
                    "version": 1,
                    "entries": [
                        {"path": "x", "width": 8, "height": 8, "box": [0, 0, 9, 4], "score": 1, "label": 1}
                    ],
                }
            ),  # fmt: skip
            "entry 0: 'box' [0, 0, 9, 4] is empty or not inside the 8x8 image",
        ),
        (
            json.dumps(
                {
                    "format": POOL_FORMAT,
                    "version": 1,
                    "entries": [
                        {"path": "x", "width": 0, "height": 8, "box": [0, 0, 1, 1], "score": 1, "label": 1}
                    ],
                }
            ),  # fmt: skip
            "entry 0: 'width' must be a positive integer, got 0",
        ),
    ],
)
def test_a_bad_pool_file_is_one_line_naming_it(tmp_path, content, needle) -> None:
    path = tmp_path / "pool.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as info:
        read_pool(path)
    message = str(info.value)
    assert message.startswith(f"hard-negative pool {path}: ") and needle in message and "\n" not in message


# ----------------------------------------------------------------------------- samples


def test_crop_windows_have_the_context_the_minimum_and_stay_inside() -> None:
    # a 20 x 10 box grown by half its size on each side: 40 x 20, centred on the box
    assert crop_window((100, 100, 120, 110), 256, 256, context=0.5, min_size=8) == (90, 95, 130, 115)
    # at least min_size per side, shifted (not clipped) into the image at the border
    assert crop_window((0, 250, 10, 256), 256, 256, context=0.5, min_size=64) == (0, 192, 64, 256)
    # never larger than the image
    assert crop_window((2, 2, 30, 30), 48, 40, context=1.0, min_size=64) == (0, 0, 48, 40)


@pytest.mark.parametrize("crop", [False, True])
def test_pool_samples_are_background_only_with_the_right_size(pool_file, crop: bool) -> None:
    pool = PoolDataset(read_pool(pool_file), transform=None, crop=crop, crop_context=0.5, crop_min_size=48)
    entry = read_pool(pool_file).entries[1]  # box 30 x 24 at (11, 20): a crop of 60 x 48
    image, target = pool[1]
    expected = (48, 60) if crop else (128, 128)
    assert tuple(image.shape) == (3, *expected) and image.dtype == torch.uint8
    assert target["orig_size"] == expected == target["input_size"] == pool.image_size(1)
    assert (
        target["boxes"].shape == (0, 4)
        and target["labels"].numel() == 0
        and target["ignore_boxes"].numel() == 0
    )
    assert target["image_id"] == -2 and pool.image_labels(1) == set()
    if crop:  # the crop is the image's pixels around the box
        from detmine.data._common import read_rgb

        full, _ = read_rgb(entry.path)
        x0, y0, x1, y1 = crop_window(entry.box, 128, 128, context=0.5, min_size=48)
        assert torch.equal(image, torch.from_numpy(full[y0:y1, x0:x1].copy()).permute(2, 0, 1))


def test_the_matcher_makes_every_anchor_of_a_pool_sample_background(pool_file) -> None:
    _, target = PoolDataset(read_pool(pool_file), transform=None)[0]
    ys, xs = torch.meshgrid(torch.arange(0, 128, 8.0), torch.arange(0, 128, 8.0), indexing="ij")
    anchors = torch.stack([xs, ys, xs + 16, ys + 16], -1).reshape(-1, 4)
    for preset, activation in (("retinanet", "sigmoid"), ("ssd", "softmax")):
        labels = build_matcher(preset, cls_activation=activation).match_targets(anchors, [target]).labels
        assert labels.shape == (1, len(anchors)) and bool((labels == 0).all())


def test_a_missing_pool_image_is_a_counted_skip(tmp_path) -> None:
    pool = HardNegativePool([PoolEntry(str(tmp_path / "gone.jpg"), 8, 8, (0, 0, 4, 4), 0.5, 1, "folder")])
    sample = PoolDataset(pool, transform=None)[0]
    assert not sample and sample.kind == "missing"


# ----------------------------------------------------------------------------- the sampler


def test_the_sampler_mixes_exactly_its_share_of_pool_samples() -> None:
    assert [pool_draw_count(n, 0.25) for n in (0, 1, 2, 12, 3000)] == [0, 0, 1, 4, 1000]
    assert pool_draw_count(10, 0.5) == 10 and pool_draw_count(7, 0.0) == 0
    n, pool, ratio = 12, 5, 0.4
    sampler = TrainingBatchSampler(n, 4, seed=3, pool_size=pool, pool_ratio=ratio)
    for epoch in range(3):
        keys = [k for batch in sampler.epoch_batches(epoch) for k in batch]
        drawn = [int(k) for k in keys if k >= n]
        assert len(drawn) == pool_draw_count(n, ratio) == 8  # 8 / 20 = 0.4
        assert sorted(int(k) for k in keys if k < n) == list(range(n))  # every image once
        assert set(drawn) <= set(range(n, n + pool))
        # no entry twice before every entry once; the copies get their own key
        assert sorted(np.bincount(np.array(drawn) - n, minlength=pool).tolist()) == [1, 1, 2, 2, 2]
        assert len({(int(k), k.repeat) for k in keys}) == len(keys)
    assert pool_draws(3, 0, pool, 8).tolist() != pool_draws(3, 1, pool, 8).tolist()  # a new draw per epoch


def test_without_a_pool_the_order_is_unchanged() -> None:
    plain = TrainingBatchSampler(10, 3, seed=5, repeat_factors=[1.5] * 10)
    pooled = TrainingBatchSampler(10, 3, seed=5, repeat_factors=[1.5] * 10, pool_size=4, pool_ratio=0.0)
    assert plain.epoch_batches(2) == pooled.epoch_batches(2)
    with pytest.raises(ConfigError, match=r"ratio must be in \[0, 1\)"):
        TrainingBatchSampler(10, 3, pool_size=4, pool_ratio=1.0)


# ----------------------------------------------------------------------------- the training stream


def _config(root: Path, pool: Path | None, *extra: str):
    return load_config(
        None,
        [
            "data.kind=coco",
            f"data.root={root}",
            "data.image_size=64",
            "data.num_workers=0",
            "data.transform_options={flip_p: 0.5, max_size: 96}",
            "train.max_iters=1",
            "train.batch_size=4",
            "train.seed=11",
            *([f"data.hard_negatives.pool={pool}"] if pool is not None else []),
            *extra,
        ],
    )


def _loader(cfg, num_workers: int = 0):
    cfg.data.num_workers = num_workers
    train_set = builders.build_dataset_split(cfg, cfg.data.train_split, True)
    return builders.build_train_loader(cfg, train_set)


def _snapshot(loader) -> list:
    return [
        (images.clone(), [(t["image_id"], t["boxes"].clone(), t["input_size"]) for t in targets])
        for images, targets in loader
    ]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0])
        and [(i, s) for i, _, s in x[1]] == [(i, s) for i, _, s in y[1]]
        and all(torch.equal(p, q) for (_, p, _), (_, q, _) in zip(x[1], y[1], strict=True))
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("crop", [False, True])
def test_the_mixed_stream_holds_the_pool_at_its_ratio_without_boxes(tiny_coco_root, pool_file, crop) -> None:
    cfg = _config(
        tiny_coco_root, pool_file, "data.hard_negatives.ratio=0.4", f"data.hard_negatives.crop={crop}"
    )
    loader = _loader(cfg)
    assert isinstance(loader.dataset.dataset, WithHardNegatives) and loader.dataset.class_names
    targets = [t for _, batch in loader for t in batch]
    pool_targets = [t for t in targets if t["image_id"] < 0]
    assert len(targets) == 12 + pool_draw_count(12, 0.4) == 20 and len(pool_targets) == 8
    assert {t["image_id"] for t in pool_targets} == {-1, -2, -3, -4}
    assert all(t["boxes"].shape == (0, 4) and t["labels"].numel() == 0 for t in pool_targets)
    sizes = {t["orig_size"] for t in pool_targets}
    assert sizes == ({(64, 64)} if crop else {(128, 128)})  # crop_min_size 64 > every box's 2x


def test_without_a_pool_the_loader_is_the_plain_one(tiny_coco_root) -> None:
    cfg = _config(tiny_coco_root, None)
    plain = build_dataloader(
        build_dataset("coco", tiny_coco_root, "train", transform=build_transforms("retinanet", 64, flip_p=0.5, max_size=96)),
        4, train=True, num_workers=0, seed=11, size_divisible=32,
    )  # fmt: skip
    assert _same(_snapshot(_loader(cfg)), _snapshot(plain))


def test_same_batches_with_0_and_2_workers_and_after_a_resume(tiny_coco_root, pool_file) -> None:
    cfg = _config(tiny_coco_root, pool_file, "data.hard_negatives.ratio=0.5", "data.hard_negatives.crop=true")
    reference = _snapshot(_loader(cfg, 0))
    assert any(t[0] < 0 for _, batch in reference for t in batch)
    assert _same(_snapshot(_loader(cfg, 2)), reference)

    first = _loader(cfg, 2)
    it = iter(first)
    head = [next(it) for _ in range(2)]
    head = [
        (images.clone(), [(t["image_id"], t["boxes"].clone(), t["input_size"]) for t in ts])
        for images, ts in head
    ]
    state = first.state_dict()
    del it
    resumed = _loader(cfg, 2)
    resumed.load_state_dict(state)
    assert _same(head + _snapshot(resumed), reference)


def test_a_bad_or_empty_pool_is_one_line_when_the_loader_is_built(tiny_coco_root, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(DataError, match=rf"^hard-negative pool {bad}: not a hard-negative pool"):
        _loader(_config(tiny_coco_root, bad))
    empty = write_pool(tmp_path / "empty.json", HardNegativePool([]))
    with pytest.raises(DataError, match="holds no entries, nothing to mix in"):
        _loader(_config(tiny_coco_root, empty))
    with pytest.raises(ConfigError, match=r"data.hard_negatives.ratio must be in \(0, 1\)"):
        _config(tiny_coco_root, empty, "data.hard_negatives.ratio=1")


def test_the_pool_is_a_config_change_on_resume_and_absent_means_off(tiny_coco_root, pool_file) -> None:
    plain = config_to_dict(_config(tiny_coco_root, None))
    pooled = config_to_dict(_config(tiny_coco_root, pool_file, "data.hard_negatives.ratio=0.3"))
    assert set(diff_configs(plain, pooled).other) == {"data.hard_negatives.pool", "data.hard_negatives.ratio"}
    older = json.loads(json.dumps(plain))
    del older["data"]["hard_negatives"]  # a run from before the section resumes unchanged
    assert not diff_configs(older, plain).other


def test_background_indices_come_from_the_annotations(tiny_coco_root) -> None:
    dataset = build_dataset("coco", tiny_coco_root, "train")
    indices = background_indices(dataset)
    assert indices and all(not dataset.image_labels(i) for i in indices)
    assert len(indices) == sum(1 for i in range(len(dataset)) if not dataset.image_labels(i))


# ----------------------------------------------------------------------------- whole runs


def _run_config(run_dir: Path, root: Path, pool: Path, *overrides: str):
    return _config(
        root,
        pool,
        f"output_dir={run_dir}",
        "data.hard_negatives.ratio=0.5",
        "data.hard_negatives.crop=true",
        "model.name=retinanet_tiny_fpn",
        "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], fpn_channels: 16, head_convs: 1}",
        "train.max_iters=4",
        "train.optimizer=adamw",
        "train.lr=0.002",
        "train.lr_schedule=constant",  # the same schedule for a run stopped early and resumed
        "train.warmup_iters=0",
        "train.checkpoint_period=2",
        "train.log_period=1",
        "train.device=cpu",
        "eval.batch_size=6",
        "vis.period=0",
        *overrides,
    )


def _train(cfg) -> dict[str, torch.Tensor]:
    from detmine.engine.run_state import seed_everything

    seed_everything(cfg.train.seed)
    train_set, val_set = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_set.num_classes)
    criterion = builders.build_criterion_from_config(cfg, model)
    trainer = builders.build_trainer(cfg, model, criterion, train_set, val_set)
    trainer.train()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_runs_with_a_pool_give_the_same_weights_with_any_workers_and_after_a_resume(
    tmp_path, tiny_coco_root, pool_file, capsys
) -> None:
    from detmine.engine.checkpoint import load_checkpoint

    reference = _train(_run_config(tmp_path / "w0", tiny_coco_root, pool_file, "data.num_workers=0"))
    runs = {
        "2 workers": _train(_run_config(tmp_path / "w2", tiny_coco_root, pool_file, "data.num_workers=2"))
    }
    stopped = tmp_path / "stopped"
    _train(_run_config(stopped, tiny_coco_root, pool_file, "train.max_iters=2"))
    state = load_checkpoint(stopped / "model_0000002.pth")
    assert state["sampler"]["loader"] == {
        "epoch": 0,
        "batches_consumed": 2,
    }  # mid-epoch: 24 samples, 6 batches
    capsys.readouterr()
    runs["resumed"] = _train(
        _run_config(stopped, tiny_coco_root, pool_file, "train.resume=true", "data.num_workers=1")
    )
    assert "resumed from" in capsys.readouterr().out
    for name, weights in runs.items():
        assert weights.keys() == reference.keys()
        for key, value in weights.items():
            torch.testing.assert_close(value, reference[key], atol=1e-6, rtol=0, msg=f"{name}: {key}")
    overrides = ("train.resume=true", "train.max_iters=6", "data.hard_negatives.ratio=0.25")
    with pytest.raises(ConfigError, match=r"data\.hard_negatives\.ratio: 0\.5 -> 0\.25"):
        _train(_run_config(stopped, tiny_coco_root, pool_file, *overrides))
