"""Loading local torchvision state dicts into backbones, and every failure message."""

from __future__ import annotations

import pytest
import torch
import torchvision

from detmine.errors import CheckpointError
from detmine.modeling import build_model
from detmine.modeling.backbones import MobileNetV3SSDLite, ResNetBackbone
from detmine.modeling.weights import load_backbone_weights, resolve_weights_path


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18-test.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_resnet_weights_load_into_the_detector_backbone(resnet18_file):
    saved = torch.load(resnet18_file)
    model = build_model("retinanet_resnet18_fpn", 3, weights=str(resnet18_file))
    body = model.backbone.body.state_dict()
    assert "fc.weight" in saved and "fc.weight" not in body
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(body[key], saved[key])


def test_frozen_bn_backbone_accepts_torchvision_file(resnet18_file):
    backbone = ResNetBackbone(depth=18, weights=resnet18_file, frozen_bn=True)
    saved = torch.load(resnet18_file)
    torch.testing.assert_close(backbone.body.bn1.running_mean, saved["bn1.running_mean"])


def test_mobilenet_weights_keep_the_full_tail(tmp_path):
    path = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), path)
    backbone = MobileNetV3SSDLite(weights=path)
    assert backbone.out_channels == [672, 960]
    torch.testing.assert_close(backbone.features[0][0][0].weight, torch.load(path)["features.0.0.weight"])


def test_bare_name_is_found_in_torch_hub_checkpoints(resnet18_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-cached.pth").write_bytes(resnet18_file.read_bytes())
    assert resolve_weights_path("resnet18-cached.pth") == cache / "resnet18-cached.pth"
    ResNetBackbone(depth=18, weights="resnet18-cached.pth")
    with pytest.raises(CheckpointError, match=r"not found.*nothing\.pth.*hub/checkpoints/nothing\.pth"):
        resolve_weights_path("nothing.pth")


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "sub" / "absent.pth"
    with pytest.raises(CheckpointError, match=f"weights file not found: looked for '{missing}'$"):
        build_model("retinanet_resnet18_fpn", 3, weights=str(missing))


def test_corrupt_and_foreign_files(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(CheckpointError, match=f"cannot read weights file '{corrupt}'"):
        ResNetBackbone(depth=18, weights=corrupt)
    foreign = tmp_path / "list.pth"
    torch.save([1, 2, 3], foreign)
    with pytest.raises(CheckpointError, match=f"'{foreign}' is not a state dict"):
        ResNetBackbone(depth=18, weights=foreign)


def test_wrong_architecture_names_the_keys(tmp_path):
    r34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), r34)
    with pytest.raises(CheckpointError) as info:
        ResNetBackbone(depth=18, weights=r34)
    msg = str(info.value)
    assert f"'{r34}' does not fit the resnet18 backbone" in msg
    assert "unexpected keys: layer1.2.bn1.bias" in msg and "more)" in msg
    assert "\n" not in msg

    small = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    small["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    del small["layer4.1.conv2.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(small, bad)
    with pytest.raises(CheckpointError) as info:
        ResNetBackbone(depth=18, weights=bad)
    msg = str(info.value)
    assert "missing keys: layer4.1.conv2.weight" in msg
    assert "shape mismatch: conv1.weight (file (64, 3, 3, 3) vs model (64, 3, 7, 7))" in msg


def test_tiny_backbone_round_trip(tmp_path):
    model = build_model("retinanet_tiny_fpn", 2)
    path = tmp_path / "tiny.pth"
    torch.save(model.backbone.state_dict(), path)
    again = build_model("retinanet_tiny_fpn", 2, weights=str(path))
    for a, b in zip(model.backbone.state_dict().values(), again.backbone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(CheckpointError, match="does not fit the tiny backbone"):
        load_backbone_weights(
            build_model("ssdlite_tiny", 2, widths=(8, 16, 32, 64, 128)).backbone, path, name="tiny backbone"
        )


def test_vgg16_features_file_loads_into_the_atrous_backbone(tmp_path):
    from detmine.modeling.backbones import VGG16Atrous

    torch.manual_seed(2)
    features = torchvision.models.vgg16(weights=None).features.state_dict()
    path = tmp_path / "vgg16-features.pth"
    torch.save({f"features.{k}": v for k, v in features.items()}, path)  # no classifier keys: allowed
    backbone = VGG16Atrous(weights=path)
    torch.testing.assert_close(backbone.conv4_3[0].weight, features["0.weight"])
    torch.testing.assert_close(backbone.fc7[1].weight, features["24.weight"])  # conv5_1 after pool4


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.sentinel}",))


def test_pickle_payload_in_a_backbone_file_is_refused_and_never_runs(resnet18_file, tmp_path):
    sentinel = tmp_path / "PWNED"
    state = torch.load(resnet18_file)
    state["fc.weight"] = _Payload(sentinel)  # hidden among the real tensors
    evil = tmp_path / "resnet18-evil.pth"
    torch.save(state, evil)
    with pytest.raises(CheckpointError) as info:
        build_model("retinanet_resnet18_fpn", 3, weights=str(evil))
    msg = str(info.value)
    assert msg.startswith(f"weights file {evil} is refused: loading it needs the global ") and "system" in msg
    assert "\n" not in msg and not sentinel.exists()


def test_safetensors_backbone_file(resnet18_file, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(resnet18_file)
    path = tmp_path / "resnet18.safetensors"
    save_file(state, path)
    backbone = ResNetBackbone(depth=18, weights=path)
    torch.testing.assert_close(backbone.body.conv1.weight, state["conv1.weight"], rtol=0, atol=0)
