"""torchrun worker: each rank normalises its half of a fixed batch with CPUSyncBatchNorm and saves the results."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from rs_deeplab.training.distributed import convert_sync_batchnorm, env_from_torchrun, init_distributed


def main(out: str) -> None:
    env = env_from_torchrun()
    init_distributed(env, torch.device("cpu"))  # CUDA's BN kernels are not bit-exact: this test pins the CPU
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 7) * 0.2 + 30  # large mean: stresses the variance computation
    bn = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))
    with torch.no_grad():
        bn[0].weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn[0].bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    part = x[env.rank * 2 : env.rank * 2 + 2].clone().requires_grad_(True)
    y = bn(part)
    (y * torch.arange(y.numel()).view_as(y).float().sin()).sum().backward()
    parts = [torch.zeros_like(part) for _ in range(env.world_size)]
    grads = [torch.zeros_like(part) for _ in range(env.world_size)]
    dist.all_gather(parts, y.detach())
    dist.all_gather(grads, part.grad)
    wgrad = bn[0].weight.grad.clone()
    dist.all_reduce(wgrad)
    if env.rank == 0:
        torch.save(
            {
                "y": torch.cat(parts),
                "xgrad": torch.cat(grads),
                "wgrad": wgrad,
                "running_mean": bn[0].running_mean,
                "running_var": bn[0].running_var,
            },
            out,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
