"""Multi-scale inputs (MSC, DeepLab v2 section 4) on every model and head: fusion, gradients, loss, training, export."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.functional import interpolate

from pipelines import export as export_cli
from pipelines import train as train_cli
from rs_deeplab.cli.errors import ConfigError, InputError
from rs_deeplab.config.schema import ExperimentConfig, validate_config
from rs_deeplab.inference.runtimes.trained import load_trained_model
from rs_deeplab.models import MODELS, DeepLabBase, MSCOutput, SegOutput, build_model
from rs_deeplab.training.checkpoint import load_checkpoint
from rs_deeplab.training.engine import segmentation_loss
from rs_deeplab.training.losses import cross_entropy
from tests.trainkit import make_tiles, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCALES = (1.0, 0.75, 0.5)
NUM_CLASSES = 4
H, W = 65, 77  # odd and non-square: each scale's input (48x57, 32x38) is odd-sized or off the stride too
CASES = [(name, head) for name, spec in MODELS.items() for head in spec.heads]
IDS = [f"{name}-{head}" for name, head in CASES]


def small_backbone(name: str) -> str:
    backbones = MODELS[name].backbones
    return "resnet18" if "resnet18" in backbones else backbones[0]


def msc_model(name: str, head: str, **kw: Any) -> DeepLabBase:
    """A fresh MSC model with every dropout off (so train-mode passes are repeatable)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, backbone=small_backbone(name), head=head, msc=SCALES, **kw)
    for module in model.modules():
        if isinstance(module, nn.Dropout | nn.Dropout2d):
            module.p = 0.0
    return model


@functools.cache
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, H, W, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (2, H, W), generator=generator)
    target[:, :20, :] = 255  # the top band is ignored
    return x, target


def manual_maps(model: DeepLabBase, x: torch.Tensor) -> list[torch.Tensor]:
    """Each scale's logits computed by hand: input resized to floor(size * scale), logits back to the input size."""
    maps = []
    for scale in SCALES:
        size = (math.floor(H * scale), math.floor(W * scale))
        xs = interpolate(x, size=size, mode="bilinear", align_corners=True) if scale != 1.0 else x
        out = model.forward_single(xs)
        out = out.out if isinstance(out, SegOutput) else out
        maps.append(interpolate(out, size=(H, W), mode="bilinear", align_corners=True))
    return maps


def first_conv(model: DeepLabBase) -> nn.Conv2d:
    return next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(("name", "head"), CASES, ids=IDS)
def test_training_output_fusion_gradients_and_ignore(name: str, head: str) -> None:
    model = msc_model(name, head).train()
    x, target = batch()
    out = model(x)
    assert isinstance(out, MSCOutput) and len(out.scales) == len(SCALES)
    assert out.out.shape == (2, NUM_CLASSES, H, W) and all(m.shape == out.out.shape for m in out.scales)
    assert (out.aux is not None) == model.has_aux and (out.aux is None or out.aux.shape == out.out.shape)
    # the fused map is the per-position, per-class maximum of the scale maps, each computed here by hand
    with torch.no_grad():
        by_hand = manual_maps(model, x)
    for got, want in zip(out.scales, by_hand, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.out, torch.stack(by_hand).amax(0), rtol=1e-4, atol=1e-5)
    assert torch.equal(out.out, torch.stack(out.scales).amax(0))
    assert not torch.equal(out.scales[0], out.scales[1]) and not torch.equal(out.out, out.scales[0])
    # every scale alone sends gradients to the first convolution: the weights are shared by all passes
    conv = first_conv(model).weight
    for i, scale_map in enumerate([*out.scales, out.out]):
        (grad,) = torch.autograd.grad(cross_entropy(scale_map, target), conv, retain_graph=True)
        assert grad.abs().sum() > 0, f"no gradient through output {i}"
    # the loss: fused + each scale (weight 1 by default) + the aux head's of the scale-1 pass; 255 adds nothing
    maps = [out.out, *out.scales] + ([out.aux] if out.aux is not None else [])
    for m in maps:
        m.retain_grad()
    loss = segmentation_loss(out, target, class_weights=None, aux_weight=model.aux_weight)
    terms = [cross_entropy(m, target) for m in [out.out, *out.scales]]
    expected = sum(terms) + (model.aux_weight * cross_entropy(out.aux, target) if out.aux is not None else 0.0)
    torch.testing.assert_close(loss, expected)
    half = segmentation_loss(out, target, class_weights=None, aux_weight=model.aux_weight, msc_weight=0.5)
    torch.testing.assert_close(loss - half, 0.5 * sum(terms[1:]))
    loss.backward()
    for m in maps:
        assert m.grad is not None
        assert not m.grad[:, :, :20].any(), "ignored pixels (255) received a gradient"
        assert m.grad[:, :, 20:].abs().sum() > 0
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert without == []


