"""Predict whole scenes with a trained checkpoint: a georeferenced label raster, and polygons in a GeoPackage.

After the quick start, ``python pipelines/infer.py --out labels.gpkg`` runs the newest ``runs/*/best.pt`` on the
held-out scenes recorded in its config and writes ``labels.tif`` plus ``labels.gpkg``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rs_deeplab.cli.console import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.cli.errors import InputError
from rs_deeplab.runtime.tuning import tune_process

LISTED_SCENES = 8
"""Up to this many scenes, the summary lists each scene's rasters; beyond, one pattern per kind."""


def _numbers(text: str, kind: type = float, count: int | None = None) -> tuple[Any, ...]:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or (count is not None and len(values) != count):
        raise InputError(f"expected {count or 'some'} comma-separated numbers, got {text!r}")
    return values


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/infer.py``."""
    # imported here, inside main's error boundary: a Ctrl-C while torch/GDAL load is one line too
    from rs_deeplab.inference.runtimes.choice import PRECISIONS, RUNTIMES
    from rs_deeplab.remote.scenes import local_output
    from rs_deeplab.runtime.cluster import SCHEDULER_HELP
    from rs_deeplab.runtime.devices import AMP_CHOICES

    p = ArgumentParser(prog="infer.py", description=__doc__)
    p.add_argument(
        "scenes",
        nargs="*",
        type=str,
        help="scenes to predict: files, URLs (https://, s3://, gs://; read window by window), GDAL "
        "paths (/vsicurl/...), STAC Items (.json file or URL), quoted glob patterns ('tiles/**/*.tif', "
        "sorted) or text files listing scenes one per line (@list, or a .txt/.lst file; # comments; "
        "relative paths from the list's folder); default: the checkpoint's infer.scenes",
    )
    p.add_argument(
        "--assets",
        help="STAC Items: assets stacked as bands, e.g. red,green,blue,nir "
        "(default: the band names the checkpoint recorded)",
    )
    p.add_argument(
        "--out", type=local_output, required=True, help="x.gpkg (raster x.tif + polygons) or x.tif (raster only)"
    )
    p.add_argument("--checkpoint", type=Path, help="trained checkpoint (default: newest runs/*/best.pt)")
    p.add_argument("--size", type=int, help="window side in pixels (default: the config's infer.size)")
    p.add_argument("--stride", type=int, help="step between windows (default: infer.stride)")
    p.add_argument("--batch-size", type=int, help="windows per model call (default: infer.batch_size)")
    p.add_argument("--tta", action="store_true", help="average over flips (and --scales)")
    p.add_argument("--scales", help="multi-scale test-time augmentation, e.g. 0.75,1,1.25")
    p.add_argument("--crf", action="store_true", help="refine with DenseCRF (pydensecrf)")
    p.add_argument("--crf-bands", help="1-based bands the CRF uses as colour (default: the first three)")
    p.add_argument(
        "--crf-iterations",
        type=int,
        help="mean-field iterations of the CRF (default: the setting pipelines/crf_search.py recorded "
        "beside the checkpoint, else 5)",
    )
    p.add_argument("--crf-gaussian", help="smoothness kernel SXY,COMPAT (default: searched, else DeepLab's 3,3)")
    p.add_argument(
        "--crf-bilateral", help="appearance kernel SXY,SRGB,COMPAT (default: searched, else DeepLab's 80,13,10)"
    )
    p.add_argument(
        "--output-stride",
        type=int,
        choices=(8, 16, 32),
        help="inference output stride (default: infer.output_stride, else as trained)",
    )
    p.add_argument(
        "--gsd",
        default="auto",
        help="scale to predict at: auto (default: the model's ground sampling distance when a scene's "
        "differs by more than 1%%, up to 4× the pixels either way; scenes are read resampled and "
        "labels written on their own grid), native (each scene's own pixels) or metres per pixel, "
        "e.g. 0.5",
    )
    p.add_argument("--probs", action="store_true", help="also write per-class probabilities (x_probs.tif, 0-255)")
    p.add_argument("--cog", action="store_true", help="write Cloud-Optimized GeoTIFFs")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU when one is visible), cpu, cuda or cuda:N; with --scheduler, on each worker",
    )
    p.add_argument(
        "--amp",
        default="auto",
        choices=AMP_CHOICES,
        help="GPU precision: auto (bf16 where the GPU has it, else fp16), bf16, fp16 or none (float32)",
    )
    p.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="what runs a checkpoint on the CPU: auto (default: ONNX Runtime when installed and the model "
        "exports, about 2x PyTorch's speed here, else PyTorch; the export is cached in "
        ".rs_deeplab_cache/ beside the checkpoint), torch or onnx; on a GPU auto is PyTorch",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="int8: quantize the checkpoint for ONNX Runtime on the CPU (static, calibrated on windows of "
        "the first scene; its agreement with fp32 is printed and recorded in the rasters); fp32 "
        "(default)",
    )
    p.add_argument("--int8", dest="precision", action="store_const", const="int8", help="same as --precision int8")
    p.add_argument(
        "--scheduler",
        help="Dask scheduler address: spread row ranges of each scene over its workers. One model per "
        "GPU: on each GPU machine run `python -m rs_deeplab.inference.dask_jobs.gpu_workers ADDRESS` (one "
        f"single-threaded worker per GPU, resource GPU=1); {SCHEDULER_HELP} from the rows "
        "written",
    )
    p.add_argument(
        "--separate",
        action="store_true",
        help="several scenes are separate maps (e.g. dates of one place): no mosaic; polygons per "
        "scene, with its name in the scene column",
    )
    p.add_argument("--to-crs", help="CRS of the mosaic and the polygons, e.g. EPSG:32633 (default: the first scene's)")
    p.add_argument(
        "--res", type=float, help="pixel size of the mosaic, in the units of its CRS (default: the first scene's)"
    )
    p.add_argument(
        "--stac",
        action="store_true",
        help="also write a STAC Collection with one Item per scene (x.stac/collection.json)",
    )
    p.add_argument("--min-area", type=float, default=0.0, help="drop polygons under this many m² (0)")
    p.add_argument("--simplify", type=float, default=0.0, help="polygon simplification tolerance in pixels (0)")
    p.add_argument(
        "--workers",
        type=int,
        help="processes that polygonize blocks of the labels (default: the usable cores for rasters "
        "over ~8 Mpx, else 1; the polygons are the same for any number)",
    )
    p.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="do not write the prediction page x.html (a map of the scene, the classes and the "
        "polygons, with legend and model card; opens offline from file://)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over: drop an interrupted run's partial output, recompute a finished one",
    )
    add_common_arguments(p)
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run :func:`~rs_deeplab.inference.infer.infer_scenes`, list the outputs."""
    from rs_deeplab.geo.gsd import parse_gsd
    from rs_deeplab.geo.scene_lists import expand_scenes
    from rs_deeplab.inference.infer import InferOptions, infer_scenes
    from rs_deeplab.remote.scenes import scene_name, scene_names

    args = build_parser().parse_intermixed_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    args.scenes = expand_scenes(args.scenes)  # globs and lists of scenes, checked before the checkpoint is loaded
    try:
        gsd = parse_gsd(args.gsd)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    options = InferOptions(
        size=args.size,
        stride=args.stride,
        batch_size=args.batch_size,
        tta=args.tta,
        scales=None if args.scales is None else _numbers(args.scales),
        crf=args.crf,
        crf_bands=None if args.crf_bands is None else _numbers(args.crf_bands, int),
        crf_iterations=args.crf_iterations,
        crf_gaussian=None if args.crf_gaussian is None else _numbers(args.crf_gaussian, count=2),
        crf_bilateral=None if args.crf_bilateral is None else _numbers(args.crf_bilateral, count=3),
        output_stride=args.output_stride,
        probs=args.probs,
        cog=args.cog,
        device=args.device,
        amp=args.amp,
        scheduler=args.scheduler,
        min_area=args.min_area,
        simplify=args.simplify,
        workers=args.workers,
        resume=not args.restart,
        gsd=gsd,
        assets=None if args.assets is None else tuple(a.strip() for a in args.assets.split(",") if a.strip()),
        separate=args.separate,
        to_crs=args.to_crs,
        res=args.res,
        stac=args.stac,
        runtime=args.runtime,
        precision=args.precision,
    )
    page = args.out.with_suffix(".html") if args.report else None
    if page is not None:
        from rs_deeplab.report.page import check_page_path

        check_page_path(page)  # before the model runs: a page that cannot be written is one line, not a lost run
    result = infer_scenes(args.scenes, args.out, checkpoint=args.checkpoint, options=options, quiet=args.quiet)
    outputs: dict[str, str] = {}
    if len(result.rasters) > LISTED_SCENES:  # a region's scene rasters, in one line each kind
        first = result.rasters[0]
        outputs[f"labels ({len(result.rasters)} scenes)"] = str(first.labels.with_name(f"{args.out.stem}_*.tif"))
        if first.probs:
            outputs[f"probabilities ({len(result.rasters)} scenes)"] = str(
                first.probs.with_name(f"{args.out.stem}_*_probs.tif")
            )
    else:
        names = [scene_name(r.scene) for r in result.rasters]
        if len(set(names)) < len(names):  # equal file names: the names the outputs carry
            names = scene_names([r.scene for r in result.rasters])
        outputs.update({f"labels ({n})": str(r.labels) for n, r in zip(names, result.rasters, strict=True)})
        outputs.update(
            {f"probabilities ({n})": str(r.probs) for n, r in zip(names, result.rasters, strict=True) if r.probs}
        )
    if result.region is not None:
        grid = result.region.grid
        outputs[f"mosaic ({grid.width}×{grid.height}, {len(result.rasters)} scenes)"] = str(result.region.vrt)
        if result.region.cog is not None:
            outputs["mosaic (Cloud-Optimized GeoTIFF)"] = str(result.region.cog)
        if result.region.probs_vrt is not None:
            outputs["mosaic probabilities"] = str(result.region.probs_vrt)
    if result.polygons is not None:
        outputs[f"polygons ({result.polygon_count})"] = str(result.polygons)
    if result.catalog is not None:
        outputs["STAC collection"] = str(result.catalog)
    if page is not None:
        from rs_deeplab.inference.writing.report_page import write_result_page

        written = write_result_page(page, result, options, title=args.out.stem)
        outputs[f"prediction page ({written.size_text()}; open in a browser)"] = str(page)
    print(f"inference with {result.checkpoint} finished in {result.seconds:.0f} s; outputs:")
    print(describe_outputs(outputs))
    return 0


if __name__ == "__main__":
    tune_process()  # process-wide settings belong to the script, not to the library (rs_deeplab.runtime.tuning)
    sys.exit(main())
