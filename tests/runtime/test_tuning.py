"""glibc malloc tuning: large CPU buffers are reused from the heap instead of being mapped anew each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rs_deeplab.runtime.tuning import ENV_SWITCH

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, resource, torch
from rs_deeplab.runtime.tuning import tune_malloc
applied = tune_malloc()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 6, 1)).eval()
x = torch.randn(2, 4, 512, 512)  # 32 MiB activations: above glibc's largest automatic mmap threshold
with torch.inference_mode():
    for _ in range(2):  # warm-up
        net(x).softmax(1)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(10):
        net(x).softmax(1)
    after = resource.getrusage(resource.RUSAGE_SELF)
faults = after.ru_minflt - before.ru_minflt
print(json.dumps({"applied": applied, "faults": faults, "peak_mib": after.ru_maxrss / 1024}))
"""


def probe(switch: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_SWITCH: switch}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def huge_page_factor() -> int:
    """512 where transparent huge pages are always on (a fault then maps 2 MiB, not 4 KiB), else 1."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return 1
    return 512 if "[always]" in mode else 1


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuned_malloc_reuses_large_buffers_and_can_be_switched_off() -> None:
    tuned, default = probe("1"), probe("0")
    assert tuned["applied"] is True and default["applied"] is False
    # default glibc maps every activation anew and faults it in page by page (32 MiB = 8192 pages, 10 passes);
    # tuned, later passes reuse the first ones' heap memory (the heap may still grow once, by tens of MiB)
    assert isinstance(default["faults"], int) and default["faults"] > 10 * 8192 // huge_page_factor()
    assert isinstance(tuned["faults"], int) and tuned["faults"] * 10 < default["faults"]
    assert isinstance(tuned["peak_mib"], float) and isinstance(default["peak_mib"], float)
    assert tuned["peak_mib"] < default["peak_mib"] + 128  # little more memory for it


def test_tune_process_sets_torch_threads_and_refuses_none() -> None:
    code = (
        "import torch\n"
        "from rs_deeplab.runtime.tuning import tune_process\n"
        "torch.set_num_threads(1)\n"
        "applied = tune_process(malloc=False, threads=3)\n"
        "print(applied, torch.get_num_threads())\n"
        "try:\n    tune_process(malloc=False, threads=0)\nexcept ValueError as exc:\n    print('refused', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "False 3"  # malloc left alone when not asked for
    assert lines[1].startswith("refused threads must be at least 1")
