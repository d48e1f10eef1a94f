"""torchrun environment, rank-aware helpers, all-reduce utilities and a synchronised BatchNorm for CPU/gloo."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Process placement as torchrun describes it (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False
    """Started by torchrun (which sets ``MASTER_ADDR``): the process group is joined even for one process, so a
    one-process ``torchrun`` exercises NCCL and the collectives exactly as a multi-GPU job does."""

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and plots."""
        return self.rank == 0


def env_from_torchrun() -> DistEnv:
    """Read the torchrun variables; a plain ``python`` run is rank 0 of 1."""
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        launched="MASTER_ADDR" in os.environ and "WORLD_SIZE" in os.environ,
    )


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); no-op for a single process.

    A CUDA rank binds its GPU (``device``, from :func:`rs_deeplab.runtime.devices.pick_device`: ``cuda:LOCAL_RANK``)
    before it joins, so NCCL's communicator and every later allocation land on that GPU, not on GPU 0.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if (env.distributed or env.launched) and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (a picklable object; returned as is without a process group).

    Used for decisions that must be the same everywhere although each rank could compute its own, e.g. whether
    to resume and from which checkpoint state: ranks whose ``work_dir`` is not shared would otherwise start at
    different iterations and wait on each other forever.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def shutdown_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (no-op without a process group) and return it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class _SumOverRanks(torch.autograd.Function):
    """Sum a tensor over the default process group; the gradient is the summed gradient of every rank's loss.

    Unlike ``torch.distributed.nn.functional.all_reduce`` (deprecated in torch 2.15), the autograd node keeps no
    reference to the process group. A graph still alive when ``destroy_process_group`` runs would otherwise keep
    the gloo group and its worker threads alive into interpreter shutdown, where a finishing work item that needs
    the GIL aborts the process ("terminate called without an active exception").
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor.clone(memory_format=torch.contiguous_format))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(grad.clone(memory_format=torch.contiguous_format))


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are summed over all processes, for CPU/gloo process groups.

    ``torch.nn.SyncBatchNorm`` only runs on CUDA. This module computes per-channel sums, sums of squares and
    counts locally, all-reduces them with an autograd-aware sum (so gradients flow back through the global
    statistics), and normalises with one shared set of gamma/beta. Without a process group it is an ordinary
    BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with statistics of the global batch in training, running statistics in eval."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        channels = x.shape[1]
        n = x.numel() / channels
        # local mean and centred sum of squares (two-pass, accurate), combined across ranks in float64 so that
        # sum(n m^2) - N mean^2 does not cancel catastrophically when activations have a large mean
        local_mean = x.mean(dims)
        local_m2 = ((x - local_mean.view(1, channels, *[1] * (x.dim() - 2))) ** 2).sum(dims)
        m64 = local_mean.double()
        count = torch.full((1,), n, dtype=torch.float64, device=x.device)
        stats = torch.cat([m64 * n, m64 * m64 * n, local_m2.double(), count])
        stats = _SumOverRanks.apply(stats)
        total = stats[-1]
        mean64 = stats[:channels] / total
        m2 = stats[2 * channels : 3 * channels] + stats[channels : 2 * channels] - total * mean64 * mean64
        mean, var = mean64.to(x.dtype), (m2 / total).clamp_min(0).to(x.dtype)
        self._update_running_stats(mean.detach(), var.detach(), float(total.detach()))
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, total: float) -> None:
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * total / max(total - 1.0, 1.0)
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm by a synchronised one: torch's SyncBatchNorm on CUDA, :class:`CPUSyncBatchNorm` else."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        new = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module


def parameter_fingerprint(model: nn.Module) -> torch.Tensor:
    """Two float64 numbers summarising a model's parameters: their sum and their sum of squares.

    Each parameter's two sums are taken on its own device (float64) and the ``(parameters, 2)`` table reaches the
    host in one copy; the rows are added there in parameter order, as one host copy per parameter added them.
    """
    sums = [torch.stack([d.sum(), (d * d).sum()]) for d in (p.detach().double() for p in model.parameters())]
    total = torch.zeros(2, dtype=torch.float64)
    if not sums:
        return total
    for row in torch.stack(sums).cpu():  # the one host copy
        total += row
    return total


def rank_fingerprints(model: nn.Module, device: torch.device) -> list[list[float]]:
    """Every rank's :func:`parameter_fingerprint` (a single entry without a process group)."""
    mine = parameter_fingerprint(model)
    if not (dist.is_available() and dist.is_initialized()):
        return [mine.tolist()]
    local = mine.to(device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [g.cpu().tolist() for g in gathered]


def check_in_sync(fingerprints: list[list[float]], rtol: float = 1e-6) -> None:
    """Raise if the ranks' parameters have drifted apart (DDP should keep them identical)."""
    ref = torch.tensor(fingerprints[0])
    for rank, fp in enumerate(fingerprints[1:], start=1):
        if not torch.allclose(torch.tensor(fp), ref, rtol=rtol, atol=1e-8):
            raise RuntimeError(f"rank {rank} parameters differ from rank 0 ({fp} vs {ref.tolist()})")
