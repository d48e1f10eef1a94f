"""Losses for imbalanced data: hand-computed values, ignore 255, class weights, gradients, bf16, the auxiliary head."""

from __future__ import annotations

import math

import pytest
import torch

from rs_deeplab.cli.errors import ConfigError
from rs_deeplab.config.loss_spec import parse_loss
from rs_deeplab.config.schema import ExperimentConfig, apply_overrides, validate_config
from rs_deeplab.models import MSCOutput, SegOutput
from rs_deeplab.training.engine import segmentation_loss
from rs_deeplab.training.losses import LOSSES, build_loss


def small_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Three pixels of two classes: probabilities (0.5, 0.5) truth 0, (0.75, 0.25) truth 1, one ignored pixel."""
    logits = torch.tensor([[0.0, math.log(3.0), 5.0], [0.0, 0.0, -5.0]]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    return logits, target


# by hand: CE = (ln 2 + ln 4) / 2; Dice per class 1 - (2·inter + 1)/(Σp + Σy + 1): class 0 1 - 2/3.25, class 1
# 1 - 1.5/2.75; focal (1-p_t)^2·(-ln p_t): 0.25 ln 2, 0.5625 ln 4; Lovász class 0: errors (0.75, 0.5) with
# gradient (0.5, 0.5) = 0.625, class 1: errors (0.75, 0.5) with gradient (1, 0) = 0.75.
EXPECTED = {
    "ce": (math.log(2) + math.log(4)) / 2,
    "dice": ((1 - 2 / 3.25) + (1 - 1.5 / 2.75)) / 2,
    "focal": (0.25 * math.log(2) + 0.5625 * math.log(4)) / 2,
    "lovasz": (0.625 + 0.75) / 2,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loss_matches_hand_computed_value(name: str) -> None:
    logits, target = small_case()
    assert build_loss(name)(logits, target).item() == pytest.approx(EXPECTED[name], abs=1e-5)


def test_class_weights_make_a_weighted_mean() -> None:
    logits, target = small_case()
    weights = torch.tensor([1.0, 3.0])
    ce = build_loss("ce", weights)(logits, target).item()
    assert ce == pytest.approx((math.log(2) + 3 * math.log(4)) / 4, abs=1e-5)
    dice = build_loss("dice", weights)(logits, target).item()
    assert dice == pytest.approx(((1 - 2 / 3.25) + 3 * (1 - 1.5 / 2.75)) / 4, abs=1e-5)
    focal = build_loss("focal", weights)(logits, target).item()
    assert focal == pytest.approx((0.25 * math.log(2) + 3 * 0.5625 * math.log(4)) / 4, abs=1e-5)
    lovasz = build_loss("lovasz", weights)(logits, target).item()
    assert lovasz == pytest.approx((0.625 + 3 * 0.75) / 4, abs=1e-5)


def test_combination_is_the_weighted_sum() -> None:
    logits, target = small_case()
    assert parse_loss("ce + 0.5*dice") == [(1.0, "ce"), (0.5, "dice")]
    total = build_loss("ce+0.5*dice+2*lovasz")(logits, target).item()
    assert total == pytest.approx(EXPECTED["ce"] + 0.5 * EXPECTED["dice"] + 2 * EXPECTED["lovasz"], abs=1e-5)


@pytest.mark.parametrize("spec", ["ce+", "bce", "0*dice", "ce+ce", "-1*ce", "dice*2"])
def test_bad_spec_is_one_config_line(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_loss(spec)
    with pytest.raises(ConfigError) as err:
        validate_config(apply_overrides({}, [f"train.loss={spec}"]), ExperimentConfig)
    assert "train.loss" in str(err.value) and "ce, dice, lovasz, focal" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", [*LOSSES, "ce+dice"])
def test_gradients_flow_and_skip_ignored_pixels(name: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :2] = 255
    loss = build_loss(name, torch.tensor([1.0, 2.0, 0.5]))(logits, target)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[:, :, 2:].abs().sum() > 0
    assert logits.grad[:, :, :2].abs().sum() == 0  # label 255 contributes nothing


@pytest.mark.parametrize("name", [*LOSSES, "ce+0.5*lovasz"])
def test_bf16_logits_give_a_float32_loss(name: str) -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 6, 6)
    target = torch.randint(0, 3, (1, 6, 6))
    low = logits.to(torch.bfloat16).requires_grad_()
    loss = build_loss(name)(low, target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(build_loss(name)(low.float(), target).item(), abs=1e-6)
    loss.backward()
    assert low.grad is not None and low.grad.dtype == torch.bfloat16


def test_all_ignored_gives_zero_for_pixel_losses() -> None:
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    target = torch.full((1, 3, 3), 255)
    for name in ("focal", "lovasz"):
        loss = build_loss(name)(logits, target)
        assert loss.item() == 0.0
        loss.backward()


@pytest.mark.parametrize("name", ["dice", "ce+lovasz"])
def test_auxiliary_head_adds_its_weighted_loss(name: str) -> None:
    torch.manual_seed(2)
    out, aux = torch.randn(2, 1, 3, 4, 4).unbind(0)
    target = torch.randint(0, 3, (1, 4, 4))
    fn = build_loss(name)
    total = segmentation_loss(SegOutput(out, aux), target, class_weights=None, aux_weight=0.4, loss_fn=fn)
    assert total.item() == pytest.approx(fn(out, target).item() + 0.4 * fn(aux, target).item(), abs=1e-6)


@pytest.mark.parametrize("name", ["ce", "ce+dice", "focal"])
def test_msc_loss_sums_fused_and_scales_and_ignores_255_in_each(name: str) -> None:
    torch.manual_seed(3)
    fused, s1, s2, aux = (t.requires_grad_() for t in torch.randn(4, 2, 3, 5, 6).unbind(0))
    target = torch.randint(0, 3, (2, 5, 6))
    target[:, :2] = 255  # two ignored rows in every map
    fn = build_loss(name)
    for aux_map in (aux, None):
        out = MSCOutput(fused, (s1, s2), aux_map)
        total = segmentation_loss(out, target, class_weights=None, aux_weight=0.4, loss_fn=fn, msc_weight=0.5)
        want = fn(fused, target) + 0.5 * (fn(s1, target) + fn(s2, target))
        want = want + (0.4 * fn(aux, target) if aux_map is not None else 0.0)
        assert total.item() == pytest.approx(want.item(), abs=1e-6)
        grads = torch.autograd.grad(total, [fused, s1, s2] + ([aux] if aux_map is not None else []))
        for grad in grads:
            assert not grad[:, :, :2].any() and grad[:, :, 2:].any()


def test_default_loss_is_cross_entropy() -> None:
    logits, target = small_case()
    loss = segmentation_loss(logits, target, class_weights=None, aux_weight=0.0)
    assert loss.item() == pytest.approx(EXPECTED["ce"], abs=1e-5)
