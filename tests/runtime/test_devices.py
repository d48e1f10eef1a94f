"""The one device and precision decision: pure functions over (choice, torchrun rank, visible GPUs, capability)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from rs_deeplab.cli.errors import InputError
from rs_deeplab.runtime.devices import pick_amp, pick_device, precision_name, resolve_amp, resolve_device
from tests.sources import parse


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_each_rank_binds_its_own_gpu(rank: int) -> None:
    for choice in ("auto", "cuda"):
        assert resolve_device(choice, local_rank=rank, cuda_count=4) == torch.device("cuda", rank)


def test_cpu_choice_on_a_gpu_host_stays_on_cpu() -> None:
    for rank in range(4):
        assert resolve_device("cpu", local_rank=rank, cuda_count=4) == torch.device("cpu")


def test_auto_without_gpus_is_cpu_for_every_rank() -> None:
    for rank in range(4):
        assert resolve_device("auto", local_rank=rank, cuda_count=0) == torch.device("cpu")


def test_too_few_gpus_names_local_rank_and_count() -> None:
    with pytest.raises(InputError) as err:
        resolve_device("auto", local_rank=2, cuda_count=2, option="train.device")
    msg = str(err.value)
    assert "LOCAL_RANK=2" in msg and "only 2 GPU(s)" in msg and "--nproc-per-node=2" in msg
    assert "\n" not in msg


def test_cuda_without_gpu_names_the_option_and_the_fix() -> None:
    with pytest.raises(InputError, match=r"train\.device=cuda but no CUDA GPU .* use train\.device=cpu"):
        resolve_device("cuda", local_rank=0, cuda_count=0, option="train.device")


def test_explicit_gpu_index() -> None:
    assert resolve_device("cuda:1", local_rank=0, cuda_count=2) == torch.device("cuda", 1)
    with pytest.raises(InputError, match=r"--device=cuda:7 but only 2 GPU"):
        resolve_device("cuda:7", local_rank=0, cuda_count=2)
    with pytest.raises(InputError, match="not a GPU"):
        resolve_device("cuda:x", local_rank=0, cuda_count=2)
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu", local_rank=0, cuda_count=2)


def test_a_dask_workers_device_is_its_own_gpu_or_its_cpu() -> None:
    """Dask workers decide with the same function, as rank 0 of their own visible GPUs."""
    assert resolve_device("auto", local_rank=0, cuda_count=0) == torch.device("cpu")
    assert resolve_device("auto", local_rank=0, cuda_count=1) == torch.device("cuda", 0)  # a GPU worker: cuda:0
    assert resolve_device("cpu", local_rank=0, cuda_count=4) == torch.device("cpu")
    with pytest.raises(InputError, match="--device=cuda but no CUDA GPU"):
        resolve_device("cuda", local_rank=0, cuda_count=0)
    with pytest.raises(InputError, match="only 1 GPU"):
        resolve_device("cuda:1", local_rank=0, cuda_count=1)


def test_only_devices_decides_a_device() -> None:
    """One decision: no other module of the package defines its own device function."""
    package = Path(__file__).resolve().parents[2] / "rs_deeplab"
    found = [
        f"{path.relative_to(package)}:{node.name}"
        for path in package.rglob("*.py")
        for node in ast.walk(parse(path))
        if isinstance(node, ast.FunctionDef) and re.fullmatch(r"(pick|resolve|worker|choose|select)_device", node.name)
    ]
    assert sorted(found) == ["runtime/devices.py:pick_device", "runtime/devices.py:resolve_device"]


def test_pick_device_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    if torch.cuda.device_count() >= 2:
        assert pick_device("auto") == torch.device("cuda", 1)
    elif torch.cuda.device_count() == 0:
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(InputError, match="--device=cuda"):
            pick_device("cuda")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("choice", "capability", "expected"),
    [
        ("auto", (9, 0), torch.bfloat16),  # Hopper
        ("auto", (8, 0), torch.bfloat16),  # Ampere
        ("auto", (7, 5), torch.float16),  # Turing: fp16 with a GradScaler
        ("auto", (6, 1), torch.float16),
        ("fp16", (9, 0), torch.float16),
        ("bf16", (8, 6), torch.bfloat16),
        ("none", (9, 0), None),
    ],
)
def test_amp_on_gpus(choice: str, capability: tuple[int, int], expected: torch.dtype | None) -> None:
    assert resolve_amp(choice, device_type="cuda", capability=capability) == expected


def test_amp_is_float32_on_cpu() -> None:
    for choice in ("auto", "bf16", "fp16", "none"):
        assert resolve_amp(choice, device_type="cpu", capability=None) is None
    assert pick_amp("auto", torch.device("cpu")) is None


def test_bf16_on_an_old_gpu_is_one_line() -> None:
    with pytest.raises(InputError) as err:
        resolve_amp("bf16", device_type="cuda", capability=(7, 0), option="train.amp")
    assert str(err.value) == (
        "train.amp=bf16 but this GPU (compute capability 7.0) has no native bf16; use train.amp=fp16 or auto"
    )
    with pytest.raises(InputError, match="unknown precision"):
        resolve_amp("fp8", device_type="cuda", capability=(9, 0))


def test_precision_names() -> None:
    assert [precision_name(d) for d in (torch.bfloat16, torch.float16, None)] == ["bf16", "fp16", "fp32"]
