"""PyTorch against ONNX Runtime float32 and int8 through ``predict_scene`` on the same scene, in one run.

Each runtime is loaded first (the export and the quantization are cached beside the checkpoint, timed apart), then
the whole scene is predicted with ``predict_scene`` (reading, blending and writing included) ``--repeats`` times,
the runtimes alternating so load from other jobs hits them alike. Printed: windows/s (median), the ratio to
PyTorch and to ONNX float32, the share of labels equal to PyTorch's (and to float32 ONNX's), and how many differing
pixels are not near-ties (PyTorch's two best probabilities more than one 1/255 step apart).

``int8 dynamic`` (weights-only quantization) is measured too, through the same path, to justify static for --int8.

    PYTHONPATH=$PWD python bench/cpu_runtime_bench.py --checkpoint runs/demo/best.pt [SCENE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

from rs_deeplab.inference import predict_scene
from rs_deeplab.inference.runtimes.exported import OnnxModule
from rs_deeplab.inference.runtimes.onnx_cache import CACHE_FOLDER
from rs_deeplab.inference.runtimes.quantize import quantize_dynamic_model
from rs_deeplab.inference.runtimes.trained import LoadedModel, TrainedModel
from rs_deeplab.runtime.cores import usable_cores


def read(path: Path) -> np.ndarray:
    """All bands of a raster."""
    with rasterio.open(path) as ds:
        return ds.read()


def loaders(checkpoint: Path, scene: str, dynamic: bool, work: Path) -> dict[str, Callable[[], Any]]:
    """Each runtime's loader (returns what ``predict_scene`` takes)."""
    cpu = torch.device("cpu")

    def dynamic_model() -> Any:
        fp32 = TrainedModel(checkpoint, runtime="onnx").load(cpu)
        (path,) = [
            p
            for p in (checkpoint.parent / CACHE_FOLDER).glob(f"{checkpoint.stem}.*.onnx")
            if str(fp32.module.path) == str(p)
        ]
        out = work / "dynamic.onnx"
        quantize_dynamic_model(path, out)
        return LoadedModel(fp32.source, OnnxModule(out, cpu), fp32.card, "onnx-int8-dynamic")

    runs: dict[str, Callable[[], Any]] = {
        "pytorch fp32": lambda: TrainedModel(checkpoint, runtime="torch").load(cpu),
        "onnx fp32": lambda: TrainedModel(checkpoint, runtime="onnx").load(cpu),
        "onnx int8 static": lambda: TrainedModel(
            checkpoint, runtime="onnx", precision="int8", calibration=(scene,)
        ).load(cpu),
    }
    if dynamic:
        runs["onnx int8 dynamic"] = dynamic_model
    return runs


def main() -> None:
    """Load each runtime, predict the scene with each, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scene", nargs="?", help="scene (default: the checkpoint's first infer.scenes)")
    p.add_argument("--checkpoint", type=Path, required=True, help="a training checkpoint, e.g. runs/demo/best.pt")
    p.add_argument("--repeats", type=int, default=2, help="predictions of the scene per runtime (2)")
    p.add_argument("--no-dynamic", action="store_true", help="skip dynamic int8 (slow)")
    args = p.parse_args()
    checkpoint = args.checkpoint.resolve()
    card = TrainedModel(checkpoint, runtime="torch").load(torch.device("cpu")).card
    scene = args.scene or str(card.infer.scenes[0])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models, load_s = {}, {}
        for name, load in loaders(checkpoint, scene, not args.no_dynamic, work).items():
            start = time.perf_counter()
            models[name] = load()
            load_s[name] = time.perf_counter() - start
        rates: dict[str, list[float]] = {name: [] for name in models}
        windows = 0
        for _ in range(args.repeats):
            for name, model in models.items():
                stem = name.replace(" ", "_")
                result = predict_scene(
                    model,
                    scene,
                    work / f"{stem}.tif",
                    size=card.infer.size,
                    stride=card.infer.stride,
                    batch_size=card.infer.batch_size,
                    device="cpu",
                    resume=False,
                    probs_path=work / f"{stem}_probs.tif" if name.startswith("pytorch") else None,
                )
                rates[name].append(result.windows / result.seconds)
                windows = result.windows
        labels = {name: read(work / f"{name.replace(' ', '_')}.tif")[0] for name in models}
        probs = np.sort(read(work / "pytorch_fp32_probs.tif").astype(int), axis=0)[-2:]
    gap = probs[1] - probs[0]
    base, fp32 = statistics.median(rates["pytorch fp32"]), statistics.median(rates["onnx fp32"])
    height, width = labels["pytorch fp32"].shape
    print(
        f"{scene}: {width}x{height} px, {windows} windows of {card.infer.size} (stride {card.infer.stride}, batch "
        f"{card.infer.batch_size}), {card.architecture.describe()}, {usable_cores()} usable cores, torch "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats"
    )
    print(
        "| runtime | load s (export/quantize when not cached) | windows/s | × PyTorch | × ONNX fp32 | labels = "
        "PyTorch | labels = ONNX fp32 | differing, not near-ties |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in models:
        rate = statistics.median(rates[name])
        differ = labels[name] != labels["pytorch fp32"]
        print(
            f"| {name} | {load_s[name]:.1f} | {rate:.2f} | {rate / base:.2f} | {rate / fp32:.2f} | "
            f"{100 * (1 - differ.mean()):.3f} % | {100 * np.mean(labels[name] == labels['onnx fp32']):.3f} % | "
            f"{int((differ & (gap > 1)).sum())} |"
        )


if __name__ == "__main__":
    main()
