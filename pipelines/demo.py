"""Run every pipeline stage on the built-in synthetic sample scenes: ``make demo``."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rs_deeplab.classes import SCHEMES
from rs_deeplab.cli import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.config import ExperimentConfig, load_config
from rs_deeplab.experiment import train_experiment
from rs_deeplab.inference.pipeline import infer_scenes
from rs_deeplab.presets import tile_preset
from rs_deeplab.raster import open_raster
from rs_deeplab.sample import preview_png, write_potsdam
from rs_deeplab.scene_eval import evaluate_scenes

log = logging.getLogger("rs_deeplab.demo")

TRAIN_IDS = ((2, 10), (2, 11))  # in the official Potsdam training split
HELD_OUT_ID = (2, 13)  # in the official Potsdam validation split
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/demo.py``."""
    parser = ArgumentParser(prog="demo.py", description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path("demo_out"), help="folder for data, tiles and maps (demo_out/)"
    )
    parser.add_argument("--run-dir", type=Path, default=Path("runs") / "demo",
                        help="training run folder (runs/demo/, where pipelines/infer.py looks first)")  # fmt: skip
    parser.add_argument("--size", type=int, default=1536, help="side of each sample scene in pixels")
    parser.add_argument("--gsd", type=float, default=0.1, help="pixel size of the sample scenes in metres")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample scenes")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of configs/demo.yaml")
    add_common_arguments(parser)
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Generate the sample scenes and run the pipeline stages on them, printing where each output went."""
    args = build_parser().parse_intermixed_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    out: Path = args.out
    outputs: dict[str, Path] = {}

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "potsdam"
    held_out = data / "4_Ortho_RGBIR" / "top_potsdam_{}_{}_RGBIR.tif".format(*HELD_OUT_ID)
    cfg: ExperimentConfig = load_config(CONFIG, [f"data.root={out / 'tiles'}", f"work_dir={args.run_dir}",
                                                 f"infer.scenes=[{held_out.resolve()}]", *args.overrides])  # fmt: skip
    ids = (*TRAIN_IDS, HELD_OUT_ID)
    files = write_potsdam(data, ids=ids, size=args.size, seed=args.seed, gsd=args.gsd)
    outputs["sample scenes (ISPRS Potsdam layout)"] = data
    outputs["held-out scene"] = files[-1].rgbir
    with open_raster(files[0].rgbir) as img, open_raster(files[0].label) as lbl:
        classes = SCHEMES["potsdam"].decode(lbl.read())
        outputs["preview"] = preview_png(out / "sample_preview.png", img.read(), classes, max_width=1200)
    log.info("1/4 sample scenes written in %.1f s", time.perf_counter() - start)

    tiles = tile_preset("potsdam", data, out / "tiles", quiet=args.quiet)
    outputs["tiles + index"] = tiles.index
    log.info("2/4 tiled %d crops in %.1f s", tiles.crops, tiles.seconds)

    result = train_experiment(cfg)
    outputs["training run"] = result.run_dir
    outputs["best checkpoint"] = result.best or result.last
    log.info("3/4 trained %d iterations, best val mIoU %.3f", result.iterations, result.best_miou)

    maps = infer_scenes([held_out], out / "labels.gpkg", checkpoint=result.best or result.last, quiet=args.quiet)
    prediction = maps.rasters[0].labels
    outputs["label raster (held-out scene)"] = prediction
    outputs[f"polygons ({maps.polygon_count})"] = out / "labels.gpkg"
    truth = files[-1].label_noboundary
    report = evaluate_scenes([(prediction, truth)], out / "scores", scheme=SCHEMES["potsdam"], quiet=True)
    outputs["scene scores"] = out / "scores" / "scene_scores.md"
    with open_raster(held_out) as img, open_raster(prediction) as pred, open_raster(files[-1].label) as lbl:
        truth_classes = SCHEMES["potsdam"].decode(lbl.read())
        outputs["prediction preview"] = preview_png(out / "prediction_preview.png", img.read(), pred.read(1),
                                                    max_width=1800, also=[truth_classes])  # fmt: skip
    log.info("4/4 predicted the held-out scene in %.1f s: mIoU %.3f over the whole scene (eroded boundaries "
             "ignored)", maps.seconds, report["total"]["scores"]["mIoU"])  # fmt: skip

    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs:")
    print(describe_outputs({k: str(v) for k, v in outputs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
