"""Issue 26's slow spots of training, checked on the CPU: the checkpoint fingerprint in one host copy."""

from __future__ import annotations

import torch
from torch import nn

from rs_deeplab.models import build_model
from rs_deeplab.training.distributed import parameter_fingerprint


def _fingerprint_before(model: nn.Module) -> torch.Tensor:
    """The fingerprint as it was before issue 26: one host copy per parameter."""
    total = torch.zeros(2, dtype=torch.float64)
    for p in model.parameters():
        data = p.detach().to("cpu", torch.float64)
        total += torch.stack([data.sum(), (data * data).sum()])
    return total


def test_fingerprint_is_bit_identical_to_before() -> None:
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", num_classes=6, in_channels=4, backbone="resnet18", weights=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    got, want = parameter_fingerprint(model), _fingerprint_before(model)
    assert got.dtype == torch.float64 and torch.equal(got, want), (got.tolist(), want.tolist())
    half = nn.Linear(7, 3).to(torch.bfloat16)
    assert torch.equal(parameter_fingerprint(half), _fingerprint_before(half))
    assert torch.equal(parameter_fingerprint(nn.ReLU()), torch.zeros(2, dtype=torch.float64))
