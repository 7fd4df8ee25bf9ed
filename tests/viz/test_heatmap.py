"""The heat map of the negatives' loss: per-location sums and their resampling, by hand."""

import numpy as np
import pytest
import torch

from detmine.viz.heatmap import colormap_lut, heat_maps, location_losses, normalise, overlay


def _box(cx, cy, side):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def _toy():
    """A 16 x 16 image, two levels.

    Level 0: centres x, y in {4.5, 12.5} (spacing 8), two anchor sizes per location, listed
    in shuffled order (the sums must not depend on the order). Level 1: one location at
    (8.5, 8.5) with three anchors.
    """
    level0 = [
        (4.5, 4.5, 6, 1.0, True),
        (12.5, 4.5, 6, 2.0, True),
        (4.5, 12.5, 12, 4.0, True),
        (4.5, 4.5, 12, 0.5, True),
        (12.5, 12.5, 6, 8.0, False),  # not counted (masked out)
        (12.5, 4.5, 12, 3.0, True),
        (4.5, 12.5, 6, 0.25, True),
        (12.5, 12.5, 12, 16.0, True),
    ]
    level1 = [(8.5, 8.5, 10, 1.0, True), (8.5, 8.5, 14, 2.0, True), (8.5, 8.5, 16, 32.0, False)]
    rows = level0 + level1
    anchors = torch.tensor([_box(cx, cy, s) for cx, cy, s, _, _ in rows])
    loss = torch.tensor([v for *_, v, _ in rows])
    mask = torch.tensor([m for *_, m in rows])
    return anchors, loss, mask, (len(level0), len(level1))


def test_per_location_sums_equal_the_hand_computation():
    anchors, loss, mask, counts = _toy()
    levels = location_losses(anchors, counts, loss, mask)
    assert len(levels) == 2
    l0, l1 = levels
    np.testing.assert_allclose(l0.xs, [4.5, 12.5])
    np.testing.assert_allclose(l0.ys, [4.5, 12.5])
    # rows are y, columns x: (4.5, 4.5) = 1 + 0.5; (12.5, 4.5) = 2 + 3; (4.5, 12.5) = 4 + 0.25;
    # (12.5, 12.5) = 16 (the 8 is masked out)
    np.testing.assert_allclose(l0.sums, [[1.5, 5.0], [4.25, 16.0]])
    np.testing.assert_allclose(l1.sums, [[3.0]])  # 1 + 2, the 32 masked out
    assert l0.stride() == (8.0, 8.0)
    # no mask: everything counts
    np.testing.assert_allclose(location_losses(anchors, counts, loss)[1].sums, [[35.0]])


def test_merged_map_is_the_sum_of_the_levels_loss_per_pixel():
    anchors, loss, mask, counts = _toy()
    levels = location_losses(anchors, counts, loss, mask)
    (merged,) = heat_maps(levels, (16, 16))
    per_level = heat_maps(levels, (16, 16), merge=False)
    assert merged.shape == (16, 16) and len(per_level) == 2
    np.testing.assert_allclose(merged, per_level[0] + per_level[1], rtol=1e-6)
    # level 1 has one location: its cell is the whole 16 x 16 image, the same value everywhere
    np.testing.assert_allclose(per_level[1], np.full((16, 16), 3.0 / 256), rtol=1e-6)
    # level 0's cells are 8 x 8: at a location's own pixel (pixel 4 has its centre at 4.5),
    # the location's sum / 64; halfway between two locations (pixel 8, centre 8.5), their mean
    assert merged[4, 4] == pytest.approx(1.5 / 64 + 3 / 256, rel=1e-5)
    assert merged[4, 12] == pytest.approx(5.0 / 64 + 3 / 256, rel=1e-5)
    assert merged[12, 4] == pytest.approx(4.25 / 64 + 3 / 256, rel=1e-5)
    assert merged[12, 12] == pytest.approx(16.0 / 64 + 3 / 256, rel=1e-5)
    assert merged[4, 8] == pytest.approx((1.5 + 5.0) / 2 / 64 + 3 / 256, rel=1e-5)
    # outside the outermost centres the border value holds
    assert merged[0, 0] == pytest.approx(merged[4, 4], rel=1e-6)
    assert merged[15, 15] == pytest.approx(merged[12, 12], rel=1e-6)
    # upscaled x2 (a picture drawn at twice the input size): output pixel p has its centre at
    # input x (p + 0.5) / 2, so pixel 8 sits at 4.25 (held at the first centre's value) and
    # pixels 16 and 17 at 8.25 and 8.75, symmetric about the midpoint of two centres
    (big,) = heat_maps(levels, (16, 16), (32, 32))
    assert big.shape == (32, 32)
    assert big[8, 8] == pytest.approx(merged[4, 4], rel=1e-5)
    assert (big[8, 16] + big[8, 17]) / 2 == pytest.approx(merged[4, 8], rel=1e-5)
    assert big[31, 31] == pytest.approx(merged[15, 15], rel=1e-5)


def test_counts_that_do_not_fit_the_anchors_are_refused():
    anchors, loss, mask, _ = _toy()
    with pytest.raises(ValueError, match="do not fit"):
        location_losses(anchors, (3, 3), loss, mask)


def test_normalise_and_overlay():
    heat = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    np.testing.assert_allclose(normalise(heat), heat / 4)
    np.testing.assert_allclose(normalise(heat, 2.0), [[0, 0.5], [1, 1]])
    assert not normalise(np.zeros((3, 3))).any()
    image = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(image, normalise(heat), alpha=1.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    lut = colormap_lut()
    assert tuple(out[1, 1]) == tuple(lut[255])  # full heat, full opacity: the colour map's top
    assert tuple(out[0, 0]) == (80, 80, 80)  # no heat: the dimmed grey image
    with pytest.raises(ValueError, match="does not fit"):
        overlay(image, np.zeros((3, 2)))
