import cv2
import numpy as np
import pytest

from detmine.viz.colors import GT_COLOR, IGNORED_COLOR, LEGEND_BG, POSITIVE_COLOR, negative_rank_colors
from detmine.viz.draw import (
    FONT,
    draw_boxes,
    draw_legend,
    font_scale,
    label_origin,
    line_thickness,
    put_label,
)
from detmine.viz.mining_picture import draw_mining

RED = (255, 0, 0)


def _black(h=100, w=120):
    return np.zeros((h, w, 3), dtype=np.uint8)


def _is(img, y, x, color):
    return tuple(int(c) for c in img[y, x]) == tuple(color)


def test_box_lands_on_its_coordinates():
    img = _black()
    out = draw_boxes(img, np.array([[20, 30, 80, 70]], np.float32), RED, thickness=1)
    # the four edges at the box's coordinates carry the colour
    for y, x in [(30, 50), (70, 50), (50, 20), (50, 80), (30, 20), (70, 80)]:
        assert _is(out, y, x, RED), (y, x)
    # well inside and outside do not
    for y, x in [(50, 50), (32, 50), (50, 22), (10, 10), (90, 110), (28, 50)]:
        assert _is(out, y, x, (0, 0, 0)), (y, x)
    assert not img.any(), "the input must not be modified"


def test_thick_box_is_centred_on_the_edge():
    out = draw_boxes(_black(), [[20, 30, 80, 70]], RED, thickness=3)
    assert _is(out, 29, 50, RED) and _is(out, 30, 50, RED) and _is(out, 31, 50, RED)
    assert _is(out, 34, 50, (0, 0, 0))


def test_box_outside_the_image_is_clipped_to_the_border():
    out = draw_boxes(_black(), [[-10, -10, 50, 40]], RED, thickness=1)
    assert _is(out, 0, 25, RED) and _is(out, 20, 0, RED) and _is(out, 40, 25, RED)


def test_per_box_colours_and_count_mismatch():
    out = draw_boxes(_black(), [[10, 10, 30, 30], [50, 50, 90, 90]], [RED, (0, 0, 255)], thickness=1)
    assert _is(out, 10, 20, RED) and _is(out, 50, 70, (0, 0, 255))
    with pytest.raises(ValueError, match="2 boxes but 1 colours"):
        draw_boxes(_black(), [[10, 10, 30, 30], [50, 50, 90, 90]], [RED], thickness=1)


def test_alpha_blends_lines():
    out = draw_boxes(_black(), [[20, 30, 80, 70]], (200, 200, 200), thickness=1, alpha=0.5)
    assert tuple(out[30, 50]) == (100, 100, 100)


def test_rejects_non_image():
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        draw_boxes(np.zeros((10, 10), np.uint8), [[0, 0, 5, 5]], RED)
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(np.zeros((10, 10, 3), np.float32), [[0, 0, 5, 5]], RED)


def test_thickness_and_font_scale_grow_with_image_size():
    sizes = [(64, 64), (300, 300), (640, 640), (800, 1333)]
    t = [line_thickness(s) for s in sizes]
    f = [font_scale(s) for s in sizes]
    assert t[0] == 1 and t == sorted(t) and t[-1] >= 3
    assert f == sorted(f) and f[0] >= 0.35


@pytest.mark.parametrize(
    "box_xy, shape",
    [
        ((0, 0), (64, 64)),
        ((60, 0), (64, 64)),
        ((60, 62), (64, 64)),
        ((-5, -5), (64, 64)),
        ((0, 63), (20, 200)),
    ],
)
def test_label_origin_stays_inside(box_xy, shape):
    tw, th = 40, 12
    x, y = label_origin((tw, th), box_xy, shape)
    assert 0 <= x and x + tw <= shape[1]
    assert 0 <= y and y + th <= shape[0]


def test_label_above_box_when_there_is_room_inside_otherwise():
    assert label_origin((20, 10), (30, 40), (100, 100)) == (30, 30)  # above
    assert label_origin((20, 10), (30, 3), (100, 100)) == (30, 3)  # inside, box at the top


