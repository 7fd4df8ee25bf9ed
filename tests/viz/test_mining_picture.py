"""The mining pictures people look at: readable size, labels that never overlap, captions that
say where the negatives' loss goes, the heat panel beside the boxes."""

import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from detmine.mining.record import MiningRecord
from detmine.viz.captions import mining_caption, top_count, top_loss_shares
from detmine.viz.colors import GT_COLOR, negative_rank_colors
from detmine.viz.labels import LabelPlacer, Rect, any_intersect
from detmine.viz.mining_picture import draw_mining_picture
from detmine.viz.tensorboard import MiningVisualizer, render_mining_picture

_spec = importlib.util.spec_from_file_location("_tb_batch", Path(__file__).with_name("test_tensorboard.py"))
_tb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tb)
CLASSES = _tb.CLASSES


def _decode(event):
    img = cv2.imdecode(np.frombuffer(event.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    return img[..., ::-1]


def test_tensorboard_pictures_have_a_long_side_of_at_least_512(tmp_path):
    images, targets, outputs, record = _tb._batch()
    writer = SummaryWriter(str(tmp_path))
    MiningVisualizer(writer, period=1, num_images=3, top_k=6, class_names=CLASSES).log(
        0, images, targets, outputs, record
    )
    writer.close()
    ea = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    ea.Reload()
    for i in range(3):
        picture = render_mining_picture(
            images[i], targets[i], outputs.anchors, record, i, top_k=6, class_names=CLASSES,
            level_counts=outputs.level_counts,
        )  # fmt: skip
        logged = _decode(ea.Images(f"mining/images/{i}")[0])
        np.testing.assert_array_equal(logged, picture.image)
        boxes, heat = picture.panels["boxes"], picture.panels["heat"]
        assert max(boxes.w, boxes.h) >= 512 and (heat.w, heat.h) == (boxes.w, boxes.h)
        assert heat.x > boxes.x2 and heat.y == boxes.y  # beside the boxes
        h, w = targets[i]["input_size"]
        assert (boxes.h, boxes.w) == (h * 8, w * 8)  # 64 x 64 and 64 x 48 inputs, x8
        assert logged.shape[1] == boxes.w + heat.w + (heat.x - boxes.x2)


def test_large_images_are_not_resized():
    img = np.zeros((600, 800, 3), np.uint8)
    pic = draw_mining_picture(img, gt_boxes=[[10, 10, 100, 100]], gt_labels=[1], min_long_side=512)
    assert (pic.panels["boxes"].w, pic.panels["boxes"].h) == (800, 600)
    np.testing.assert_array_equal(pic.image[:600, :800][300:, 300:], img[300:, 300:])


def _crowded():
    """A 64 px image: 30 ground-truth boxes and 20 negatives piled into its top-left quarter,
    every negative labelled: far more labels than free spots."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 24, size=(50, 2))
    wh = rng.uniform(4, 12, size=(50, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    return dict(
        gt_boxes=boxes[:30],
        gt_labels=[1 + i % 2 for i in range(30)],
        negative_boxes=boxes[30:],
        negative_losses=sorted(rng.uniform(0, 3, 20), reverse=True),
        class_names=["a long class name", "dog"],
        header="image 1 | " + " | ".join(f"part {i} of a long caption" for i in range(12)),
        label_top=20,
        min_long_side=512,
    )


@pytest.mark.parametrize("heat_mode", ["merged", "levels", "off"])
def test_label_rectangles_never_intersect_on_a_crowded_image(heat_mode):
    image = np.full((64, 64, 3), 90, np.uint8)
    anchors = torch.tensor(
        [[x, y, x + 8, y + 8] for y in range(0, 64, 8) for x in range(0, 64, 8)], dtype=torch.float32
    )
    from detmine.viz.heatmap import location_losses

    levels = location_losses(anchors, (32, 32), torch.rand(64, generator=torch.Generator().manual_seed(0)))
    pic = draw_mining_picture(image, heat=levels, heat_mode=heat_mode, **_crowded())
    rects = pic.label_rects
    h, w = pic.image.shape[:2]
    boxes = pic.panels["boxes"]
    in_boxes = [r for r in rects if r.y2 <= boxes.y2 and r.x2 <= boxes.x2]
    assert len(in_boxes) >= 8, "some labels must still be placed"
    assert pic.skipped_labels > 0, "a crowded image cannot fit all 50 labels"
    assert not any_intersect(rects)
    for r in rects:  # inside the picture
        assert 0 <= r.x and r.x2 <= w and 0 <= r.y and r.y2 <= h
    # every placed label in the boxes panel is really drawn there: its background colour is a
    # ground-truth or negative colour at the rectangle's corner
    colours = {GT_COLOR, *negative_rank_colors(20)}
    for r in in_boxes:
        assert tuple(int(c) for c in pic.image[r.y, r.x]) in colours
    if heat_mode == "levels":
        assert {"heat/0", "heat/1"} <= set(pic.panels)


def test_label_placer_moves_a_label_off_another():
    placer = LabelPlacer(200, 100)
    a = placer.place((50, 40, 90, 80), 30, 10)
    b = placer.place((52, 42, 92, 82), 30, 10)  # the same spot is taken: goes elsewhere
    assert a == Rect(50, 30, 30, 10) and b is not None and not a.intersects(b)
    assert placer.place((0, 0, 10, 10), 300, 10) is None and placer.skipped == 1  # wider than the picture


def _all_record(seed=0, n=4000):
    """One image, every non-ignored anchor selected (the `all` miner), a long-tailed loss."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros((1, n), dtype=torch.long)
    labels[0, :12] = 1
    labels[0, 12:40] = -1
    loss = torch.rand((1, n), generator=g) ** 8 * 2  # most negatives easy, a few hard
    return MiningRecord(labels=labels, selected=labels >= 0, cls_loss=loss)


def test_caption_with_the_all_miner_gives_the_top_1_and_10_percent_shares():
    record = _all_record()
    labels, loss = record.labels[0].tolist(), record.cls_loss[0].tolist()
    neg = sorted((v for lab, v in zip(labels, loss, strict=True) if lab == 0), reverse=True)
    total = sum(neg)
    share1 = sum(neg[: math.ceil(len(neg) / 100)]) / total  # 3960 negatives: the top 40
    share10 = sum(neg[: math.ceil(len(neg) / 10)]) / total  # the top 396
    caption = mining_caption(record.labels[0], record.selected[0], record.cls_loss[0], image_id=7, shown=20)
    expected = f"negatives: top 1% hold {100 * share1:.0f}% of their loss, top 10% {100 * share10:.0f}%"
    assert caption == f"image 7 | {expected} | 12 positives, 28 ignored | 20 hardest shown"
    assert "mined" not in caption
    assert top_loss_shares(record.cls_loss[0][record.labels[0] == 0]) == pytest.approx([share1, share10])
    assert [top_count(n, 0.01) for n in (0, 1, 99, 100, 101)] == [0, 1, 1, 1, 2]


def test_caption_with_a_real_miner_gives_the_selected_count_and_their_loss_share():
    record = _all_record()
    loss = record.cls_loss[0]
    neg = record.labels[0] == 0
    top = loss.masked_fill(~neg, -1).topk(36).indices  # 3:1 for 12 positives
    selected = record.labels[0] > 0
    selected[top] = True
    caption = mining_caption(record.labels[0], selected, loss)
    share = float(loss[top].sum() / loss[neg].sum())
    assert caption.startswith(f"mined 36 of 3960 negatives (0.9%), holding {100 * share:.0f}% of their loss")


def test_the_tensorboard_caption_is_the_images_caption(monkeypatch):
    """The picture's header is :func:`mining_caption` of its image (whatever the miner)."""
    import detmine.viz.tensorboard as tb

    images, targets, outputs, record = _tb._batch(miner="all")
    seen = {}
    real = tb.draw_mining_picture

    def spy(image, **kwargs):
        seen["header"] = kwargs["header"]
        return real(image, **kwargs)

    monkeypatch.setattr(tb, "draw_mining_picture", spy)
    tb.render_mining_picture(images[0], targets[0], outputs.anchors, record, 0, top_k=5)
    expected = mining_caption(
        record.labels[0], record.selected[0], record.cls_loss[0], image_id=targets[0]["image_id"], shown=5
    )
    assert seen["header"] == expected and "top 1% hold" in expected


@pytest.mark.parametrize(("written", "heat_map"), [("merged", "merged"), ("levels", "levels"), ("off", "off"),
                                                   ("false", "off"), ("true", "merged")])  # fmt: skip
def test_the_mining_vis_hook_passes_its_heat_map_option_on(tmp_path, written, heat_map):
    """``hooks: [{name: mining_vis, heat_map: off}]``: YAML reads a bare ``off`` as false."""
    from detmine.config import load_config
    from detmine.engine.hooks import HookContext, build_hook

    cfg = load_config(
        None, ["train.max_iters=1", "vis.period=5", f"hooks=[{{name: mining_vis, heat_map: {written}}}]"]
    )
    options = {k: v for k, v in cfg.hooks[0].items() if k != "name"}
    hook = build_hook("mining_vis", options, HookContext(cfg, tmp_path, None), "hooks[0]")
    assert hook.visualizer.heat_map == heat_map and hook.visualizer.period == 5
    # the visualizer draws accordingly: no heat panel when off, one per level with "levels"
    images, targets, outputs, record = _tb._batch()
    picture = render_mining_picture(
        images[0],
        targets[0],
        outputs.anchors,
        record,
        0,
        level_counts=outputs.level_counts,
        heat_map=heat_map,
    )
    expected = {"merged": {"boxes", "heat"}, "levels": {"boxes", "heat/0", "heat/1"}, "off": {"boxes"}}
    assert set(picture.panels) == expected[heat_map]
