"""Find DenseCRF kernels for a checkpoint by cross-validation on validation crops (DeepLab v1/v2, section 4.1).

python pipelines/crf_search.py CHECKPOINT [--split val] [--images 100] [--w1 3:6] [--sxy 30:100:10] [--srgb 3:6]
                                [--iterations 10] [--scheduler ADDRESS] [--workers N] [--out DIR]

The model's probabilities are computed once per crop and cached under --out; every appearance-kernel setting
(weight w1, spatial width σα = --sxy, colour width σβ = --srgb; the smoothness kernel stays w2 = 3, σγ = 3) is
scored by mIoU. A re-run resumes: finished settings and cached crops are not computed again. The ranked table
(with no CRF and the default kernels as reference rows) is printed and written as crf_search.md/.json; the best
setting is recorded beside the checkpoint (<stem>.crf.json), which ``infer.py --crf`` then uses.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rs_deeplab.cli.console import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.runtime.tuning import tune_process


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/crf_search.py``."""
    from rs_deeplab.remote.scenes import local_output
    from rs_deeplab.runtime.cluster import SCHEDULER_HELP

    p = ArgumentParser(prog="crf_search.py", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a best.pt or last.pt written by pipelines/train.py")
    p.add_argument("--split", default="val", help="split of the checkpoint's data searched on (val)")
    p.add_argument("--images", type=int, default=100, help="crops searched on, a seeded choice (100, as in v2)")
    p.add_argument("--w1", default="3:6", help="appearance kernel weights, A:B or A:B:STEP (3:6)")
    p.add_argument("--sxy", default="30:100:10", help="appearance kernel σα in pixels (30:100:10)")
    p.add_argument("--srgb", default="3:6", help="appearance kernel σβ in 0..255 colour units (3:6)")
    p.add_argument("--iterations", type=int, default=10, help="mean-field iterations (10)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs (auto)")
    p.add_argument("--workers", type=int, default=None, help="local Dask worker processes (one per core)")
    p.add_argument(
        "--scheduler",
        help="Dask scheduler address; its workers must see --out (a shared file system); "
        f"reached before any probability is computed ({SCHEDULER_HELP})",
    )
    p.add_argument(
        "--out",
        type=local_output,
        default=None,
        help="cache and report folder (default: <checkpoint folder>/crf_search)",
    )
    add_common_arguments(p)
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Check the grid, search, print the ranked table and where the best setting was recorded."""
    args = build_parser().parse_args(argv)
    # the library loads after the arguments parse, inside the error boundary (see cli_entry)
    from rs_deeplab.inference.crf.grid import make_grid, parse_range
    from rs_deeplab.training.checkpoint_eval import search_checkpoint_crf

    setup_logging(quiet=args.quiet, verbose=args.verbose)
    points = make_grid(
        parse_range(args.w1, "--w1"), parse_range(args.sxy, "--sxy"), parse_range(args.srgb, "--srgb"), args.iterations
    )
    out = args.out or args.checkpoint.parent / "crf_search"
    result = search_checkpoint_crf(
        args.checkpoint,
        args.split,
        out,
        points,
        images=args.images,
        device=args.device,
        workers=args.workers,
        scheduler=args.scheduler,
        quiet=args.quiet,
    )
    print(result.markdown.read_text(), end="")
    best = result.best
    print(
        f"best ({best['setting']}): w1 {best['crf']['bilateral_compat']:g}, σα {best['crf']['bilateral_sxy']:g}, "
        f"σβ {best['crf']['bilateral_srgb']:g} (mIoU {best['mIoU']:.4f}); computed now: "
        f"{result.computed_probabilities} crop(s), {result.computed_settings} setting(s)"
    )
    print(describe_outputs({"table": result.markdown, "json": result.json, "record": result.record}))
    return 0


if __name__ == "__main__":
    tune_process()  # process-wide settings belong to the script, not to the library (rs_deeplab.runtime.tuning)
    sys.exit(main())
