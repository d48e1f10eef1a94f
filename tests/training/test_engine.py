"""The training engine's builders: only the optimisers and learning-rate policies it knows, never a silent stand-in."""

from __future__ import annotations

import pytest
import torch

from rs_deeplab.config.schema import OptimizerConfig, ScheduleConfig
from rs_deeplab.models import build_model
from rs_deeplab.training.engine import LR_POLICIES, OPTIMIZERS, build_lr_schedule, build_optimizer


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model("deeplabv3plus", num_classes=3, backbone="resnet18")


def test_each_supported_optimizer_is_what_it_says(model: torch.nn.Module) -> None:
    sgd = build_optimizer(model, name="sgd", lr=0.02, nesterov=True)
    adamw = build_optimizer(model, name="adamw", lr=0.02)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["nesterov"] is True
    assert type(adamw) is torch.optim.AdamW
    for opt in (sgd, adamw):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.2])  # head at 10× the backbone


@pytest.mark.parametrize("name", ["adam", "SGD", "rmsprop", ""])
def test_an_unknown_optimizer_name_raises_instead_of_becoming_adamw(model: torch.nn.Module, name: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown optimizer '{name}'; use one of sgd, adamw"):
        build_optimizer(model, name=name)


def test_an_unknown_lr_policy_raises_instead_of_becoming_poly(model: torch.nn.Module) -> None:
    opt = build_optimizer(model, lr=0.01)
    with pytest.raises(ValueError, match=r"unknown learning-rate policy 'cosine'; use one of poly, step"):
        build_lr_schedule(opt, iterations=100, policy="cosine")


def test_the_builders_accept_exactly_what_the_config_allows() -> None:
    """The config's Literal and the engine's names are one list: a valid YAML value always builds."""
    assert set(OptimizerConfig.model_fields["name"].annotation.__args__) == set(OPTIMIZERS)  # type: ignore[union-attr]
    assert set(ScheduleConfig.model_fields["policy"].annotation.__args__) == set(LR_POLICIES)  # type: ignore[union-attr]
