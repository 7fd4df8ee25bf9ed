import pytest
import torch

from detmine.mining import AllAnchorsMiner


def test_selects_exactly_the_non_ignored_anchors():
    labels = torch.tensor([[-1, 0, 3, 0, -1], [0, 0, 0, 0, 0]])
    loss = torch.rand(2, 5)
    selected = AllAnchorsMiner()(loss, labels, None)
    assert selected.dtype == torch.bool
    assert selected.tolist() == [[False, True, True, True, False], [True] * 5]


def test_all_ignored_image_selects_nothing():
    labels = torch.full((1, 7), -1)
    assert not AllAnchorsMiner()(torch.rand(1, 7), labels, None).any()


def test_takes_no_boxes_but_accepts_them():
    assert AllAnchorsMiner.box_source is None
    assert AllAnchorsMiner.normalize_by == "positives"
    labels = torch.tensor([[0, 1]])
    assert AllAnchorsMiner()(torch.rand(1, 2), labels, torch.rand(1, 2, 4)).all()


@pytest.mark.parametrize(
    "loss, labels, boxes, match",
    [
        (torch.rand(2, 5), torch.zeros(2, 4, dtype=torch.long), None, "labels"),
        (torch.rand(10), torch.zeros(10, dtype=torch.long), None, "cls_loss"),
        (torch.rand(2, 5), torch.zeros(2, 5), None, "labels"),
        (torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.long), torch.rand(2, 5, 3), "boxes"),
    ],
)
def test_wrong_shapes_or_dtypes_name_the_tensor(loss, labels, boxes, match):
    with pytest.raises(ValueError, match=match):
        AllAnchorsMiner()(loss, labels, boxes)
