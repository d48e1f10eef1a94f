from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from rs_deeplab.training.distributed import CPUSyncBatchNorm, convert_sync_batchnorm, env_from_torchrun
from tests.trainkit import torchrun

REPO = Path(__file__).resolve().parents[2]


def test_env_defaults_to_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    env = env_from_torchrun()
    assert (env.rank, env.world_size, env.distributed, env.is_main) == (0, 1, False, True)


def test_conversion_keeps_parameters_and_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    model[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], CPUSyncBatchNorm)
    assert converted.state_dict().keys() == before.keys()
    for key, value in converted.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_without_process_group_it_is_plain_batchnorm() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 4)
    ref, sync = torch.nn.BatchNorm2d(2), CPUSyncBatchNorm(2)
    assert torch.allclose(ref(x), sync(x))
    assert torch.allclose(ref.running_var, sync.running_var)


@pytest.mark.slow
def test_two_rank_sync_bn_matches_full_batch_bn(tmp_path: Path) -> None:
    out = tmp_path / "result.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = torchrun(str(REPO / "tests" / "workers" / "syncbn_worker.py"), str(out))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out)

    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 7) * 0.2 + 30).requires_grad_(True)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    y = bn(x)
    half_weights = torch.arange(y.numel() // 2).float().sin().view(2, 3, 5, 7)  # as each rank weights its half
    (y * torch.cat([half_weights, half_weights])).sum().backward()
    torch.testing.assert_close(got["y"], y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["running_mean"], bn.running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["running_var"], bn.running_var, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["wgrad"], bn.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["xgrad"], x.grad, atol=1e-4, rtol=1e-4)


def test_sync_bn_graph_holds_no_process_group(tmp_path: Path) -> None:
    """A live autograd graph must not keep the gloo group (and its threads) alive past destroy_process_group.

    torch's ``distributed.nn`` all-reduce stored the group on its autograd node; a torchrun worker that still held
    an output then aborted at interpreter exit about one run in three.
    """
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        bn = CPUSyncBatchNorm(3)
        y = bn(torch.randn(2, 3, 4, 4, requires_grad=True))
        seen, stack, nodes = set(), [y.grad_fn], 0
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            nodes += 1
            for value in getattr(node, "__dict__", {}).values():
                assert not isinstance(value, dist.ProcessGroup), f"{type(node).__name__} keeps the process group"
            stack.extend(next_fn for next_fn, _ in node.next_functions)
        assert nodes > 5  # the walk reached the statistics' all-reduce
        y.sum().backward()
    finally:
        dist.destroy_process_group()


def test_one_process_torchrun_still_joins_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torchrun --nproc-per-node=1`` exercises the collectives (NCCL on a GPU) as a multi-GPU job does."""
    for var, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(var, value)
    env = env_from_torchrun()
    assert env.launched and not env.distributed and env.is_main
    monkeypatch.delenv("MASTER_ADDR")
    assert not env_from_torchrun().launched
