"""Cut scenes into georeferenced training crops with an index: ``python pipelines/tile.py scene.tif``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rs_deeplab.cli import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.errors import InputError
from rs_deeplab.presets import PRESETS, tile_preset
from rs_deeplab.tiling import COMPRESS_CHOICES, SceneSpec, TileSummary, tile_scenes

log = logging.getLogger("rs_deeplab.tile")


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/tile.py``."""
    parser = ArgumentParser(prog="tile.py", description=__doc__)
    parser.add_argument("scenes", nargs="+", type=Path, metavar="SCENE",
                        help="rasters to cut; with --preset, the dataset's root folder")  # fmt: skip
    parser.add_argument("--labels", nargs="+", type=Path, metavar="PATH",
                        help="one label file per scene: colour or class-index raster, or vector polygons")  # fmt: skip
    parser.add_argument("--preset", choices=sorted(PRESETS), help="find scenes, labels and splits in a dataset folder")
    parser.add_argument("--bands", default="rgbir", help="potsdam preset: rgbir (default), rgb or irrg images")
    parser.add_argument("--eroded", action="store_true", help="ISPRS presets: eroded noBoundary labels")
    parser.add_argument("--size", type=int, help="crop side in pixels (512; iSAID preset 896)")
    parser.add_argument("--stride", type=int, help="step between crops (size/2; iSAID preset 512)")
    parser.add_argument("--out", type=Path, default=Path("tiles"), help="output folder (tiles/)")
    parser.add_argument("--min-valid", type=float, default=0.0, help="skip crops with less valid pixels (0..1)")
    parser.add_argument("--scheme", help="class scheme decoding colour labels and naming classes (potsdam, ...)")
    parser.add_argument("--label-field", help="vector labels: attribute holding the class")
    parser.add_argument("--label-map", metavar="VALUE=ID[,...]", help="vector labels: attribute value to class id")
    parser.add_argument("--label-fill", type=int, default=255, help="vector labels: class of uncovered pixels (255)")
    parser.add_argument("--split", default="train", help="split name written to the index (train)")
    parser.add_argument("--compress", choices=COMPRESS_CHOICES, default="none", help="crop codec (none: fastest)")
    parser.add_argument("--workers", type=int, help="local workers (one per core; 1 = this process only)")
    parser.add_argument("--threads", action="store_true", help="local workers as threads of one process")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask scheduler, tcp://host:8786")
    add_common_arguments(parser)
    return parser


def parse_label_map(text: str | None) -> dict[str, int] | None:
    """``"building=1,road=2"`` → ``{"building": 1, "road": 2}``.

    Raises:
        InputError: An entry is not ``VALUE=ID`` with a whole-number id.
    """
    if not text:
        return None
    mapping: dict[str, int] = {}
    for item in text.split(","):
        value, sep, cid = item.rpartition("=")
        if not sep or not value or not cid.strip().isdigit():
            raise InputError(f"--label-map entry {item!r} is not VALUE=ID (e.g. --label-map building=1,road=2)")
        mapping[value.strip()] = int(cid)
    return mapping


def run(argv: Sequence[str] | None) -> TileSummary:
    """Parse ``argv`` and make the one library call it asks for."""
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    options = {
        "out": args.out, "min_valid": args.min_valid, "compress": args.compress, "workers": args.workers,
        "scheduler": args.scheduler, "quiet": args.quiet, "stride": args.stride, "processes": not args.threads,
    }  # fmt: skip
    if args.preset:
        if len(args.scenes) != 1 or args.labels:
            raise InputError("--preset takes exactly one dataset folder and no --labels")
        return tile_preset(args.preset, args.scenes[0], bands=args.bands, eroded=args.eroded, size=args.size, **options)
    if args.labels and len(args.labels) != len(args.scenes):
        raise InputError(f"got {len(args.scenes)} scenes but {len(args.labels)} --labels; give one label per scene")
    if args.bands != "rgbir" or args.eroded:
        raise InputError("--bands and --eroded apply with --preset only")
    labels = args.labels or [None] * len(args.scenes)
    scenes = [SceneSpec(s, lab, args.split) for s, lab in zip(args.scenes, labels, strict=True)]
    return tile_scenes(
        scenes, size=512 if args.size is None else args.size, scheme=args.scheme, label_field=args.label_field,
        label_map=parse_label_map(args.label_map), label_fill=args.label_fill, **options,
    )  # fmt: skip


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Tile the scenes and print where the crops and the index went."""
    summary = run(argv)
    log.info(
        "%d crops from %d scenes (%d windows, %d below --min-valid, %d already done) in %.1f s on %s",
        summary.crops, summary.scenes, summary.windows, summary.skipped, summary.resumed, summary.seconds,
        summary.cluster,
    )  # fmt: skip
    outputs = {"images": summary.images, "labels": summary.labels, "index": summary.index}
    print(describe_outputs({k: v for k, v in outputs.items() if v is not None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
