"""torchrun worker: rank 0 sees a checkpoint, the others do not (no shared work_dir); all must resume alike."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rs_deeplab.training.distributed import env_from_torchrun, init_distributed, shutdown_distributed
from rs_deeplab.training.experiment import resume_state


def main(folder: str) -> None:
    env = env_from_torchrun()
    init_distributed(env, torch.device("cpu"))
    try:
        # each rank has its own work_dir; only rank 0's holds last.pt
        last = Path(folder) / f"rank{env.rank}" / "last.pt"
        state = resume_state(last, True, env)
        got = {
            "iteration": None if state is None else state["iteration"],
            "weight": None if state is None else state["model"]["w"].tolist(),
        }
        (Path(folder) / f"got{env.rank}.json").write_text(json.dumps(got))
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
