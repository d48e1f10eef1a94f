"""Command line: ``python -m rs_deeplab.sample FORMAT OUT`` writes a sample dataset and prints its files."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rs_deeplab.cli.console import ArgumentParser, cli_entry
from rs_deeplab.geo.raster import open_raster
from rs_deeplab.labels.classes import get_scheme
from rs_deeplab.sample.aerial import write_isaid, write_loveda
from rs_deeplab.sample.cityscapes import write_cityscapes
from rs_deeplab.sample.isprs import write_potsdam, write_vaihingen
from rs_deeplab.sample.output import preview_png
from rs_deeplab.sample.voc import write_voc

FORMATS = ("potsdam", "vaihingen", "loveda", "isaid", "voc", "cityscapes")


def build_parser() -> ArgumentParser:
    """The argument parser of ``python -m rs_deeplab.sample``."""
    p = ArgumentParser(
        prog="python -m rs_deeplab.sample",
        description="Write deterministic synthetic sample data in a dataset's real on-disk layout.",
    )
    p.add_argument("format", choices=FORMATS, help="dataset layout to write")
    p.add_argument("out", type=Path, help="dataset root folder (created if missing)")
    p.add_argument("--size", type=int, nargs="+", metavar="N", help="image size: N or H W (default: the dataset's)")
    p.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    p.add_argument("--gsd", type=float, help="potsdam only: pixel size in metres (default 0.05)")
    p.add_argument("--ids", nargs="+", help="potsdam tile ids like 2_13, or vaihingen area numbers")
    p.add_argument(
        "--count", type=int, help="images per folder/split (loveda, isaid, cityscapes) or train images (voc)"
    )
    p.add_argument("--preview", type=Path, help="also write a PNG: first image | its label colours")
    p.add_argument(
        "--polygons",
        type=Path,
        metavar="GPKG",
        help="potsdam, vaihingen: also write every scene's labels as polygons into one GeoPackage (layer labels; "
        "string attribute class_name, as a GIS user would draw them)",
    )
    return p


def _check(parser: ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option combinations and values the chosen format cannot use."""
    if args.size is not None and (len(args.size) > 2 or min(args.size) <= 0):
        parser.error(f"--size takes N or H W with positive integers, got {' '.join(map(str, args.size))}")
    if args.size is not None and args.format == "voc":
        parser.error("--size does not apply to voc (its images are 300-500 pixels like the real ones)")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.gsd is not None and (args.format != "potsdam" or not args.gsd > 0):
        parser.error("--gsd applies to potsdam only and must be a positive number of metres")
    if args.ids is not None and args.format not in ("potsdam", "vaihingen"):
        parser.error("--ids applies to potsdam (like 2_13) and vaihingen (area numbers) only")
    if args.count is not None and (args.format in ("potsdam", "vaihingen") or args.count < 1):
        parser.error("--count applies to loveda, isaid, voc and cityscapes and must be >= 1")
    if args.polygons is not None and (args.format not in ("potsdam", "vaihingen") or args.polygons.suffix != ".gpkg"):
        parser.error("--polygons applies to potsdam and vaihingen and takes a .gpkg path")


def _ids(parser: ArgumentParser, fmt: str, ids: list[str]) -> list[Any]:
    """Parse ``2_13`` tile ids (potsdam) or area numbers (vaihingen)."""
    try:
        if fmt == "potsdam":
            pairs = [tuple(int(v) for v in t.split("_")) for t in ids]
            if any(len(p) != 2 for p in pairs):
                raise ValueError
            return pairs
        return [int(t) for t in ids]
    except ValueError:
        parser.error(f"bad --ids {' '.join(ids)}: use tile ids like 2_13 (potsdam) or area numbers (vaihingen)")


def _write(args: argparse.Namespace, ids: list[Any] | None) -> Any:
    """Call the format's writer with the options that were given."""
    kw: dict[str, Any] = {"seed": args.seed}
    if args.size is not None:
        kw["size"] = tuple(args.size) if len(args.size) == 2 else args.size[0]
    writers: dict[str, Callable[[], Any]] = {
        "potsdam": lambda: write_potsdam(args.out, **kw, **_opt(ids=ids, gsd=args.gsd)),
        "vaihingen": lambda: write_vaihingen(args.out, **kw, **_opt(areas=ids)),
        "loveda": lambda: write_loveda(args.out, **kw, **_opt(per_folder=args.count)),
        "isaid": lambda: write_isaid(args.out, **kw, **_opt(per_split=args.count)),
        "voc": lambda: write_voc(args.out, seed=args.seed, **_opt(n_train=args.count)),
        "cityscapes": lambda: write_cityscapes(args.out, **kw, **_opt(per_split=args.count)),
    }
    return writers[args.format]()


def _opt(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments that are not None."""
    return {k: v for k, v in kwargs.items() if v is not None}


def written_files(result: Any) -> list[Path]:
    """Every file a writer produced: the paths of its records, or the files under its returned folder."""
    if isinstance(result, Path):
        return sorted(p for p in result.rglob("*") if p.is_file())
    return [v for rec in result for v in dataclasses.astuple(rec) if isinstance(v, Path)]


def first_pair(fmt: str, result: Any) -> tuple[Path, Path]:
    """The first image and label file of a written sample dataset."""
    if fmt == "voc":
        first = (result / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
        return result / "JPEGImages" / f"{first}.jpg", result / "SegmentationClass" / f"{first}.png"
    if fmt == "cityscapes":
        image = sorted((result / "leftImg8bit").rglob("*_leftImg8bit.png"))[0]
        label = Path(str(image).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
        return image, label
    rec = result[0]
    image = getattr(rec, "rgbir", None) or rec.image
    return image, getattr(rec, "label", None) or rec.mask


def write_preview(path: Path, fmt: str, result: Any, max_width: int = 1600) -> Path:
    """Preview the first image of a written dataset beside its decoded label colours."""
    image_path, label_path = first_pair(fmt, result)
    with open_raster(image_path) as src:
        image = src.read(indexes=list(range(1, min(3, src.count) + 1)))
    with open_raster(label_path) as src:
        label = src.read()
    scheme = get_scheme(fmt)
    classes = scheme.decode(label if scheme.encoding == "rgb" else label[0])
    return preview_png(path, image, classes, fmt, max_width=max_width)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Write one sample dataset and print the files written (one per line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    ids = _ids(parser, args.format, args.ids) if args.ids else None
    result = _write(args, ids)
    for path in written_files(result):
        print(path)
    if args.preview is not None:
        print(write_preview(args.preview, args.format, result))
    if args.polygons is not None:
        print(write_label_polygons(args.polygons, args.format, result))
    return 0


def write_label_polygons(path: Path, fmt: str, records: Sequence[Any]) -> Path:
    """Every record's colour label as polygons in one GeoPackage layer ``labels`` (``class_name``, ``scene``).

    What a user with hand-drawn polygons has: one vector layer over several scenes, classes as strings.
    """
    import tempfile

    from rs_deeplab.geo.raster import write_geotiff
    from rs_deeplab.vectorize import vectorize

    scheme = get_scheme(fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for rec in records:
            with open_raster(rec.label) as src:
                classes = scheme.decode(src.read())
                crs, transform = src.crs, src.transform
            raster = write_geotiff(Path(tmp) / "classes.tif", classes, crs=crs, transform=transform, nodata=255)
            scene = Path(getattr(rec, "rgbir", None) or rec.image).stem
            vectorize(raster, path, class_names=scheme.classes, extra_columns={"scene": scene}, mode="a")
    return path
