"""Vectorize a class-label raster into one polygon per connected region (GeoPackage, GeoJSON or GeoParquet).

python pipelines/vectorize.py labels.tif --out labels.gpkg [--min-area 2.0] [--simplify 1.0]
    [--fill-holes 1.0] [--classes building,tree] [--exclude clutter] [--to-crs EPSG:4326] [--block-size 2048]
    [--workers N]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from rs_deeplab.cli.console import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.cli.errors import InputError
from rs_deeplab.runtime.tuning import tune_process


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> ArgumentParser:
    """The command-line interface."""
    # imported here, inside main's error boundary: a Ctrl-C while torch/GDAL load is one line too
    from rs_deeplab.remote.scenes import local_output
    from rs_deeplab.vectorize import FORMATS

    parser = ArgumentParser(prog="vectorize.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "raster",
        type=str,
        help="single-band integer label raster (255 = nodata): a file, URL (https://, s3://, gs://) or GDAL path",
    )
    parser.add_argument("--out", type=local_output, required=True, help=f"output file: {', '.join(FORMATS)}")
    parser.add_argument("--min-area", type=float, default=0.0, help="drop polygons below this area (m²)")
    parser.add_argument("--simplify", type=float, default=0.0, help="shared-edge simplification tolerance (pixels)")
    parser.add_argument("--fill-holes", type=float, default=0.0, help="fill holes below this area (m²)")
    parser.add_argument("--classes", type=_names, default=None, help="comma-separated class names (or ids) to keep")
    parser.add_argument("--exclude", type=_names, default=None, help="comma-separated class names (or ids) to drop")
    parser.add_argument(
        "--class-names", type=_names, default=None, help="class names in index order (default: raster tag)"
    )
    parser.add_argument("--to-crs", default=None, help="reproject the output, e.g. EPSG:4326")
    parser.add_argument("--block-size", type=int, default=2048, help="block edge in pixels (memory bound)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes polygonizing blocks (default: the usable cores, 1 for rasters under ~8 Mpx; "
        "1 = this process only); the polygons are the same for any number",
    )
    parser.add_argument("--layer", default="labels", help="output layer name")
    parser.add_argument("--append", action="store_true", help="append to the layer of an existing GeoPackage")
    parser.add_argument("--scene", default=None, help="add a 'scene' column with this value to every polygon")
    add_common_arguments(parser)
    return parser


def _check_numbers(args: argparse.Namespace) -> None:
    """Sizes and areas in the options' own names (0 and negative block sizes, negative areas are mistakes)."""
    for name, value in (
        ("--min-area", args.min_area),
        ("--simplify", args.simplify),
        ("--fill-holes", args.fill_holes),
    ):
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{name} {value:g}: must be a number >= 0")
    if args.block_size < 1:
        raise InputError(f"--block-size {args.block_size}: must be a positive whole number of pixels")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be a whole number of at least 1 (1 = this process only)")


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run :func:`rs_deeplab.vectorize.vectorize`."""
    args = build_parser().parse_args(argv)
    # the library loads after the arguments parse, inside the error boundary (see cli_entry)
    from rs_deeplab.geo.raster import source_path
    from rs_deeplab.remote.scenes import scene_source
    from rs_deeplab.vectorize import vectorize

    setup_logging(quiet=args.quiet, verbose=args.verbose)
    _check_numbers(args)
    summary = vectorize(
        source_path(scene_source(args.raster)),
        args.out,
        class_names=args.class_names,
        min_area=args.min_area,
        simplify=args.simplify,
        fill_holes=args.fill_holes,
        classes=args.classes,
        exclude=args.exclude,
        to_crs=args.to_crs,
        block_size=args.block_size,
        layer=args.layer,
        extra_columns=None if args.scene is None else {"scene": args.scene},
        mode="a" if args.append else "w",
        quiet=args.quiet,
        workers=args.workers,
    )
    if not args.quiet:
        counts = ", ".join(f"{name} {n}" for name, n in summary.counts.items()) or "none"
        workers = f", {summary.workers} worker processes" if summary.workers > 1 else ""
        print(f"{summary.polygons} polygons ({counts}) in {summary.seconds:.1f} s{workers}")
        print(describe_outputs({f"layer {summary.layer!r}": summary.path}))
    return 0


if __name__ == "__main__":
    tune_process()  # process-wide settings belong to the script, not to the library (rs_deeplab.runtime.tuning)
    sys.exit(main())
