"""Run every pipeline stage on the built-in synthetic sample scenes: ``make demo``."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rs_deeplab.cli import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.sample import preview_png, write_potsdam

log = logging.getLogger("rs_deeplab.demo")

TRAIN_ID = (2, 10)  # in the official Potsdam training split
HELD_OUT_ID = (2, 13)  # in the official Potsdam validation split


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/demo.py``."""
    parser = ArgumentParser(prog="demo.py", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for every output (demo_out/)")
    parser.add_argument("--size", type=int, default=1536, help="side of each sample scene in pixels")
    parser.add_argument("--gsd", type=float, default=0.1, help="pixel size of the sample scenes in metres")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample scenes")
    add_common_arguments(parser)
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Generate the sample scenes and run the pipeline stages on them, printing where each output went."""
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Path] = {}

    start = time.perf_counter()
    data = out / "potsdam"
    files = write_potsdam(data, ids=(TRAIN_ID, HELD_OUT_ID), size=args.size, seed=args.seed, gsd=args.gsd)
    outputs["sample scenes (ISPRS Potsdam layout)"] = data
    outputs["training scene"] = files[0].rgbir
    outputs["held-out scene"] = files[1].rgbir
    outputs["preview"] = preview_png(out / "sample_preview.png", files[0].rgbir, files[0].label)
    log.info("sample scenes written in %.1f s", time.perf_counter() - start)

    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs:")
    print(describe_outputs({k: str(v) for k, v in outputs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