@pytest.mark.parametrize(("name", "head"), CASES, ids=IDS)
def test_eval_output_is_the_fused_training_output(name: str, head: str) -> None:
    model = msc_model(name, head).train()
    for module in model.modules():  # training mode, but batch norm on its running statistics: eval's arithmetic
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    x = batch()[0][:1, :, :, :-2]  # 65 x 75
    with torch.no_grad():
        trained = model(x)
        model.eval()
        evaluated = model(x)
    assert isinstance(trained, MSCOutput) and isinstance(evaluated, torch.Tensor)
    assert not isinstance(evaluated, tuple) and evaluated.shape == (1, NUM_CLASSES, H, W - 2)
    torch.testing.assert_close(evaluated, trained.out, rtol=0, atol=0)


def test_scales_add_no_weights_and_load_either_way() -> None:
    single = build_model("deeplabv2", num_classes=3, backbone="resnet18")
    multi = build_model("deeplabv2", num_classes=3, backbone="resnet18", msc=[1.0, 0.5])
    assert list(single.state_dict()) == list(multi.state_dict())
    multi.load_state_dict(single.state_dict())
    assert multi.msc_scales == (1.0, 0.5) and single.msc_scales is None
    x = torch.randn(1, 3, 41, 43)
    with torch.no_grad():
        assert torch.equal(multi.eval().forward_single(x), single.eval()(x))


@pytest.mark.parametrize(
    ("msc", "message"),
    [
        ([1.0], "at least two scales"),
        ([0.75, 0.5], "must include 1.0"),
        ([1.0, 0.0], "positive"),
        ([1.0, -0.5], "positive"),
        ([1.0, 0.5, 0.5], "distinct"),
    ],
)
def test_bad_scales_are_one_line(msc: list[float], message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_model("deeplabv2", num_classes=2, backbone="resnet18", msc=msc)
    with pytest.raises(ConfigError, match=r"model\.msc") as err:
        validate_config({"model": {"name": "deeplabv2", "msc": msc}}, ExperimentConfig)
    assert "\n" not in str(err.value)


def test_a_scale_that_shrinks_the_crop_below_the_output_stride_is_refused() -> None:
    data: dict[str, Any] = {"model": {"name": "deeplabv3plus", "msc": [1.0, 0.75, 0.25]}, "data": {"crop_size": 48}}
    with pytest.raises(ConfigError) as err:
        validate_config(data, ExperimentConfig, source="exp.yaml")
    text = str(err.value)
    assert text == (
        "exp.yaml: model.msc: scale 0.25 makes the 48-pixel training crop 12 pixels, smaller than the output "
        "stride 16 of deeplabv3plus; drop 0.25 from model.msc or raise data.crop_size to at least 64"
    )
    validate_config({**data, "model": {**data["model"], "output_stride": 8}}, ExperimentConfig)  # 12 >= 8
    ok = validate_config({**data, "data": {"crop_size": [64, 128]}}, ExperimentConfig)  # the short side counts
    assert ok.model.msc == [1.0, 0.75, 0.25]
    with pytest.raises(ConfigError, match=r"scale 0\.25 makes the 60-pixel"):
        validate_config({**data, "data": {"crop_size": [60, 128]}}, ExperimentConfig)


@pytest.mark.slow
def test_msc_trains_checkpoints_reloads_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RS_DEEPLAB_NO_PROGRESS", "1")
    tiles = make_tiles(tmp_path / "data", size=96, crop=48)
    sections: dict[str, dict[str, object]] = {
        "model": {"name": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16, "msc": list(SCALES)},
        "schedule": {"iterations": 2},
        "train": {"eval_every": 2, "checkpoint_every": 2, "log_every": 1, "device": "cpu"},
        "infer": {"size": 48, "stride": 48},
    }
    cfg = write_config(tmp_path / "msc.yaml", tiles, tmp_path / "run", **sections)
    # the CLI refuses a scale that makes the 48-pixel crop smaller than the stride: one line, exit 2
    assert train_cli.main([str(cfg), "model.msc=[1.0,0.25]", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scale 0.25" in err[0] and "data.crop_size to at least 64" in err[0]
    assert not (tmp_path / "run").exists()

    assert train_cli.main([str(cfg), "--quiet"]) == 0
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["config"]["model"]["msc"] == list(SCALES) and state["config"]["model"]["msc_weight"] == 1.0
    model, _ = load_trained_model(tmp_path / "run" / "last.pt", torch.device("cpu"))
    assert isinstance(model, DeepLabBase) and model.msc_scales == SCALES and not model.training

    onnx_path = tmp_path / "msc.onnx"
    assert export_cli.main([str(tmp_path / "run" / "last.pt"), "--out", str(onnx_path), "-q"]) == 0
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 4, 67, 81, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, single = model(x).numpy(), model.forward_single(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    assert got.shape == want.shape == (2, 6, 67, 81)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(got - single).max() > 1e-2  # the export runs the fused model, not the scale-1 pass alone
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3  # labels compared where no near-tie makes argmax arbitrary
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got.argmax(1)[clear], want.argmax(1)[clear])
