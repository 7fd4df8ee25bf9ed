"""CocoEvaluator / evaluate(): known answers, pycocotools as the reference, both backends equal."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detmine.errors import ConfigError, DataError
from detmine.evaluation.coco_table import COCO_STAT_NAMES
from detmine.evaluation.evaluator import CocoEvaluator, EvalResult, coco_bbox_eval, evaluate

BACKENDS = ("hotcoco", "faster_coco_eval", "pycocotools")  # also tools/evaluate.py's --backend choices
TOOL_BACKENDS = BACKENDS
CAT_IDS = (1, 3, 7)  # non-contiguous on purpose: contiguous 1, 2, 3
NAMES = ("cat", "dog", "bird")
SMALL, MEDIUM, LARGE = [10.0, 10.0, 20.0, 20.0], [60.0, 20.0, 50.0, 50.0], [20.0, 70.0, 120.0, 120.0]


class FakeDataset:
    """The dataset surface the evaluator uses, over a hand-written COCO GT."""

    def __init__(self, annotations: list[tuple[int, int, list[float], int]], num_images: int = 4) -> None:
        self.class_names = list(NAMES)
        self.num_classes = len(NAMES)
        self.contiguous_to_category_id = {k + 1: c for k, c in enumerate(CAT_IDS)}
        self.category_id_to_contiguous = {c: k + 1 for k, c in enumerate(CAT_IDS)}
        self.image_ids = list(range(1, num_images + 1))
        self._gt = {
            "images": [
                {"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in self.image_ids
            ],
            "annotations": [
                {
                    "id": k + 1,
                    "image_id": i,
                    "category_id": c,
                    "bbox": b,
                    "area": b[2] * b[3],
                    "iscrowd": crowd,
                }
                for k, (i, c, b, crowd) in enumerate(annotations)
            ],
            "categories": [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES, strict=True)],
        }

    def coco_gt_dict(self) -> dict:
        return copy.deepcopy(self._gt)

    def __len__(self) -> int:
        return len(self.image_ids)


class VOCDetection(FakeDataset):
    """Named like detmine.data.voc.VOCDetection: VOC metrics switch on by default."""


def _xyxy(xywh: list[float]) -> list[float]:
    return [xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3]]


def _dets(items: list[tuple[list[float], float, int]]) -> dict:
    """Detections of one image from (xywh box, score, contiguous label)."""
    if not items:
        return {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }
    return {
        "boxes": torch.tensor([_xyxy(b) for b, _, _ in items], dtype=torch.float32),
        "scores": torch.tensor([s for _, s, _ in items], dtype=torch.float32),
        "labels": torch.tensor([lab for _, _, lab in items], dtype=torch.int64),
    }


def _run(dataset, per_image: dict[int, list], backend: str, **kwargs) -> tuple[EvalResult, CocoEvaluator]:
    ev = CocoEvaluator(dataset, backend=backend, **kwargs)
    ids = sorted(per_image)
    ev.process([{"image_id": i} for i in ids], [_dets(per_image[i]) for i in ids])
    return ev.summarize(), ev


def _pycocotools_reference(gt: dict, results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools run directly: (stats [12], precision [T, R, K, A, M])."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return np.array(coco_eval.stats), coco_eval.eval["precision"]


def _gt_three_sizes() -> list[tuple[int, int, list[float], int]]:
    # image 1: cat small + dog medium; image 2: dog large + bird small; image 3: cat large; image 4: empty.
    return [(1, 1, SMALL, 0), (1, 3, MEDIUM, 0), (2, 3, LARGE, 0), (2, 7, SMALL, 0), (3, 1, LARGE, 0)]


def _perfect() -> dict[int, list]:
    return {
        1: [(SMALL, 0.9, 1), (MEDIUM, 0.8, 2)],
        2: [(LARGE, 0.7, 2), (SMALL, 0.6, 3)],
        3: [(LARGE, 0.5, 1)],
        4: [],
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_give_one(backend):
    result, ev = _run(FakeDataset(_gt_three_sizes()), _perfect(), backend)
    for name in COCO_STAT_NAMES:
        assert result.stats[name] == pytest.approx(1.0, abs=1e-12), name
    assert result.per_class_ap == pytest.approx({"cat": 1.0, "dog": 1.0, "bird": 1.0}, abs=1e-12)
    ref_stats, ref_precision = _pycocotools_reference(FakeDataset(_gt_three_sizes())._gt, ev.results_json())
    np.testing.assert_allclose([result.stats[n] for n in COCO_STAT_NAMES], ref_stats, atol=1e-12)
    np.testing.assert_allclose(result.precision, ref_precision, atol=1e-12)
    assert result.precision.shape == (10, 101, 3, 4, 3)
    assert result.class_names == list(NAMES)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in result.table
    assert "dog" in result.table and "VOC" not in result.table


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_wrong_class_has_known_ap(backend):
    # dog (2 boxes): two false positives outscore both true positives -> precision envelope 0.5 at
    # every recall -> AP 0.5 at every IoU; cat and bird perfect.
    gt = [(1, 1, SMALL, 0), (1, 3, MEDIUM, 0), (2, 3, LARGE, 0), (2, 7, SMALL, 0)]
    far = [150.0, 150.0, 40.0, 40.0]
    per_image = {
        1: [(SMALL, 0.9, 1), (MEDIUM, 0.5, 2), (far, 0.95, 2)],
        2: [(LARGE, 0.4, 2), (far, 0.97, 2), (SMALL, 0.6, 3)],
    }
    result, ev = _run(FakeDataset(gt, num_images=2), per_image, backend)
    assert result.per_class_ap["dog"] == pytest.approx(0.5, abs=1e-12)
    assert result.per_class_ap["cat"] == pytest.approx(1.0, abs=1e-12)
    assert result.per_class_ap["bird"] == pytest.approx(1.0, abs=1e-12)
    assert result.stats["AP"] == pytest.approx(2.5 / 3, abs=1e-12)
    assert result.stats["AP50"] == pytest.approx(2.5 / 3, abs=1e-12)
    assert result.stats["AR100"] == pytest.approx(1.0, abs=1e-12)
    ref_stats, _ = _pycocotools_reference(FakeDataset(gt, num_images=2)._gt, ev.results_json())
    np.testing.assert_allclose([result.stats[n] for n in COCO_STAT_NAMES], ref_stats, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interleaved_hits_have_known_ap(backend):
    # dog ranked TP, FP, TP, FP: envelope 1 up to recall .5 (51 of the 101 recall points), 2/3 after.
    gt = [(1, 3, MEDIUM, 0), (2, 3, LARGE, 0)]
    far = [150.0, 150.0, 40.0, 40.0]
    per_image = {1: [(MEDIUM, 0.9, 2), (far, 0.8, 2)], 2: [(LARGE, 0.7, 2), (far, 0.6, 2)]}
    result, _ = _run(FakeDataset(gt, num_images=2), per_image, backend, metrics=("coco", "voc"))
    assert result.per_class_ap["dog"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert math.isnan(result.per_class_ap["cat"])  # no GT: undefined, left out of the mean
    assert result.stats["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert result.stats["VOC07_mAP"] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)
    assert result.stats["VOC_mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    assert "VOC07 11-point mAP" in result.table and "n/a" in result.table


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_map_back_to_original_category_ids(backend):
    result, ev = _run(FakeDataset(_gt_three_sizes()), _perfect(), backend)
    res = ev.results_json()
    assert sorted({r["category_id"] for r in res}) == [1, 3, 7]
    by_key = {(r["image_id"], r["category_id"]): r for r in res}
    assert by_key[(2, 7)]["bbox"] == pytest.approx(SMALL)  # contiguous 3 -> category 7, xyxy -> xywh
    assert by_key[(1, 3)]["bbox"] == pytest.approx(MEDIUM)
    assert by_key[(1, 1)]["score"] == pytest.approx(0.9)
    assert set(by_key[(1, 1)]) == {"image_id", "category_id", "bbox", "score"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_crowd_ground_truth_is_ignored(backend):
    crowd_box = [100.0, 100.0, 60.0, 60.0]
    gt = [(1, 1, SMALL, 0), (1, 1, crowd_box, 1)]
    on_crowd = {1: [(SMALL, 0.5, 1), (crowd_box, 0.9, 1)]}  # the higher-scored one lies on the crowd
    result, _ = _run(FakeDataset(gt, num_images=1), on_crowd, backend)
    assert result.stats["AP"] == pytest.approx(1.0, abs=1e-12)
    assert result.stats["APl"] == -1.0  # the crowd box is the only large one: no countable GT there
    # The same detection away from the crowd region is a false positive that outranks the hit.
    away = {1: [(SMALL, 0.5, 1), ([20.0, 120.0, 60.0, 60.0], 0.9, 1)]}
    result_away, _ = _run(FakeDataset(gt, num_images=1), away, backend)
    assert result_away.stats["AP"] == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_detections_give_zero(backend):
    empty = {i: [] for i in range(1, 5)}
    result, ev = _run(FakeDataset(_gt_three_sizes()), empty, backend, metrics=("coco", "voc"))
    assert ev.results_json() == []
    for name in (*COCO_STAT_NAMES, "VOC07_mAP", "VOC_mAP"):
        assert result.stats[name] == 0.0, name
    assert result.per_class_ap == {"cat": 0.0, "dog": 0.0, "bird": 0.0}


def _random_fixture(seed: int = 0, num_images: int = 40):
    rng = np.random.default_rng(seed)
    gt, per_image = [], {}
    for image_id in range(1, num_images + 1):
        dets = []
        for _ in range(rng.integers(0, 6)):
            w, h = np.exp(rng.uniform(np.log(8), np.log(150), 2))
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 200 - h)
            label = int(rng.integers(1, 4))
            gt.append((image_id, CAT_IDS[label - 1], [x, y, w, h], int(rng.random() < 0.05)))
            for _ in range(rng.integers(0, 3)):  # misses, hits at various IoUs, duplicates
                box = list(np.add([x, y, w, h], rng.normal(0, 0.1, 4) * [w, h, w, h]))
                lab = label if rng.random() < 0.85 else int(rng.integers(1, 4))
                dets.append((box, float(rng.random()), lab))
        for _ in range(rng.integers(0, 4)):  # background false positives
            dets.append(
                (
                    [*rng.uniform(0, 150, 2), *rng.uniform(5, 50, 2)],
                    float(rng.random()),
                    int(rng.integers(1, 4)),
                )
            )
        per_image[image_id] = dets
    return FakeDataset(gt, num_images=num_images), per_image


def test_backends_agree_with_each_other_and_pycocotools():
    dataset, per_image = _random_fixture()
    fast, ev = _run(dataset, per_image, "faster_coco_eval")
    slow, _ = _run(dataset, per_image, "pycocotools")
    ref_stats, ref_precision = _pycocotools_reference(dataset._gt, ev.results_json())
    for name, ref in zip(COCO_STAT_NAMES, ref_stats, strict=True):
        assert fast.stats[name] == pytest.approx(ref, abs=1e-12), name
        assert slow.stats[name] == pytest.approx(ref, abs=1e-12), name
    assert fast.per_class_ap == pytest.approx(slow.per_class_ap, abs=1e-12)
    np.testing.assert_allclose(fast.precision, ref_precision, atol=1e-12)
    np.testing.assert_allclose(slow.precision, ref_precision, atol=1e-12)
    assert 0.1 < fast.stats["AP"] < 0.9  # a real mix of hits, misses and false positives
    hot, _ = _run(dataset, per_image, "hotcoco")  # through the evaluator: bit for bit
    assert hot.stats == slow.stats and hot.per_class_ap == slow.per_class_ap
    np.testing.assert_array_equal(hot.precision, slow.precision)


def _results(per_image: dict[int, list]) -> list[dict]:
    """COCO results of ``(xywh box, score, contiguous label)`` per image."""
    return [
        {"image_id": i, "category_id": CAT_IDS[label - 1], "bbox": box, "score": score}
        for i, items in per_image.items()
        for box, score, label in items
    ]


def _many_detections_fixture() -> tuple[FakeDataset, dict[int, list]]:
    """Image 1: 15 cats among 120 detections (jittered hits, duplicates, background), so that
    maxDets 1 / 10 / 100 all cut; image 2: a handful."""
    rng = np.random.default_rng(3)
    gt, per_image = [], {1: [], 2: []}
    for _ in range(15):
        w, h = (float(v) for v in rng.uniform(10, 60, 2))
        box = [float(rng.uniform(0, 200 - w)), float(rng.uniform(0, 200 - h)), w, h]
        gt.append((1, CAT_IDS[0], box, 0))
        for _ in range(3):  # hits and duplicates at various IoUs
            jittered = np.add(box, rng.normal(0, 0.1, 4) * [w, h, w, h]).tolist()
            per_image[1].append((jittered, float(rng.random()), 1))
    while len(per_image[1]) < 120:
        per_image[1].append(([*rng.uniform(0, 150, 2), *rng.uniform(5, 50, 2)], float(rng.random()), 1))
    gt.append((2, CAT_IDS[1], MEDIUM, 0))
    per_image[2] = [(MEDIUM, 0.3, 2), (LARGE, 0.9, 2), (SMALL, 0.5, 1)]
    return FakeDataset(gt, num_images=2), per_image


def _every_fixture() -> dict[str, tuple[dict, list[dict], list[int] | None]]:
    """Every ground truth / results pair of this file: ``name -> (gt, results, image_ids)``."""
    far = [150.0, 150.0, 40.0, 40.0]
    crowd_box = [100.0, 100.0, 60.0, 60.0]
    crowd_gt = FakeDataset([(1, 1, SMALL, 0), (1, 1, crowd_box, 1)], num_images=1)._gt
    fixtures = {
        "perfect, three sizes, an empty image": (FakeDataset(_gt_three_sizes())._gt, _results(_perfect()), None),
        "half wrong class": (
            FakeDataset([(1, 1, SMALL, 0), (1, 3, MEDIUM, 0), (2, 3, LARGE, 0), (2, 7, SMALL, 0)], 2)._gt,
            _results({1: [(SMALL, 0.9, 1), (MEDIUM, 0.5, 2), (far, 0.95, 2)],
                      2: [(LARGE, 0.4, 2), (far, 0.97, 2), (SMALL, 0.6, 3)]}),
            None,
        ),
        "interleaved hits": (
            FakeDataset([(1, 3, MEDIUM, 0), (2, 3, LARGE, 0)], num_images=2)._gt,
            _results({1: [(MEDIUM, 0.9, 2), (far, 0.8, 2)], 2: [(LARGE, 0.7, 2), (far, 0.6, 2)]}),
            None,
        ),
        "crowd hit": (crowd_gt, _results({1: [(SMALL, 0.5, 1), (crowd_box, 0.9, 1)]}), None),
        "crowd missed": (crowd_gt, _results({1: [(SMALL, 0.5, 1), ([20.0, 120.0, 60.0, 60.0], 0.9, 1)]}), None),
        "no detections": (FakeDataset(_gt_three_sizes())._gt, [], None),
        "subset of images": (FakeDataset(_gt_three_sizes())._gt, _results({1: _perfect()[1]}), [1]),
    }  # fmt: skip
    for seed, num_images in ((0, 40), (1, 10)):
        dataset, per_image = _random_fixture(seed, num_images)
        fixtures[f"random {seed}"] = (dataset._gt, _results(per_image), None)
    unknown = {"image_id": 1, "category_id": 99, "bbox": SMALL, "score": 0.99}  # never scored
    fixtures["random 1, a category not in the ground truth"] = (
        dataset._gt,
        [*_results(per_image), unknown],
        None,
    )
    dataset, per_image = _random_fixture(0)
    fixtures["random 0, images 1-20"] = (dataset._gt, _results(per_image), list(range(1, 21)))
    dataset, per_image = _many_detections_fixture()
    fixtures["120 detections on an image"] = (dataset._gt, _results(per_image), None)
    return fixtures


@pytest.mark.parametrize("backend", ["faster_coco_eval", "hotcoco"])
def test_backends_equal_pycocotools_on_every_fixture(backend):
    """The 12 stats and the precision array [T, R, K, A, M] of every fixture of this file equal
    pycocotools' (hotcoco: bit for bit; faster-coco-eval: to 1e-15, pycocotools adds an epsilon
    to the precision denominator)."""
    for name, (gt, results, image_ids) in _every_fixture().items():
        ref_stats, ref_precision, ref_cats = coco_bbox_eval(gt, results, "pycocotools", image_ids)
        stats, precision, cats = coco_bbox_eval(gt, results, backend, image_ids)
        assert cats == ref_cats == list(CAT_IDS), name
        assert precision.shape == ref_precision.shape == (10, 101, 3, 4, 3), name
        if backend == "hotcoco":
            np.testing.assert_array_equal(stats, ref_stats, err_msg=name)
            np.testing.assert_array_equal(precision, ref_precision, err_msg=name)
        else:
            np.testing.assert_allclose(stats, ref_stats, rtol=0, atol=1e-15, err_msg=name)
            np.testing.assert_allclose(precision, ref_precision, rtol=0, atol=1e-15, err_msg=name)
    many = _every_fixture()["120 detections on an image"]
    stats = coco_bbox_eval(*many[:2], "pycocotools")[0]
    assert stats[6] < stats[7] < stats[8]  # AR1 < AR10 < AR100: every maxDets cuts


def test_gathered_ranks_equal_one_process():
    dataset, per_image = _random_fixture(seed=1, num_images=10)
    single, _ = _run(dataset, per_image, "faster_coco_eval")
    # Rank 0 gets images 1..5, rank 1 images 6..10 plus image 1 again (DistributedSampler padding).
    shards = {0: [1, 2, 3, 4, 5], 1: [6, 7, 8, 9, 10, 1]}
    payloads: dict[int, list] = {}
    evaluators = {}
    for rank in (1, 0):  # rank 1 "arrives" first; rank 0's gather returns both payloads

        def gather(obj, rank=rank):
            payloads[rank] = obj
            return [payloads.get(0, []), payloads.get(1, [])]

        ev = CocoEvaluator(dataset, gather_fn=gather, is_main=rank == 0)
        ids = shards[rank]
        ev.process([{"image_id": i} for i in ids], [_dets(per_image[i]) for i in ids])
        evaluators[rank] = ev
    assert evaluators[1].summarize() is None
    merged = evaluators[0].summarize()
    assert merged.stats == pytest.approx(single.stats, abs=1e-12)
    assert evaluators[0].image_ids == list(range(1, 11))
    # A flat (already concatenated) gather result is accepted too.
    flat = CocoEvaluator(dataset, gather_fn=lambda obj: payloads[1] + payloads[0])
    assert flat.summarize().stats == pytest.approx(single.stats, abs=1e-12)


def test_subset_of_images_is_evaluated_with_a_warning():
    dataset = FakeDataset(_gt_three_sizes())
    ev = CocoEvaluator(dataset)
    ev.process([{"image_id": 1}], [_dets(_perfect()[1])])
    with pytest.warns(UserWarning, match="1 of 4 ground-truth images"):
        result = ev.summarize()
    assert result.stats["AP"] == pytest.approx(1.0, abs=1e-12)  # image 2/3 boxes not counted as misses


def test_voc_metrics_switch_on_for_voc_datasets_and_results_are_written(tmp_path):
    result, ev = _run(VOCDetection(_gt_three_sizes()), _perfect(), "faster_coco_eval")
    assert result.stats["VOC07_mAP"] == pytest.approx(1.0) and result.stats["VOC_mAP"] == pytest.approx(1.0)
    assert result.per_class_voc_ap == pytest.approx({"cat": 1.0, "dog": 1.0, "bird": 1.0})
    path = ev.write_results(tmp_path / "out" / "results.json")
    assert json.loads(path.read_text()) == ev.results_json()  # float64 round-trips exactly
    assert len(ev.results_json()) == 5
    assert json.dumps(result.to_dict())  # JSON-ready


def test_non_finite_detections_are_dropped_and_counted():
    dataset = FakeDataset(_gt_three_sizes())
    ev = CocoEvaluator(dataset)
    dets = [_dets(_perfect()[i]) for i in range(1, 5)]
    dets[0]["boxes"][0, 2] = float("nan")  # image 1, the cat box
    dets[1]["scores"][1] = float("inf")  # image 2, the bird box
    ev.process([{"image_id": i} for i in range(1, 5)], dets)
    with pytest.warns(UserWarning, match="dropped 2 detections with a non-finite"):
        result = ev.summarize()
    assert len(ev.results_json()) == 3
    assert result.per_class_ap["bird"] == 0.0 and result.per_class_ap["dog"] == pytest.approx(1.0)


def test_errors_are_one_line_and_named():
    dataset = FakeDataset(_gt_three_sizes())
    with pytest.raises(ConfigError, match="backend 'detectron2'.*faster_coco_eval, pycocotools"):
        CocoEvaluator(dataset, backend="detectron2")
    with pytest.raises(ConfigError, match="metric 'lvis'"):
        CocoEvaluator(dataset, metrics=("lvis",))
    ev = CocoEvaluator(dataset)
    with pytest.raises(DataError, match="label 4 on image 1"):
        ev.process([{"image_id": 1}], [_dets([(SMALL, 0.9, 4)])])
    with pytest.raises(DataError, match="image_id 99"):
        ev.process([{"image_id": 99}], [_dets([])])
    with pytest.raises(ConfigError):
        coco_bbox_eval(dataset.coco_gt_dict(), [], backend="nope")


class FakeDetector(torch.nn.Module):
    """Returns pre-set detections per image id; records what predict() was called with."""

    def __init__(self, answers: dict[int, list]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.answers = answers
        self.calls: list[dict] = []

    def predict(self, images, input_sizes=None, orig_sizes=None):
        self.calls.append(
            {
                "training": self.training,
                "shape": tuple(images.shape),
                "input": input_sizes,
                "orig": orig_sizes,
            }
        )
        ids = images[:, 0, 0, 0].tolist()  # the fake loader writes the image id into pixel (0, 0)
        return [_dets(self.answers[int(i)]) for i in ids]


def _fake_loader(ids_per_batch: list[list[int]]):
    for ids in ids_per_batch:
        images = torch.zeros(len(ids), 3, 64, 96, dtype=torch.uint8)
        images[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.uint8)
        targets = [{"image_id": i, "input_size": (64, 90), "orig_size": (200, 200)} for i in ids]
        yield images, targets


def test_evaluate_runs_predict_and_restores_train_mode():
    dataset = FakeDataset(_gt_three_sizes())
    model = FakeDetector(_perfect())
    model.train()
    result = evaluate(
        model, _fake_loader([[1, 2], [3, 4], []]), dataset, backend="pycocotools", progress=False
    )
    assert model.training  # restored
    assert [c["training"] for c in model.calls] == [False, False]
    assert model.calls[0]["input"] == [(64, 90), (64, 90)] and model.calls[0]["orig"] == [
        (200, 200),
        (200, 200),
    ]
    assert model.calls[0]["shape"] == (2, 3, 64, 96)
    assert result.stats["AP"] == pytest.approx(1.0, abs=1e-12)
    model.eval()
    evaluate(model, _fake_loader([[1, 2, 3, 4]]), dataset, progress=False)
    assert not model.training  # a model in eval mode stays there


def test_real_datasets_coco_and_voc_layout(tmp_path):
    """Against detmine's own datasets: their targets as detections score 1.0 and map back to the
    original (non-contiguous) category ids; the VOC dataset also gets the VOC metrics."""
    from detmine.data import build_dataset
    from detmine.data.synthetic import ensure_synthetic

    root = ensure_synthetic(
        tmp_path / "synth", num_train=1, num_val=6, size=64, voc=True, workers=1, progress=False
    )
    shapes = build_dataset("synthetic", root, "val").class_names
    for kind, path, opts in (("synthetic", root, {}), ("voc", root / "VOCdevkit", {"class_names": shapes})):
        dataset = build_dataset(kind, path, "val", **opts)
        ev = CocoEvaluator(dataset, backend="pycocotools")
        for i in range(len(dataset)):
            _, target = dataset[i]
            n = len(target["boxes"])
            ev.process(
                [target], [{"boxes": target["boxes"], "scores": torch.ones(n), "labels": target["labels"]}]
            )
        result = ev.summarize()
        assert result.stats["AP"] == pytest.approx(1.0, abs=1e-12), kind
        gt_cats = {a["category_id"] for a in dataset.coco_gt_dict()["annotations"] if not a["iscrowd"]}
        assert {r["category_id"] for r in ev.results_json()} == gt_cats
        assert ("VOC_mAP" in result.stats) == (kind == "voc")
        if kind == "voc":
            assert result.stats["VOC_mAP"] == pytest.approx(1.0) and result.stats[
                "VOC07_mAP"
            ] == pytest.approx(1.0)


def test_evaluate_tool_reports_user_errors_in_one_line(tmp_path, capsys, load_tool):
    tool = load_tool("evaluate")
    config = tmp_path / "cfg.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\ntrain:\n  max_iters: 10\n")
    missing = tmp_path / "nope.pth"
    assert tool.main([str(config), str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint") and str(missing) in err and "\n" not in err
    assert tool.main([str(config), str(missing), "train.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    ckpt = tmp_path / "model.pth"
    torch.save({"model": {}, "ema": None, "iteration": 3}, ckpt)
    assert tool.main([str(config), str(ckpt), "--weights", "ema"]) == 2
    assert "has no EMA weights" in capsys.readouterr().err
    assert tool.main([str(config), str(ckpt), "--metrics", "coco,lvis"]) == 2
    assert "--metrics" in capsys.readouterr().err


def test_evaluate_tool_picks_ema_weights_when_present():
    from detmine.engine import checkpoint as tool  # the tools pick weights through it

    ema = {"module": {"w": torch.ones(1)}, "updates": 5}
    state = {"model": {"w": torch.zeros(1)}, "ema": ema}
    assert tool.select_weights(state, "auto", "x.pth") == (ema["module"], "ema")
    assert tool.select_weights(state, "model", "x.pth") == (state["model"], "model")
    assert tool.select_weights({**state, "ema": None}, "auto", "x.pth") == (state["model"], "model")
    bare = {"backbone.weight": torch.zeros(1)}
    assert tool.select_weights(bare, "auto", "x.pth") == (bare, "model")


def test_evaluate_tool_end_to_end_every_backend(tmp_path, capsys, load_tool):
    """The CLI over the real builders: a fresh tiny RetinaNet (prior 0.2, so it does detect
    something) on a tiny synthetic COCO set; every backend writes the same metrics, and the
    analysis views print their tables and write their files next to --out."""
    from detmine.data import build_dataset
    from detmine.data.synthetic import ensure_synthetic
    from detmine.modeling import build_model

    root = ensure_synthetic(tmp_path / "synth", num_train=1, num_val=4, size=64, workers=1, progress=False)
    category_ids = set(build_dataset("coco", root, "val").contiguous_to_category_id.values())
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"data: {{kind: coco, root: {root}, image_size: 64, num_workers: 0}}\n"
        "model: {name: retinanet_tiny_fpn, options: {prior_prob: 0.2, image_size: 64}}\n"
        f"train: {{max_iters: 1, device: cpu}}\neval: {{batch_size: 2}}\noutput_dir: {tmp_path / 'run'}\n"
    )
    torch.manual_seed(0)
    model = build_model("retinanet_tiny_fpn", 6, prior_prob=0.2, image_size=64)
    ckpt = tmp_path / "ckpt" / "model.pth"
    ckpt.parent.mkdir()
    torch.save({"model": model.state_dict(), "ema": None}, ckpt)
    tool = load_tool("evaluate")
    metrics = {}
    for backend in TOOL_BACKENDS:
        out = tmp_path / backend / "results.json"
        assert (
            tool.main([str(config), str(ckpt), "--backend", backend, "--out", str(out), "--no-progress"]) == 0
        )
        printed = capsys.readouterr().out
        assert "Average Precision  (AP) @[ IoU=0.50:0.95" in printed and "Per-class AP" in printed
        assert "[errors]" in printed and "[thresholds]" in printed
        results = json.loads(out.read_text())
        assert results and {r["category_id"] for r in results} <= category_ids
        metrics[backend] = json.loads(out.with_name("results.metrics.json").read_text())
        assert metrics[backend]["backend"] == backend and metrics[backend]["num_images"] == 4
        assert metrics[backend]["weights"] == "model"
    first, *others = (metrics[b]["stats"] for b in TOOL_BACKENDS)
    for other in others:
        assert first.keys() == other.keys() and all(
            first[k] == pytest.approx(other[k], abs=1e-12) for k in first
        )
    assert {"errors", "frequency", "confusion", "thresholds"} <= set(metrics["hotcoco"]["views"])
    for name in ("thresholds.json", "confusion_matrix.csv", "confusion_matrix.png"):
        assert (tmp_path / "hotcoco" / name).is_file(), name
