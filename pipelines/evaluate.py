"""Score a checkpoint on a data split, or predicted scenes against their ground truth.

python pipelines/evaluate.py CHECKPOINT [--split val] [--out DIR]
python pipelines/evaluate.py --pred labels.tif [...] --truth label.tif [...] [--scheme potsdam] [--out DIR]

Both modes also write the page DIR.html beside the report folder DIR, to open in a browser (--no-report: none):
the per-class IoU, F1, precision and recall, mIoU and the normalised confusion matrix; in scene mode a map of where
the prediction is right and wrong, in checkpoint mode the model's details (architecture, classes, checkpoint, split,
number of images) and a grid of a few fixed crops of the split (image, truth, prediction, right / wrong). The page's
path is checked before anything is scored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rs_deeplab.cli.console import ArgumentParser, add_common_arguments, cli_entry, setup_logging
from rs_deeplab.cli.errors import InputError
from rs_deeplab.runtime.tuning import tune_process

SCENE_OPTIONS = ("pred", "truth", "scheme", "class_names", "block_size")
CHECKPOINT_OPTIONS = ("split", "device")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/evaluate.py``."""
    # imported here, inside main's error boundary: a Ctrl-C while torch/GDAL load is one line too
    from rs_deeplab.labels.classes import SCHEMES
    from rs_deeplab.remote.scenes import local_output

    parser = ArgumentParser(prog="evaluate.py", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?", help="a best.pt or last.pt written by pipelines/train.py")
    parser.add_argument("--split", default=None, help="checkpoint mode: split to score (default: val)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="checkpoint mode (auto)")
    scene = parser.add_argument_group("scene mode (whole predicted scenes against their truth)")
    scene.add_argument(
        "--pred",
        type=str,
        nargs="+",
        default=None,
        help="prediction rasters (uint8, 255 = nodata): files, URLs (https://, s3://, gs://) or GDAL paths",
    )
    scene.add_argument(
        "--truth",
        type=str,
        nargs="+",
        default=None,
        help="truth rasters, one per --pred, same order (files, URLs or GDAL paths)",
    )
    scene.add_argument("--scheme", choices=list(SCHEMES), default=None, help="dataset whose encoding the truth uses")
    scene.add_argument(
        "--class-names", type=_names, default=None, help="comma-separated class names (default: raster tag, scheme)"
    )
    scene.add_argument("--block-size", type=int, default=None, help="block edge in pixels (default 2048)")
    parser.add_argument(
        "--out",
        type=local_output,
        default=None,
        help="report folder (default: the checkpoint's folder; in scene mode beside the first "
        "prediction, for a URL the current folder)",
    )
    parser.add_argument(
        "--no-report",
        action="store_const",
        const=True,
        default=None,
        help="do not write the page DIR.html beside the report folder (scores, confusion matrix, "
        "right and wrong pixels)",
    )
    add_common_arguments(parser)
    return parser


def _check_mode(parser: ArgumentParser, args: argparse.Namespace) -> None:
    """Exactly one of CHECKPOINT or --pred/--truth, each with its own options only."""
    given = [f"--{name.replace('_', '-')}" for name in SCENE_OPTIONS if getattr(args, name) is not None]
    if args.checkpoint is not None and given:
        parser.error(f"pass either CHECKPOINT or scene options, not both (got {args.checkpoint} and {given[0]})")
    if args.checkpoint is None:
        if args.pred is None or args.truth is None:
            parser.error("pass CHECKPOINT, or --pred PRED.tif [...] with --truth TRUTH.tif [...]")
        wrong = [f"--{name}" for name in CHECKPOINT_OPTIONS if getattr(args, name) is not None]
        if wrong:
            parser.error(f"{wrong[0]} applies to CHECKPOINT mode only")


def _score_scenes(args: argparse.Namespace) -> int:
    from rs_deeplab.evaluation.scenes import DEFAULT_BLOCK_SIZE, REPORT_MD, evaluate_scenes, scene_pairs
    from rs_deeplab.labels.classes import get_scheme
    from rs_deeplab.remote.scenes import scene_source
    from rs_deeplab.report.evaluation import check_evaluation_page, write_evaluation_page

    if args.block_size is not None and args.block_size < 1:
        raise InputError(f"--block-size {args.block_size}: must be a positive whole number of pixels")
    pairs = scene_pairs([scene_source(p) for p in args.pred], [scene_source(t) for t in args.truth])
    first = pairs[0][0]
    out = args.out or (first.parent if isinstance(first, Path) else Path("."))
    page = None if args.no_report else check_evaluation_page(out)  # before anything is scored
    report = evaluate_scenes(
        pairs,
        out,
        scheme=None if args.scheme is None else get_scheme(args.scheme),
        class_names=args.class_names,
        block_size=DEFAULT_BLOCK_SIZE if args.block_size is None else args.block_size,
        quiet=args.quiet,
    )
    print((out / REPORT_MD).read_text(), end="")
    miou = report["total"]["scores"]["mIoU"]
    print(f"mIoU {'n/a' if miou is None else f'{miou:.4f}'} over {len(pairs)} scene(s); reports in {out}")
    if page is not None:
        scheme = None if args.scheme is None else get_scheme(args.scheme)
        written = write_evaluation_page(page, report, scheme=scheme, block_size=report_block(args.block_size))
        print(f"evaluation page: {written.page} ({written.size_text()}; open in a browser)")
    return 0


def report_block(block_size: int | None) -> int:
    """The block edge the page's error raster is built with (the scoring's)."""
    from rs_deeplab.evaluation.scenes import DEFAULT_BLOCK_SIZE

    return DEFAULT_BLOCK_SIZE if block_size is None else block_size


def _score_checkpoint(args: argparse.Namespace) -> int:
    from rs_deeplab.report.evaluation import check_evaluation_page
    from rs_deeplab.training.checkpoint_eval import score_checkpoint

    split = args.split or "val"
    out = args.out or args.checkpoint.parent
    page = None if args.no_report else check_evaluation_page(out)  # before anything is scored
    report, written = score_checkpoint(args.checkpoint, split, out, device=args.device or "auto", page=page)
    print((out / f"{split}_scores.md").read_text(), end="")
    print(f"mIoU {report['mIoU']:.4f}; reports in {out}")
    if written is not None:
        print(f"evaluation page: {written.page} ({written.size_text()}; open in a browser)")
    return 0


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate and print the per-class table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_mode(parser, args)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    return _score_scenes(args) if args.checkpoint is None else _score_checkpoint(args)


if __name__ == "__main__":
    tune_process()  # process-wide settings belong to the script, not to the library (rs_deeplab.runtime.tuning)
    sys.exit(main())
