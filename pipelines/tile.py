"""Cut scenes into georeferenced training crops with an index: ``python pipelines/tile.py scene.tif``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rs_deeplab.cli.console import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.cli.errors import InputError
from rs_deeplab.runtime.tuning import tune_process

if TYPE_CHECKING:
    from rs_deeplab.tiling.tiler import TileSummary

log = logging.getLogger("rs_deeplab.tile")


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/tile.py``."""
    # imported here, inside main's error boundary: a Ctrl-C while GDAL, pandas and Dask load is one line too
    from rs_deeplab.remote.scenes import local_output
    from rs_deeplab.runtime.cluster import SCHEDULER_HELP
    from rs_deeplab.tiling.presets import PRESETS
    from rs_deeplab.tiling.tiler import COMPRESS_CHOICES

    parser = ArgumentParser(prog="tile.py", description=__doc__)
    parser.add_argument(
        "scenes",
        nargs="+",
        type=str,
        metavar="SCENE",
        help="rasters to cut: files, URLs (https://, s3://, gs://; read window by window), GDAL "
        "paths, STAC Items (.json, with --assets), quoted glob patterns ('ortho/**/*.tif', "
        "sorted) or text files listing scenes one per line (@list, or a .txt/.lst file); "
        "with --preset, the dataset's root folder",
    )
    parser.add_argument(
        "--assets",
        metavar="NAME,...",
        help="STAC Items: the assets stacked as bands, in order (e.g. red,green,blue,nir)",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        type=str,
        metavar="PATH",
        help="one label file per scene, or one for all: colour or class-index raster, or "
        "vector polygons (a shared class raster on another grid is warped, nearest)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="find scenes, labels and splits in a dataset folder")
    parser.add_argument("--bands", default="rgbir", help="potsdam preset: rgbir (default), rgb or irrg images")
    parser.add_argument("--eroded", action="store_true", help="ISPRS presets: eroded noBoundary labels")
    parser.add_argument("--size", type=int, help="crop side in pixels (512; iSAID preset 896)")
    parser.add_argument("--stride", type=int, help="step between crops (size/2; iSAID preset 512)")
    parser.add_argument("--out", type=local_output, default=Path("tiles"), help="output folder (tiles/)")
    parser.add_argument("--min-valid", type=float, default=0.0, help="skip crops with less valid pixels (0..1)")
    parser.add_argument("--scheme", help="class scheme decoding colour labels and naming classes (potsdam, ...)")
    parser.add_argument("--label-field", help="vector labels: attribute holding the class")
    parser.add_argument("--label-map", metavar="VALUE=ID[,...]", help="vector labels: attribute value to class id")
    parser.add_argument("--label-fill", type=int, default=255, help="vector labels: class of uncovered pixels (255)")
    parser.add_argument("--classes", metavar="NAME,...", help="names of class ids 0,1,...; vector values may be names")
    parser.add_argument(
        "--split",
        nargs="+",
        metavar="NAME",
        help="split written to the index, one for all scenes or one per scene (train)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="hold out about F of the area as split val, in whole square blocks (rest train); "
        "crops on a train/val border are dropped so no pixel is in both",
    )
    parser.add_argument(
        "--block",
        type=int,
        metavar="N",
        help="side of the held-out blocks in pixels (4 x --size, so most crops stay whole; smaller "
        "for scenes too small for two such blocks)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed choosing the validation blocks (0)")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add these scenes to the crops and index in --out (same settings, classes)",
    )
    parser.add_argument("--compress", choices=COMPRESS_CHOICES, default="none", help="crop codec (none: fastest)")
    parser.add_argument("--workers", type=int, help="local workers (one per core; 1 = this process only)")
    parser.add_argument("--threads", action="store_true", help="local workers as threads of one process")
    parser.add_argument(
        "--scheduler", metavar="ADDRESS", help=f"run on an existing Dask scheduler, tcp://host:8786 ({SCHEDULER_HELP})"
    )
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
    from rs_deeplab.geo.raster import source_path
    from rs_deeplab.geo.scene_lists import expand_scenes
    from rs_deeplab.remote.scenes import scene_source
    from rs_deeplab.tiling.presets import tile_preset
    from rs_deeplab.tiling.tiler import SceneSpec, tile_scenes

    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    options = {
        "out": args.out,
        "min_valid": args.min_valid,
        "compress": args.compress,
        "workers": args.workers,
        "scheduler": args.scheduler,
        "quiet": args.quiet,
        "stride": args.stride,
        "processes": not args.threads,
    }
    if args.preset:
        if len(args.scenes) != 1 or args.labels:
            raise InputError("--preset takes exactly one dataset folder and no --labels")
        if args.split or args.val_fraction is not None or args.classes or args.append:
            raise InputError(
                "--preset uses the dataset's own splits and classes; drop --split, --val-fraction, "
                "--classes and --append"
            )
        return tile_preset(
            args.preset, Path(args.scenes[0]), bands=args.bands, eroded=args.eroded, size=args.size, **options
        )
    if args.bands != "rgbir" or args.eroded:
        raise InputError("--bands and --eroded apply with --preset only")
    assets = None if args.assets is None else [a.strip() for a in args.assets.split(",") if a.strip()]
    args.scenes = expand_scenes(args.scenes)  # globs and lists of scenes; --labels/--split count these
    labels, splits = per_scene(args)
    scenes = [
        SceneSpec(source_path(scene_source(s, assets)), None if lab is None else source_path(scene_source(lab)), split)
        for s, lab, split in zip(args.scenes, labels, splits, strict=True)
    ]
    return tile_scenes(
        scenes,
        size=512 if args.size is None else args.size,
        scheme=args.scheme,
        label_field=args.label_field,
        label_map=parse_label_map(args.label_map),
        label_fill=args.label_fill,
        classes=parse_classes(args.classes),
        val_fraction=args.val_fraction,
        block=args.block,
        seed=args.seed,
        append=args.append,
        **options,
    )


