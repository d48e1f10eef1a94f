"""Score a trained checkpoint on a split of its data: ``python pipelines/evaluate.py CHECKPOINT [--split val]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rs_deeplab.cli import ArgumentParser, add_common_arguments, cli_entry, setup_logging


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/evaluate.py``."""
    parser = ArgumentParser(prog="evaluate.py", description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a best.pt or last.pt written by pipelines/train.py")
    parser.add_argument("--split", default="val", help="split to score (default: val)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and Markdown reports")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add_common_arguments(parser)
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate and print the per-class table."""
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    from rs_deeplab.experiment import evaluate_checkpoint

    out = args.out or args.checkpoint.parent
    report = evaluate_checkpoint(args.checkpoint, args.split, out, device=args.device)
    print((out / f"{args.split}_scores.md").read_text(), end="")
    print(f"mIoU {report['mIoU']:.4f}; reports in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
