"""Issue 26's slow spots of training, checked on the CPU: the checkpoint fingerprint in one host copy, validation
that stops re-tuning cuDNN for every padded shape, a confusion matrix counted without host syncs, compile skipped
(with one warning line) where SyncBN on several ranks would break its graph at every layer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rs_deeplab.config.schema import ExperimentConfig, apply_overrides, validate_config
from rs_deeplab.evaluation.metrics import confusion_matrix
from rs_deeplab.models import build_model
from rs_deeplab.training.datasets.sampling import pad_collate
from rs_deeplab.training.distributed import DistEnv, parameter_fingerprint
from rs_deeplab.training.engine import device_confusion, evaluate, keep_benchmark
from rs_deeplab.training.experiment import compile_decision, runtime_record
from tests.training.test_losses_sync import _HostSyncs


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


class FlagRecorder(nn.Module):
    """A pointwise model (a 1x1 convolution: padding changes no valid pixel) noting ``cudnn.benchmark`` per call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)
        self.flags: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.flags.append(torch.backends.cudnn.benchmark)
        return self.conv(x)


def _samples() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    sizes = [(20, 24), (20, 24), (17, 30), (25, 19), (20, 24), (31, 9), (12, 12), (20, 24)]
    out = []
    for h, w in sizes:
        mask = torch.randint(0, 4, (h, w), generator=g).to(torch.uint8)
        mask[:2] = 255
        out.append((torch.randn(3, h, w, generator=g), mask))
    return out


def test_validation_tunes_two_shapes_then_stops_restores_the_setting_and_counts_the_same() -> None:
    samples = _samples()
    batches = [pad_collate(samples[i : i + 2]) for i in range(0, len(samples), 2)]  # shapes A, B, C, A (padded)
    assert len({tuple(b[0].shape) for b in batches}) == 3
    model = FlagRecorder()
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        tuned = evaluate(model, batches, 4, device=torch.device("cpu"))  # type: ignore[arg-type]
        assert model.flags == [True, True, False, False]  # the third shape stops tuning for the rest
        assert torch.backends.cudnn.benchmark is True  # restored
        torch.backends.cudnn.benchmark = False
        plain = evaluate(model, batches, 4, device=torch.device("cpu"))  # type: ignore[arg-type]
        assert model.flags[4:] == [False] * 4  # off stays off
    finally:
        torch.backends.cudnn.benchmark = before
    np.testing.assert_array_equal(tuned, plain)
    with torch.no_grad():  # each sample alone, unpadded: the padding (label 255) counts nothing
        want = sum(confusion_matrix(model.conv(img[None]).argmax(1)[0].numpy(), msk.numpy(), 4) for img, msk in samples)
    np.testing.assert_array_equal(tuned, want)


def test_keep_benchmark() -> None:
    seen: set[tuple[int, ...]] = set()
    shapes = [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8), (2, 3, 9, 8), (2, 3, 8, 8)]
    assert [keep_benchmark(seen, s) for s in shapes] == [True, True, True, False, False]


def test_device_confusion_skips_what_it_must_without_waiting_for_the_device() -> None:
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 6, (3, 20, 21)).astype(np.int64)
    truth[0, :5] = 255
    pred = rng.integers(-1, 8, (3, 20, 21))  # -1 and 6, 7: predictions outside the classes, skipped
    with _HostSyncs() as mode:
        got = device_confusion(torch.from_numpy(pred), torch.from_numpy(truth), 6)
    assert mode.seen == [] and got.dtype == torch.int64
    keep = (truth < 6) & (pred >= 0) & (pred < 6)
    np.testing.assert_array_equal(got.numpy(), confusion_matrix(pred[keep], truth[keep], 6))


def test_compile_with_syncbn_on_several_ranks_is_skipped_with_one_warning_line() -> None:
    assert compile_decision(True, sync_bn=False, world_size=4) == (True, None)  # compiled as before
    assert compile_decision(True, sync_bn=True, world_size=1) == (True, None)
    assert compile_decision(False, sync_bn=True, world_size=2) == (False, None)
    compiled, why = compile_decision(True, sync_bn=True, world_size=2)
    assert not compiled and why is not None and "\n" not in why
    assert "2 ranks" in why and "train.sync_bn=false" in why and "train.compile=false" in why
    overrides = ["train.compile=true", "train.sync_bn=true"]
    cfg = validate_config(apply_overrides({}, overrides), ExperimentConfig)
    cpu = torch.device("cpu")
    assert runtime_record(cfg, DistEnv(0, 0, 2, True), cpu, None)["compile"] is False  # what ran is recorded
    assert runtime_record(cfg, DistEnv(0, 0, 1, True), cpu, None)["compile"] is True
