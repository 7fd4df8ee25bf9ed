import math

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from detmine.errors import ConfigError
from detmine.evaluation.evaluator import EvalResult
from detmine.evaluation.report import log_evaluation
from detmine.mining.record import MiningRecord
from detmine.structures import HeadOutputs
from detmine.viz.plots import draw_pr_grid, pr_figure
from detmine.viz.tensorboard import (
    MiningVisualizer,
    mining_statistics,
    render_mining_image,
)

CLASSES = ["cat", "dog"]


def _anchors():
    """8x8 grid of 16 px anchors on a 64 px image plus 4x4 of 32 px: A = 80."""
    out = []
    for stride, size in ((8, 16), (16, 32)):
        for y in range(0, 64, stride):
            for x in range(0, 64, stride):
                cx, cy = x + stride / 2, y + stride / 2
                out.append([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
    return torch.tensor(out, dtype=torch.float32)


def _batch(miner="ssd", num_columns=3, seed=0, activation="softmax"):
    """A fake batch of 3 images (the last one background-only) and an SSD-like or
    'all' record: labels, per-anchor loss, selection."""
    g = torch.Generator().manual_seed(seed)
    anchors = _anchors()
    a = len(anchors)
    images = torch.randint(0, 256, (3, 3, 64, 64), generator=g, dtype=torch.uint8)
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
         "ignore_boxes": torch.zeros((0, 4)), "image_id": 11, "orig_size": (64, 64), "input_size": (64, 64)},
        {"boxes": torch.tensor([[20.0, 10.0, 44.0, 40.0], [0, 40, 20, 60]]), "labels": torch.tensor([2, 1]),
         "ignore_boxes": torch.tensor([[40.0, 40.0, 60.0, 60.0]]), "image_id": 12, "orig_size": (64, 48),
         "input_size": (64, 48)},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long),
         "ignore_boxes": torch.zeros((0, 4)), "image_id": 13, "orig_size": (64, 64), "input_size": (64, 64)},
    ]  # fmt: skip
    labels = torch.zeros((3, a), dtype=torch.long)
    labels[0, [0, 1, 8]] = 1
    labels[0, [2, 3]] = -1
    labels[1, [10, 11, 70]] = 2
    labels[1, [40]] = 1
    labels[1, 60:66] = -1
    labels[2, [5]] = -1
    cls_loss = torch.rand((3, a), generator=g) * 3
    if miner == "all":
        selected = labels >= 0
    else:  # SSD: positives + 3 hardest negatives per positive, min 4 negatives per image
        selected = labels > 0
        for b in range(3):
            k = max(3 * int((labels[b] > 0).sum()), 4)
            neg_loss = cls_loss[b].masked_fill(labels[b] != 0, -1)
            selected[b, neg_loss.topk(k).indices] = True
    record = MiningRecord(labels=labels, selected=selected, cls_loss=cls_loss)
    logits = torch.randn((3, a, num_columns), generator=g)
    outputs = HeadOutputs(
        cls_logits=logits,
        box_deltas=torch.zeros((3, a, 4)),
        anchors=anchors,
        cls_activation=activation,
        level_counts=(64, 16),
    )
    return images, targets, outputs, record


def _read(logdir):
    ea = EventAccumulator(
        str(logdir), size_guidance={"images": 0, "histograms": 0, "scalars": 0, "tensors": 0}
    )
    ea.Reload()
    return ea