def test_label_at_the_corner_is_fully_visible():
    """A box in the bottom-right corner: the whole label is drawn, shifted inside."""
    h, w = 64, 64
    text = "longish label"
    color = (0, 0, 255)
    out = put_label(_black(h, w), text, (w - 3, h - 3), color)  # box corner near the bottom-right
    cols = np.where((out == np.array(color, np.uint8)).all(axis=2).any(axis=0))[0]
    rows = np.where((out == np.array(color, np.uint8)).all(axis=2).any(axis=1))[0]
    scale = font_scale(out.shape)
    (tw, th), base = cv2.getTextSize(text, FONT, scale, max(1, int(round(scale * 1.5))))
    assert cols.max() == w - 1  # shifted left just enough
    assert rows.max() == h - 3 - 1  # just above the box's top edge
    assert cols.max() - cols.min() + 1 >= tw  # not cut at the right edge
    assert rows.max() - rows.min() + 1 >= th + base


def test_legend_is_appended_below_and_keeps_the_image():
    img = np.full((80, 200, 3), 7, np.uint8)
    out = draw_legend(img, [("a", RED), ("b", (0, 255, 0))], header="hello")
    assert out.shape[1] == 200 and out.shape[0] > 80
    assert (out[:80] == 7).all()
    assert _is(out[80:], *np.argwhere((out[80:] == np.array(RED, np.uint8)).all(axis=2))[0], RED)


def test_legend_wraps_on_narrow_images():
    entries = [(f"entry number {i}", RED) for i in range(6)]
    wide = draw_legend(_black(50, 1000), entries)
    narrow = draw_legend(_black(50, 150), entries)
    assert narrow.shape[0] > wide.shape[0]


def test_negative_ramp_goes_hot_to_cool():
    cols = negative_rank_colors(10)
    assert len(cols) == 10 and len(set(cols)) == 10
    brightness = [sum(c) for c in cols]
    assert brightness == sorted(brightness)  # dark red first, pale yellow last
    assert cols[0][0] > 100 and cols[0][1] < 50 and cols[0][2] < 50
    assert negative_rank_colors(0) == [] and len(negative_rank_colors(1)) == 1
    for c in cols:  # never confused with GT / positives
        assert c not in (GT_COLOR, POSITIVE_COLOR)


def test_draw_mining_roles_and_upscaling():
    img = np.full((64, 64, 3), 40, np.uint8)
    out = draw_mining(
        img,
        gt_boxes=[[10, 10, 30, 30]],
        gt_labels=[2],
        positive_boxes=[[8, 40, 24, 56]],
        negative_boxes=[[40, 40, 60, 60], [40, 5, 60, 20]],
        negative_losses=[3.0, 1.0],
        ignored_boxes=[[34, 24, 50, 36]],
        class_names=["cat", "dog"],
        header="h",
        min_side=128,
    )
    f = 2  # 64 -> 128
    assert out.shape[1] == 128 and out.shape[0] > 128  # legend below
    hard, easy = negative_rank_colors(2)
    assert _is(out, 10 * f + 20, 10 * f, GT_COLOR)  # left edge of the GT, halfway down
    assert _is(out, 48 * f, 8 * f, POSITIVE_COLOR)
    assert _is(out, 50 * f, 60 * f, hard)
    assert _is(out, 12 * f, 60 * f, easy)
    ign = out[30 * f, 34 * f].astype(int)  # half-transparent grey over the background
    assert (ign == (np.array(IGNORED_COLOR) + 40) // 2).all() or (
        np.abs(ign - (np.array(IGNORED_COLOR) + 40) / 2) <= 1
    ).all()
    assert _is(out, 20 * f, 20 * f, (40, 40, 40))  # inside the GT box: untouched


def test_draw_mining_with_nothing_to_draw():
    out = draw_mining(np.zeros((32, 48, 3), np.uint8))
    assert out.shape[1] == 48 and out.shape[0] > 32 and not out[:32].any()


def test_long_header_wraps_inside_the_legend():
    header = "image 1000001: pos 2 | mined neg 6 of 8188 | ignored 0 | top 6 shown"
    narrow = draw_legend(_black(40, 256), [], header=header)
    short = draw_legend(_black(40, 256), [], header="image 1")
    assert narrow.shape[0] > short.shape[0]  # wrapped onto more lines
    # no text runs off the right edge: the last columns of the panel are plain background
    assert (narrow[40:, -4:] == np.array(LEGEND_BG, np.uint8)).all()
