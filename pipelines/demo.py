"""Run every pipeline stage on the built-in synthetic sample scenes: ``make demo``."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rs_deeplab.cli.console import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.runtime.tuning import tune_process

if TYPE_CHECKING:
    from rs_deeplab.config.schema import ExperimentConfig
    from rs_deeplab.sample import PotsdamFiles
    from rs_deeplab.tiling.tiler import TileSummary

log = logging.getLogger("rs_deeplab.demo")

TRAIN_IDS = ((2, 10), (2, 11))  # in the official Potsdam training split
HELD_OUT_ID = (2, 13)  # in the official Potsdam validation split
SIZE, GSD = 1536, 0.25  # pixels a side and metres a pixel of each sample scene (see bench/RESULTS.md, Training)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def held_out_scene(out: Path) -> Path:
    """Where the held-out scene's RGBIR image is written under ``out``."""
    i, j = HELD_OUT_ID
    return out / "potsdam" / "4_Ortho_RGBIR" / f"top_potsdam_{i}_{j}_RGBIR.tif"


def demo_config(out: Path, overrides: Sequence[str] = (), run_dir: Path | None = None) -> ExperimentConfig:
    """``configs/demo.yaml`` with its data and held-out scene under ``out``, the run in ``run_dir``, then ``overrides``.

    The held-out scene is recorded as an absolute path, so ``pipelines/infer.py --out x.gpkg`` finds it from
    anywhere; ``run_dir`` defaults to ``out/run``.
    """
    from rs_deeplab.config.schema import load_config

    run = out / "run" if run_dir is None else run_dir
    paths = [
        f"data.root={out / 'tiles'}",
        f"work_dir={run}",
        f"infer.scenes={json.dumps([str(held_out_scene(out).resolve())])}",
    ]
    return load_config(CONFIG, [*paths, *overrides])


def prepare_data(
    out: Path, *, size: int = SIZE, gsd: float = GSD, seed: int = 0, quiet: bool = False
) -> tuple[list[PotsdamFiles], TileSummary, Path]:
    """Write the sample scenes under ``out/potsdam``, a preview PNG, and tile them into ``out/tiles``.

    Returns:
        The scenes' files (held-out scene last), the tiling summary and the preview's path.
    """
    from rs_deeplab.geo.raster import open_raster
    from rs_deeplab.labels.classes import SCHEMES
    from rs_deeplab.sample import preview_png, write_potsdam
    from rs_deeplab.tiling.presets import tile_preset

    files = write_potsdam(out / "potsdam", ids=(*TRAIN_IDS, HELD_OUT_ID), size=size, seed=seed, gsd=gsd)
    with open_raster(files[0].rgbir) as img, open_raster(files[0].label) as lbl:
        classes = SCHEMES["potsdam"].decode(lbl.read())
        preview = preview_png(out / "sample_preview.png", img.read(), classes, max_width=1200)
    tiles = tile_preset("potsdam", out / "potsdam", out / "tiles", quiet=quiet)
    return files, tiles, preview


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/demo.py``."""
    parser = ArgumentParser(prog="demo.py", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="data, tiles and maps (demo_out/)")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs") / "demo",
        help="training run folder (runs/demo/, where pipelines/infer.py looks first)",
    )
    parser.add_argument("--size", type=int, default=SIZE, help="side of each sample scene in pixels")
    parser.add_argument("--gsd", type=float, default=GSD, help="pixel size of the sample scenes in metres")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample scenes")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of configs/demo.yaml")
    add_common_arguments(parser)
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Generate the sample scenes and run the pipeline stages on them, printing where each output went."""
    args = build_parser().parse_intermixed_args(argv)
    # the library loads after the arguments parse, inside the error boundary (see cli_entry)
    from rs_deeplab.evaluation.scenes import evaluate_scenes
    from rs_deeplab.geo.raster import open_raster
    from rs_deeplab.inference.infer import infer_scenes
    from rs_deeplab.inference.writing.report_page import write_result_page
    from rs_deeplab.labels.classes import SCHEMES
    from rs_deeplab.report.evaluation import evaluation_page_path, write_evaluation_page
    from rs_deeplab.sample import preview_png
    from rs_deeplab.training.experiment import train_experiment

    setup_logging(quiet=args.quiet, verbose=args.verbose)
    out: Path = args.out
    outputs: dict[str, Path] = {}

    start = time.perf_counter()
    cfg: ExperimentConfig = demo_config(
        out, args.overrides, args.run_dir
    )  # bad overrides fail before anything is written
    out.mkdir(parents=True, exist_ok=True)
    files, tiles, preview = prepare_data(out, size=args.size, gsd=args.gsd, seed=args.seed, quiet=args.quiet)
    outputs["sample scenes (ISPRS Potsdam layout)"] = out / "potsdam"
    outputs["held-out scene"] = files[-1].rgbir
    outputs["preview"] = preview
    outputs["tiles + index"] = tiles.index
    log.info("sample scenes written and tiled (%d crops) in %.1f s", tiles.crops, time.perf_counter() - start)

    result = train_experiment(cfg)
    outputs["training run"] = result.run_dir
    outputs["best checkpoint"] = result.best or result.last
    outputs["training page (open in a browser)"] = result.run_dir / "report.html"
    log.info("trained %d iterations, best val mIoU %.3f", result.iterations, result.best_miou)

    held_out = files[-1].rgbir
    maps = infer_scenes([held_out], out / "labels.gpkg", checkpoint=result.best or result.last, quiet=args.quiet)
    prediction = maps.rasters[0].labels
    outputs["label raster (held-out scene)"] = prediction
    outputs[f"polygons ({maps.polygon_count})"] = out / "labels.gpkg"
    page = write_result_page(out / "labels.html", maps, title="demo: held-out scene")
    outputs[f"prediction page ({page.size_text()}; open in a browser)"] = page.page
    report = evaluate_scenes(
        [(prediction, files[-1].label_noboundary)], out / "scores", scheme=SCHEMES["potsdam"], quiet=True
    )
    outputs["scene scores"] = out / "scores" / "scene_scores.md"
    scored = write_evaluation_page(
        evaluation_page_path(out / "scores"), report, scheme=SCHEMES["potsdam"], title="demo: held-out scene scores"
    )
    outputs[f"evaluation page ({scored.size_text()}; open in a browser)"] = scored.page
    with open_raster(held_out) as img, open_raster(prediction) as pred, open_raster(files[-1].label) as lbl:
        truth = SCHEMES["potsdam"].decode(lbl.read())
        outputs["prediction preview"] = preview_png(
            out / "prediction_preview.png", img.read(), pred.read(1), max_width=1800, also=[truth]
        )
    log.info(
        "predicted the held-out scene in %.1f s: mIoU %.3f over the whole scene (eroded boundaries ignored)",
        maps.seconds,
        report["total"]["scores"]["mIoU"],
    )

    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs:")
    print(describe_outputs({k: str(v) for k, v in outputs.items()}))
    return 0


if __name__ == "__main__":
    tune_process()  # process-wide settings belong to the script, not to the library (rs_deeplab.runtime.tuning)
    sys.exit(main())