def _decode(event):
    img = cv2.imdecode(np.frombuffer(event.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    return img[..., ::-1]


def _hand_stats(targets, record):
    """The scalars, computed image by image with plain Python."""
    labels, sel, loss = record.labels.tolist(), record.selected.tolist(), record.cls_loss.tolist()
    n_img = len(labels)
    pos = mined = ign = 0
    sel_loss = mined_loss = unmined_loss = 0.0
    n_unmined = bg_mined = 0
    for b in range(n_img):
        for lab, s, v in zip(labels[b], sel[b], loss[b], strict=True):
            pos += lab > 0
            ign += lab < 0
            if s:
                sel_loss += v
            if lab == 0 and s:
                mined += 1
                mined_loss += v
                bg_mined += len(targets[b]["labels"]) == 0
            if lab == 0 and not s:
                n_unmined += 1
                unmined_loss += v
    out = {
        "pos_per_image": pos / n_img,
        "neg_selected_per_image": mined / n_img,
        "ignored_per_image": ign / n_img,
        "neg_loss_share": mined_loss / sel_loss,
        "bg_only_neg_share": bg_mined / mined,
        "neg_loss_mean_mined": mined_loss / mined,
    }
    if n_unmined:
        out["neg_loss_mean_unmined"] = unmined_loss / n_unmined
    return out


def test_logs_every_tag_with_sane_content(tmp_path):
    images, targets, outputs, record = _batch()
    writer = SummaryWriter(str(tmp_path))
    vis = MiningVisualizer(writer, period=5, num_images=2, top_k=6, class_names=CLASSES)
    logged = [vis.maybe_log(it, images, targets, outputs, record) for it in range(12)]
    writer.close()
    assert logged == [it % 5 == 0 for it in range(12)]
    ea = _read(tmp_path)
    tags = ea.Tags()

    # images: one per image of the first num_images, equal to what render draws
    assert sorted(tags["images"]) == ["mining/images/0", "mining/images/1"]
    for i in range(2):
        events = ea.Images(f"mining/images/{i}")
        assert [e.step for e in events] == [0, 5, 10]
        expected = render_mining_image(
            images[i], targets[i], outputs.anchors, record, i, top_k=6, class_names=CLASSES,
            level_counts=outputs.level_counts,
        )  # fmt: skip
        assert (events[0].height, events[0].width) == expected.shape[:2]
        np.testing.assert_array_equal(_decode(events[0]), expected)
    # image 1 was padded: the picture is cropped to its input width 48, upscaled to a long side
    # of 512 (-> 384 x 512), boxes and heat map side by side with a 6 px gap
    assert ea.Images("mining/images/1")[0].width == 2 * 384 + 6
    assert ea.Images("mining/images/0")[0].width == 2 * 512 + 6

    # histograms: counts equal the number of anchors of that kind
    fg = outputs.foreground_scores()
    torch.testing.assert_close(fg, 1 - torch.softmax(outputs.cls_logits, -1)[..., 0])
    expect = {
        "mining/hist/neg_loss_all": record.cls_loss[record.negatives],
        "mining/hist/neg_loss_mined": record.cls_loss[record.mined_negatives],
        "mining/hist/fg_score": fg[~record.ignored],
        "mining/hist/fg_score_pos": fg[record.positives],
        "mining/hist/fg_score_neg": fg[record.negatives],
    }
    assert sorted(tags["histograms"]) == sorted(expect)
    for tag, values in expect.items():
        events = ea.Histograms(tag)
        assert [e.step for e in events] == [0, 5, 10]
        h = events[0].histogram_value
        assert h.num == values.numel(), tag
        assert h.sum == pytest.approx(float(values.sum()), rel=1e-5)
        assert h.min == pytest.approx(float(values.min())) and h.max == pytest.approx(float(values.max()))
    assert (
        ea.Histograms("mining/hist/neg_loss_mined")[0].histogram_value.num == 3 * 3 + 3 * 4 + 4
    )  # 3:1 per image, min 4

    # scalars equal the hand computation
    hand = _hand_stats(targets, record)
    assert sorted(t for t in tags["scalars"]) == sorted(f"mining/{k}" for k in hand)
    for key, value in hand.items():
        events = ea.Scalars(f"mining/{key}")
        assert [e.step for e in events] == [0, 5, 10]
        assert events[0].value == pytest.approx(value, rel=1e-5), key
    assert hand["bg_only_neg_share"] == pytest.approx(4 / 25)


def test_fg_score_definitions():
    logits = torch.tensor([[[2.0, 0.0, 1.0], [-1.0, 3.0, 0.0]]])

    def outputs(activation):
        return HeadOutputs(logits, torch.zeros(1, 2, 4), torch.zeros(2, 4), activation, (2,))

    soft = outputs("softmax").foreground_scores()
    assert torch.allclose(soft, 1 - torch.softmax(logits, -1)[..., 0])
    sig = outputs("sigmoid").foreground_scores()
    assert torch.allclose(sig, torch.sigmoid(logits).max(-1).values)
    with pytest.raises(ValueError, match="cls_activation"):
        outputs("relu")


def test_all_miner_and_sigmoid_head(tmp_path):
    """'all' / focal: every non-ignored anchor counts -> no unmined scalar; the
    picture shows the highest-loss negatives; K' == K -> sigmoid scores."""
    images, targets, outputs, record = _batch(miner="all", num_columns=2, activation="sigmoid")
    writer = SummaryWriter(str(tmp_path))
    MiningVisualizer(writer, period=1, num_images=1, top_k=3, class_names=CLASSES).log(
        7, images, targets, outputs, record
    )
    writer.close()
    ea = _read(tmp_path)
    assert "mining/neg_loss_mean_unmined" not in ea.Tags()["scalars"]
    assert ea.Scalars("mining/neg_selected_per_image")[0].value == pytest.approx(
        float(record.negatives.sum()) / 3
    )
    h = ea.Histograms("mining/hist/fg_score")[0].histogram_value
    fg = torch.sigmoid(outputs.cls_logits).max(-1).values[~record.ignored]
    assert h.num == fg.numel() and h.sum == pytest.approx(float(fg.sum()), rel=1e-5)
    idx, losses = record.top_negatives(0, 3)
    top3 = record.cls_loss[0].masked_fill(record.labels[0] != 0, -1).topk(3)
    assert torch.equal(idx, top3.indices) and torch.allclose(losses, top3.values)


def test_period_gating_does_no_work(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    vis = MiningVisualizer(writer, period=4)
    # off-period iterations must not touch their arguments at all
    assert not any(vis.maybe_log(it, None, None, None, None) for it in (1, 2, 3, 5, 6, 7))
    off = MiningVisualizer(writer, period=0)
    assert not any(off.maybe_log(it, None, None, None, None) for it in range(5))
    assert not MiningVisualizer(None, period=1).maybe_log(0, None, None, None, None)
    writer.close()
    tags = _read(tmp_path).Tags()
    assert not tags["images"] and not tags["scalars"] and not tags["histograms"]


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="vis.period"):
        MiningVisualizer(None, period=-1)
    with pytest.raises(ConfigError, match="vis.top_k"):
        MiningVisualizer(None, period=1, top_k=2.5)
    with pytest.raises(ConfigError, match="vis.heat_map must be one of"):
        MiningVisualizer(None, period=1, heat_map="per_level")
    with pytest.raises(TypeError, match="cls_activation"):  # the outputs say it
        MiningVisualizer(None, period=1, cls_activation="softmax")


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_fg_histograms_follow_the_outputs_activation(tmp_path, activation):
    """The head's activation comes with the outputs, whatever the class names: no guessing
    from the number of columns (5 columns, 2 class names)."""
    images, targets, outputs, record = _batch(num_columns=5, activation=activation)
    writer = SummaryWriter(str(tmp_path))
    MiningVisualizer(writer, period=1, num_images=0, class_names=CLASSES).log(
        0, images, targets, outputs, record
    )
    writer.close()
    h = _read(tmp_path).Histograms("mining/hist/fg_score")[0].histogram_value
    logits = outputs.cls_logits
    if activation == "softmax":
        fg = 1 - torch.softmax(logits, -1)[..., 0]
    else:
        fg = torch.sigmoid(logits).max(-1).values
    fg = fg[~record.ignored]
    assert h.num == fg.numel() and h.sum == pytest.approx(float(fg.sum()), rel=1e-5)


def test_statistics_with_no_negatives_selected():
    _, targets, _, record = _batch()
    record = MiningRecord(
        labels=record.labels, selected=torch.zeros_like(record.selected), cls_loss=record.cls_loss
    )
    stats = mining_statistics(record, targets)
    assert stats["neg_selected_per_image"] == 0 and stats["neg_loss_share"] == 0
    assert stats["bg_only_neg_share"] == 0 and "neg_loss_mean_mined" not in stats


def _eval_result(k=3):
    rng = np.random.default_rng(0)
    precision = np.sort(rng.random((10, 101, k, 4, 3)), axis=1)[:, ::-1].copy()
    precision[:, :, -1] = -1  # a class without ground truth
    names = ["cat", "dog", "traffic light"][:k]
    return EvalResult(
        stats={"AP": 0.31, "AP50": 0.52},
        per_class_ap={"cat": 0.4, "dog": 0.2, "traffic light": float("nan")},
        table="AP   0.310\nAP50 0.520",
        precision=precision,
        class_names=names,
    )


def test_log_evaluation(tmp_path):
    result = _eval_result()
    writer = SummaryWriter(str(tmp_path))
    log_evaluation(writer, result, step=300)
    writer.close()
    ea = _read(tmp_path)
    text = ea.Tensors("eval/coco_table/text_summary")[0]
    assert text.step == 300
    assert text.tensor_proto.string_val[0].decode() == "    AP   0.310\n    AP50 0.520"
    img = ea.Images("eval/pr_curve_iou50")[0]
    np.testing.assert_array_equal(_decode(img), draw_pr_grid(result.precision, result.class_names))
    assert "eval/AP" not in ea.Tags()["scalars"]  # the trainer logs the COCO stats itself
    assert ea.Scalars("eval/per_class_AP/dog")[0].value == pytest.approx(0.2)
    assert math.isnan(ea.Scalars("eval/per_class_AP/traffic_light")[0].value)


def test_pr_grid_draws_each_class_curve():
    result = _eval_result(k=2)
    p = result.precision.copy()
    p[0, :, 0, 0, -1] = 1.0  # class "cat": perfect precision at IoU 0.5 -> AP 1
    fig = pr_figure(p, ["cat", "dog"], tile_size=(300, 250))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3 and len(fig.axes) == 4  # mean + 2 classes in a 2 x 2 grid, one spare
    for ax in axes:
        assert ax.get_xlabel() == "recall" and ax.get_ylabel() == "precision"
        assert ax.get_legend() is not None
    assert [ax.get_title() for ax in axes] == ["all classes (IoU 0.50)", "cat", "dog"]
    cat = axes[1]
    legend = [t.get_text() for t in cat.get_legend().get_texts()]
    assert legend == ["mean of classes", "AP50 1.000"]
    curve = cat.get_lines()[-1]
    np.testing.assert_allclose(curve.get_xdata(), np.linspace(0, 1, 101))
    np.testing.assert_allclose(curve.get_ydata(), 1.0)
    grid = draw_pr_grid(p, ["cat", "dog"], tile_size=(300, 250))
    assert grid.shape == (2 * 250, 2 * 300, 3) and grid.dtype == np.uint8
    assert grid[260:, 310:].min() == 255  # the unused 4th cell stays white


def test_pr_curves_are_drawn_with_matplotlib_not_opencv():
    import inspect

    import detmine.viz.plots as plots

    assert "cv2" not in inspect.getsource(plots)


def test_trainer_logs_mining_and_evaluation_end_to_end(tmp_path):
    """The real trainer, tiny model, criterion and synthetic data: the hook's tags show up at
    the period's iterations, and the final evaluation writes the PR grid and the table."""
    from detmine.config import load_config
    from detmine.data.synthetic import ensure_synthetic
    from detmine.engine import builders

    data = ensure_synthetic(tmp_path / "syn", num_train=4, num_val=2, size=64, workers=1, progress=False)
    cfg = load_config(
        None,
        [
            "data.kind=coco",
            f"data.root={data}",
            "data.image_size=64",
            "data.num_workers=0",
            "data.train_transform=eval",
            "model.name=ssdlite_tiny",
            "model.options={image_size: 64, widths: [8, 8, 16, 16, 32], extra_channels: [16]}",
            "model.options.anchor_scales=[0.1, 0.3, 0.5, 0.7, 0.9]",
            "mining.type=ssd",
            "train.max_iters=4",
            "train.batch_size=2",
            "train.warmup_iters=1",
            "train.device=cpu",
            "train.checkpoint_period=100",
            "eval.batch_size=2",
            "vis.period=2",
            "vis.num_images=1",
            "vis.top_k=5",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    train_ds, val_ds = builders.build_datasets(cfg)
    model = builders.build_model_from_config(cfg, train_ds.num_classes)
    builders.build_trainer(
        cfg, model, builders.build_criterion_from_config(cfg, model), train_ds, val_ds
    ).train()
    ea = _read(tmp_path / "run")
    tags = ea.Tags()
    # the iterations of the period, labelled like every other item (detmine.periodic.is_due)
    assert [e.step for e in ea.Images("mining/images/0")] == [2, 4]
    assert "mining/images/1" not in tags["images"]
    assert {"mining/hist/neg_loss_all", "mining/hist/fg_score"} <= set(tags["histograms"])
    for e in ea.Scalars("mining/neg_selected_per_image"):  # SSD: 3 negatives per positive
        assert e.value == pytest.approx(3 * ea.Scalars("mining/pos_per_image")[[2, 4].index(e.step)].value)
    assert "eval/pr_curve_iou50" in tags["images"]
    assert "eval/coco_table/text_summary" in tags["tensors"]
