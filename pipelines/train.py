"""Train a DeepLab model from a YAML config: ``python pipelines/train.py CONFIG [key=value ...]``.

Runs on one device as is, and on several under ``torchrun --nproc_per_node=N pipelines/train.py CONFIG``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rs_deeplab.cli.console import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.runtime.tuning import tune_process

if TYPE_CHECKING:
    from rs_deeplab.config.schema import ExperimentConfig


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/train.py``."""
    parser = ArgumentParser(prog="train.py", description=__doc__)
    parser.add_argument("config", help="experiment YAML, e.g. configs/potsdam_r50.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optimizer.lr=0.02 resume=false")
    parser.add_argument(
        "--budget",
        metavar="DURATION",
        help="train for this long instead of schedule.iterations, e.g. 15m or 1h30m: the run measures "
        "its speed and plans iterations, learning-rate decay and evaluations to end in time "
        "(schedule.budget; plan.json in the run folder says what it chose and why)",
    )
    add_common_arguments(parser)
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Load and validate the config (before any work), then train and print where the outputs went."""
    args = build_parser().parse_intermixed_args(argv)
    # the library loads after the arguments parse, inside the error boundary (see cli_entry)
    from rs_deeplab.config.schema import load_config
    from rs_deeplab.training.distributed import env_from_torchrun

    budget = [] if args.budget is None else [f"schedule.budget={args.budget}"]
    cfg: ExperimentConfig = load_config(args.config, [*args.overrides, *budget])
    env = env_from_torchrun()
    setup_logging(quiet=args.quiet, verbose=args.verbose, rank=env.rank)
    from rs_deeplab.training.experiment import train_experiment

    result = train_experiment(cfg)
    if env.is_main:
        print(f"trained {cfg.name} for {result.iterations} iterations; best val mIoU {result.best_miou:.4f}")
        outputs = {"run folder": result.run_dir, "last checkpoint": result.last, "best checkpoint": result.best}
        page = result.run_dir / "report.html"
        outputs["training page (open in a browser)"] = page if page.exists() else None
        print(describe_outputs({k: str(v) for k, v in outputs.items() if v is not None}))
    return 0


if __name__ == "__main__":
    tune_process()  # process-wide settings belong to the script, not to the library (rs_deeplab.runtime.tuning)
    sys.exit(main())
