"""Local ImageNet weights: strict loading into each backbone, first-layer band adaptation, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18, resnet34, vgg

from rs_deeplab.cli.errors import CheckpointError
from rs_deeplab.models import build_model
from rs_deeplab.models.deeplab_v1 import DeepLabV1
from rs_deeplab.models.weights import adapt_first_conv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A state_dict saved from a randomly initialised torchvision resnet18, as an ImageNet file would be."""
    torch.manual_seed(7)
    state = resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("name", ["deeplabv2", "deeplabv3", "deeplabv3plus"])
def test_resnet_weights_fill_the_encoder(name: str, resnet18_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = resnet18_file
    model = build_model(name, num_classes=3, backbone="resnet18", weights=path)
    loaded = model.encoder.state_dict()
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


@pytest.mark.parametrize("in_channels", [1, 2, 4, 5])
@pytest.mark.parametrize("name", ["deeplabv2", "deeplabv3plus"])
def test_first_conv_is_adapted_to_the_bands(
    name: str, in_channels: int, resnet18_file: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    path, state = resnet18_file
    model = build_model(name, num_classes=3, backbone="resnet18", in_channels=in_channels, weights=path)
    rgb = state["conv1.weight"]
    weight = model.encoder.conv1.weight.detach()
    mean = rgb.mean(dim=1)
    assert weight.shape == (64, in_channels, 7, 7)
    if in_channels > 3:  # RGB kept, every extra band initialised with the mean RGB kernel
        assert torch.equal(weight[:, :3], rgb)
        for band in range(3, in_channels):
            torch.testing.assert_close(weight[:, band], mean)
    else:  # every band gets the mean RGB kernel scaled by 3 / bands: grey in -> same response as RGB grey
        for band in range(in_channels):
            torch.testing.assert_close(weight[:, band], mean * 3 / in_channels)
        grey = torch.randn(1, 1, 9, 9)
        rgb_response = torch.nn.functional.conv2d(grey.expand(-1, 3, -1, -1), rgb)
        torch.testing.assert_close(
            torch.nn.functional.conv2d(grey.expand(-1, in_channels, -1, -1), weight), rgb_response
        )


def test_adapt_first_conv_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="3 input channels"):
        adapt_first_conv(torch.zeros(8, 4, 3, 3), 5)


def test_wrapped_and_ddp_prefixed_state_dicts_load(
    tmp_path: Path, resnet18_file: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    _, state = resnet18_file
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}, path)
    model = build_model("deeplabv3", num_classes=2, backbone="resnet18", weights=path)
    assert torch.equal(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_resnet_weights_for_v1_name_the_vgg_keys(resnet18_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = resnet18_file
    with pytest.raises(CheckpointError, match=r"encoder keys missing \(features\.0\.weight, features\.0\.bias"):
        build_model("deeplabv1", num_classes=2, weights=path)


def test_vgg16_conv_weights_load_into_v1(tmp_path: Path) -> None:
    torch.manual_seed(3)
    features = vgg.make_layers(vgg.cfgs["D"])  # torchvision's vgg16().features, without the big classifier
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path / "vgg16_features.pth"
    torch.save(state, path)
    model = build_model("deeplabv1", num_classes=4, in_channels=4, weights=path)
    loaded = model.encoder.state_dict()
    assert torch.equal(loaded["28.weight"], state["features.28.weight"])
    assert torch.equal(loaded["0.weight"][:, :3], state["features.0.weight"])


def test_vgg16_fully_connected_layers_are_decimated_into_fc6_fc7() -> None:
    model = DeepLabV1(num_classes=2)
    state = {f"features.{k}": v for k, v in model.encoder.state_dict().items()}
    fc6 = torch.zeros(4096, 512, 7, 7)  # zeros: cheap to allocate even at VGG's 103M-parameter size
    fc6[8, 5, 3, 6] = 1.0  # kept: output 8 = 2 * 4, positions 3 and 6 are on the stride-3 grid
    fc6[9, 5, 3, 6] = 2.0  # dropped: output 9 is not a multiple of 4
    fc6[8, 5, 4, 6] = 3.0  # dropped: row 4 is off the grid
    fc7 = torch.zeros(4096, 4096)
    fc7[12, 40] = 4.0  # kept -> (3, 10)
    state |= {
        "classifier.0.weight": fc6.reshape(4096, -1),
        "classifier.0.bias": torch.arange(4096.0),
        "classifier.3.weight": fc7,
        "classifier.3.bias": torch.arange(4096.0),
        "classifier.6.weight": torch.zeros(1000, 4096),
        "classifier.6.bias": torch.zeros(1000),
    }
    model.load_imagenet(state, "in-memory")
    assert model.fc6.weight.shape == (1024, 512, 3, 3)
    assert model.fc6.weight.abs().sum() == 1.0 and model.fc6.weight[2, 5, 1, 2] == 1.0
    assert model.fc7.weight.abs().sum() == 4.0 and model.fc7.weight[3, 10, 0, 0] == 4.0
    assert torch.equal(model.fc6.bias, torch.arange(0, 4096, 4.0))


# ---- errors: one line, naming the file and what was expected -------------------------------------------------


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=r"nope\.pth: weights file not found"):
        build_model("deeplabv3", num_classes=2, backbone="resnet18", weights=path)


def test_corrupt_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(CheckpointError, match=r"corrupt\.pth: cannot read weights file") as info:
        build_model("deeplabv2", num_classes=2, backbone="resnet18", weights=path)
    assert "\n" not in str(info.value)


def test_file_without_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        build_model("deeplabv3", num_classes=2, backbone="resnet18", weights=path)


def test_weights_of_another_backbone_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(resnet34(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build_model("deeplabv3plus", num_classes=2, backbone="resnet18", weights=path)
    message = str(info.value)
    assert "resnet34.pth: " in message and "unexpected keys (layer1.2." in message
    assert "expected a torchvision resnet18 ImageNet state_dict with keys like conv1.weight" in message
    assert "\n" not in message


def test_vgg_weights_for_a_resnet_name_the_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "vgg.pth"
    torch.save({f"features.{k}": v for k, v in vgg.make_layers([8, "M"]).state_dict().items()}, path)
    with pytest.raises(CheckpointError, match=r"vgg\.pth: \d+ encoder keys missing \(conv1\.weight, bn1\.weight"):
        build_model("deeplabv2", num_classes=2, backbone="resnet18", weights=path)


def test_mismatched_shape_names_key_and_shapes(
    tmp_path: Path, resnet18_file: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    _, state = resnet18_file
    path = tmp_path / "bad_shape.pth"
    torch.save({**state, "layer2.0.conv1.weight": torch.zeros(128, 32, 3, 3)}, path)
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv1\.weight has shape \(128, 32, 3, 3\) but the model"):
        build_model("deeplabv3", num_classes=2, backbone="resnet18", weights=path)


def test_vgg_classifier_of_the_wrong_shape(tmp_path: Path) -> None:
    features = vgg.make_layers(vgg.cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(10, 10)
    path = tmp_path / "vgg_bad_fc.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="VGG classifier tensors have shapes"):
        build_model("deeplabv1", num_classes=2, weights=path)