def per_scene(args: Any) -> tuple[list[str | None], list[str]]:
    """The label file and split of each scene from ``--labels`` and ``--split`` (one for all, or one each).

    Raises:
        InputError: A count that is neither 1 nor the number of scenes, or ``--split`` with ``--val-fraction``.
    """
    n = len(args.scenes)
    labels: list[str | None] = list(args.labels or [None])
    if len(labels) not in (1, n):
        raise InputError(f"got {n} scenes but {len(labels)} --labels; give one label file per scene or one for all")
    splits: list[str] = list(args.split or ["train"])
    if len(splits) not in (1, n):
        raise InputError(f"got {n} scenes but {len(splits)} --split values; give one per scene or one for all")
    if args.split and args.val_fraction is not None:
        raise InputError("--split and --val-fraction both set the split; give one of them")
    if (args.block is not None or args.seed) and args.val_fraction is None:
        raise InputError("--block and --seed apply with --val-fraction only")
    return labels * (n // len(labels)), splits * (n // len(splits))


def parse_classes(text: str | None) -> list[str] | None:
    """``"background,building"`` → ``["background", "building"]``.

    Raises:
        InputError: An empty or repeated name.
    """
    if not text:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise InputError(f"--classes {text!r} needs distinct, non-empty names separated by commas")
    return names


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Tile the scenes and print where the crops and the index went."""
    summary = run(argv)
    log.info(
        "%d crops from %d scenes (%d windows, %d below --min-valid, %d on a train/val border, %d already done) "
        "in %.1f s on %s",
        summary.crops,
        summary.scenes,
        summary.windows,
        summary.skipped,
        summary.dropped,
        summary.resumed,
        summary.seconds,
        summary.cluster,
    )
    outputs = {"images": summary.images, "labels": summary.labels, "index": summary.index}
    print(describe_outputs({k: v for k, v in outputs.items() if v is not None}))
    return 0


if __name__ == "__main__":
    tune_process()  # process-wide settings belong to the script, not to the library (rs_deeplab.runtime.tuning)
    sys.exit(main())
