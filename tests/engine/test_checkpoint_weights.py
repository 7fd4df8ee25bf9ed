"""Weights into a model (strict / partial, one-line mismatch messages), exported
``.safetensors`` files read back as checkpoints, and which weights get selected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detmine.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint, select_weights
from detmine.engine.export import export_safetensors
from detmine.errors import CheckpointError


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64))
        self.cls_logits = nn.Conv2d(64, classes, 3)
        self.box = nn.Conv2d(64, 4, 3)


def test_strict_load_returns_nothing_skipped():
    src, dst = Net(), Net()
    assert load_model_state(dst, src.state_dict(), source="x.pth") == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_strict_mismatch_names_tensors_shapes_missing_unexpected():
    state = Net(classes=9).state_dict()
    del state["box.bias"]
    state["extra.weight"] = torch.zeros(1)
    model = Net(classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_model_state(model, state, source="x.pth")
    assert str(info.value) == (
        "checkpoint x.pth does not fit the model: cls_logits.weight is [9, 64, 3, 3] in the checkpoint "
        "but [3, 64, 3, 3] in the model (and 1 more); missing: box.bias; unexpected: extra.weight"
    )
    for k, v in model.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k])


def test_partial_load_for_fine_tuning_with_other_classes():
    src, model = Net(classes=9), Net(classes=3)
    head = model.cls_logits.weight.detach().clone()
    state = {k: v for k, v in src.state_dict().items() if k != "box.bias"}
    skipped = load_model_state(model, state, source="x.pth", partial=True)
    assert skipped == ["cls_logits.weight", "cls_logits.bias", "box.bias"]
    assert torch.equal(model.cls_logits.weight, head)  # kept its initialisation
    assert torch.equal(model.body[0].weight, src.body[0].weight)
    assert torch.equal(model.body[1].running_mean, src.body[1].running_mean)


def test_partial_load_of_an_unrelated_file_is_refused():
    with pytest.raises(CheckpointError, match="does not fit the model at all"):
        load_model_state(Net(), {"other.weight": torch.zeros(2)}, source="x.pth", partial=True)


def test_counters_may_be_absent():
    state = {k: v for k, v in Net().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert load_model_state(Net(), state, source="x.pth") == []


def _checkpoint(tmp_path, ema=True):
    torch.manual_seed(0)
    model, averaged = Net(), Net()
    state = {
        "model": model.state_dict(),
        "ema": {"module": averaged.state_dict(), "updates": 3} if ema else None,
        "optimizer": {"state": {}, "param_groups": []},
        "iteration": 42,
        "config": {"model": {"name": "net", "options": {"widths": (8, 16)}}, "train": {"lr": 0.01}},
    }
    return save_checkpoint(tmp_path / "model_0000042.pth", state), model, averaged


@pytest.mark.parametrize("which", ["auto", "ema", "model"])
def test_pth_to_safetensors_round_trip_is_identical(tmp_path, which):
    path, model, averaged = _checkpoint(tmp_path)
    out, chosen = export_safetensors(path, tmp_path / "net.safetensors", which)
    assert chosen == ("model" if which == "model" else "ema")
    expected = (model if chosen == "model" else averaged).state_dict()
    state = load_checkpoint(out)
    assert state["exported_weights"] == chosen and state["iteration"] == 42
    assert state["config"] == {
        "model": {"name": "net", "options": {"widths": [8, 16]}},
        "train": {"lr": 0.01},
    }
    assert sorted(state["model"]) == sorted(expected)  # safetensors stores keys sorted
    for k, v in expected.items():
        assert state["model"][k].dtype == v.dtype and torch.equal(state["model"][k], v), k
    weights, label = select_weights(state, "auto", str(out))
    assert label == chosen and weights is state["model"]
    other = "model" if chosen == "ema" else "ema"
    with pytest.raises(CheckpointError, match=f"holds only the {chosen} weights"):
        select_weights(state, other, str(out))
    # the exported file loads into the model like the checkpoint does
    assert load_model_state(Net(), state["model"], source=str(out)) == []


def test_safetensors_detected_by_content_and_without_metadata(tmp_path):
    from safetensors.torch import save_file

    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, tmp_path / "weights.bin")  # no suffix, no detmine metadata
    state = load_checkpoint(tmp_path / "weights.bin")
    assert torch.equal(state["model"]["w"], tensors["w"]) and state["config"] is None
    assert select_weights(state, "auto", "weights.bin")[1] == "model"
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(CheckpointError, match="broken.safetensors is corrupt"):
        load_checkpoint(tmp_path / "broken.safetensors")


def test_export_of_a_bare_state_dict_and_bad_outputs(tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(Net().state_dict(), bare)
    out, which = export_safetensors(bare, tmp_path / "bare.safetensors")
    assert which == "model" and load_checkpoint(out)["config"] is None
    with pytest.raises(CheckpointError, match="bare state dict without EMA"):
        export_safetensors(bare, tmp_path / "x.safetensors", "ema")
    with pytest.raises(CheckpointError, match=r"must end in \.safetensors"):
        export_safetensors(bare, tmp_path / "x.pth")
    path, *_ = _checkpoint(tmp_path, ema=False)
    with pytest.raises(CheckpointError, match="has no EMA weights"):
        export_safetensors(path, tmp_path / "y.safetensors", "ema")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
