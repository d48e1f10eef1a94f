"""Where a process computes and in which precision: one pure decision each, and thin wrappers that ask torch.

The pure functions take everything they decide on as arguments (the choice, the torchrun local rank, the visible
GPU count, the GPU's compute capability), so every case is unit-tested on a machine without a GPU. Training,
evaluation, inference and Dask workers all call :func:`pick_device` and :func:`pick_amp`.
"""

from __future__ import annotations

import logging
import os

import torch

from rs_deeplab.cli.errors import InputError

log = logging.getLogger("rs_deeplab.runtime.devices")

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CAPABILITY = (8, 0)
"""Ampere and newer run bf16 natively; older GPUs emulate it slowly (or not at all)."""


def resolve_device(choice: str, *, local_rank: int, cuda_count: int, option: str = "--device") -> torch.device:
    """The device of this process from (choice, torchrun ``LOCAL_RANK``, visible GPU count); touches no GPU.

    Args:
        choice: ``auto`` (this rank's GPU when any is visible, else the CPU), ``cpu``, ``cuda`` (this rank's GPU)
            or ``cuda:N`` (that GPU; only for a single process).
        local_rank: The process's rank on its node (0 without torchrun).
        cuda_count: GPUs visible to this process (``torch.cuda.device_count()``).
        option: The option's name, for the messages (``train.device``, ``--device``).

    Raises:
        InputError: CUDA asked for where none is visible, a GPU index beyond the visible ones, or more ranks on
            this node than visible GPUs.
    """
    text = str(choice).strip().lower()
    if text == "cpu" or (text == "auto" and cuda_count == 0):
        return torch.device("cpu")
    if text not in ("auto", "cuda") and not text.startswith("cuda:"):
        raise InputError(f"{option}={choice}: unknown device; use auto, cpu, cuda or cuda:N")
    if cuda_count == 0:
        raise InputError(f"{option}={choice} but no CUDA GPU is visible to torch here; use {option}=cpu")
    if text.startswith("cuda:"):
        index = _gpu_index(text, option)
        if index >= cuda_count:
            raise InputError(
                f"{option}={choice} but only {cuda_count} GPU(s) are visible (cuda:0..cuda:{cuda_count - 1}); "
                "pick one of those or check CUDA_VISIBLE_DEVICES"
            )
        return torch.device("cuda", index)
    if local_rank >= cuda_count:
        raise InputError(
            f"LOCAL_RANK={local_rank} but only {cuda_count} GPU(s) are visible; start torchrun with "
            f"--nproc-per-node={cuda_count} or fewer, or check CUDA_VISIBLE_DEVICES"
        )
    return torch.device("cuda", local_rank)


def _gpu_index(text: str, option: str) -> int:
    try:
        index = int(text.split(":", 1)[1])
    except ValueError:
        index = -1
    if index < 0:
        raise InputError(f"{option}={text}: not a GPU; use cuda:N with N a visible GPU's index")
    return index


def local_rank() -> int:
    """The torchrun ``LOCAL_RANK`` of this process (0 for a plain ``python`` run)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def pick_device(choice: str | torch.device | None = "auto", *, option: str = "--device") -> torch.device:
    """:func:`resolve_device` for this process: its ``LOCAL_RANK`` and the GPUs torch sees."""
    if isinstance(choice, torch.device):
        choice = str(choice)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return resolve_device(choice or "auto", local_rank=local_rank(), cuda_count=count, option=option)


def resolve_amp(
    choice: str, *, device_type: str, capability: tuple[int, int] | None, option: str = "--amp"
) -> torch.dtype | None:
    """The autocast dtype from (choice, device type, GPU compute capability); None means float32.

    ``auto``: bf16 on GPUs with native bf16 (compute capability >= 8.0), fp16 below (with a GradScaler when
    training), nothing on CPU. ``bf16``/``fp16`` are honoured on GPUs only; the CPU always runs float32.

    Raises:
        InputError: An unknown choice, or ``bf16`` on a GPU without native bf16.
    """
    if choice not in AMP_CHOICES:
        raise InputError(f"{option}={choice}: unknown precision; use one of {', '.join(AMP_CHOICES)}")
    if device_type != "cuda" or choice == "none":
        return None
    native_bf16 = capability is not None and tuple(capability) >= BF16_CAPABILITY
    if choice == "auto":
        return torch.bfloat16 if native_bf16 else torch.float16
    if choice == "bf16" and not native_bf16:
        cc = "unknown" if capability is None else f"{capability[0]}.{capability[1]}"
        raise InputError(
            f"{option}=bf16 but this GPU (compute capability {cc}) has no native bf16; use {option}=fp16 or auto"
        )
    return AMP_DTYPES[choice]


def pick_amp(choice: str, device: torch.device, *, option: str = "--amp") -> torch.dtype | None:
    """:func:`resolve_amp` for ``device`` (asks torch for the GPU's compute capability)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return resolve_amp(choice, device_type=device.type, capability=capability, option=option)


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16``, ``fp16`` or ``fp32`` (for logs and the run folder)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype is not None else "fp32"


def describe(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H200)`` for logs."""
    if device.type != "cuda":
        return device.type
    return f"{device} ({torch.cuda.get_device_name(device)})"


def intra_op_threads(cores: int, tasks: int = 1) -> int:
    """Threads one model call may use when ``tasks`` calls run at once on ``cores``: ``tasks × threads <= cores``."""
    return max(1, cores // max(1, tasks))
