"""Export a trained checkpoint as a deployable model that needs neither this project's training stack nor torch.

``python pipelines/export.py runs/x/best.pt --out model.onnx`` writes an ONNX model (dynamic batch and window size,
opset 17+) carrying its bands, statistics, classes, colours, GSD, window and output stride in its metadata;
``--format torchscript --out model.ts`` writes TorchScript instead. ``pipelines/infer.py --checkpoint model.onnx``
runs it (ONNX Runtime: ``pip install 'rs_deeplab[onnx]'``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rs_deeplab.cli.console import ArgumentParser, add_common_arguments, cli_entry, describe_outputs, setup_logging
from rs_deeplab.runtime.tuning import tune_process


def build_parser() -> ArgumentParser:
    """Arguments of ``pipelines/export.py``."""
    # imported here, inside main's error boundary: a Ctrl-C while torch/GDAL load is one line too
    from rs_deeplab.inference.runtimes.export import FORMATS, MIN_OPSET

    p = ArgumentParser(prog="export.py", description=__doc__)
    p.add_argument("checkpoint", type=Path, help="training checkpoint, e.g. runs/x/best.pt")
    p.add_argument("--out", type=Path, required=True, help="model.onnx (ONNX) or model.ts (TorchScript)")
    p.add_argument("--format", choices=tuple(FORMATS), help="onnx or torchscript (default: from --out's suffix)")
    p.add_argument(
        "--output-stride",
        type=int,
        choices=(8, 16),
        help="output stride to bake in (default: infer.output_stride, else as trained)",
    )
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset ({MIN_OPSET} or newer)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file even if it is not a model")
    add_common_arguments(p)
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run :func:`~rs_deeplab.inference.runtimes.export.export_model`, name the output."""
    from rs_deeplab.inference.runtimes.export import describe, export_model

    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    result = export_model(
        args.checkpoint, args.out, fmt=args.format, output_stride=args.output_stride, opset=args.opset, force=args.force
    )
    if not args.quiet:
        details = ", ".join(f"{k} {v}" for k, v in describe(result).items())
        print(f"exported {args.checkpoint} ({details})")
        print(describe_outputs({"model": result.path}))
    return 0


if __name__ == "__main__":
    tune_process()  # process-wide settings belong to the script, not to the library (rs_deeplab.runtime.tuning)
    sys.exit(main())
