"""Benchmark sliding-window inference: overhead over the model alone (time) and peak memory as scenes grow.

Part 1 (time): a generated ``--time-size``² 4-band uint8 scene and a DeepLab v3+ ResNet-18 (6 classes, random
weights: speed does not depend on them). In one process, best of ``--repeats``:
  * model only — the same number of windows, in the same batches, from tensors already in memory;
  * ``predict_scene`` — reading, normalising, blending, arg-max and writing the tiled GeoTIFF included;
  * a full-array accumulator in the style of mmsegmentation's slide inference — the whole scene read at once,
    ``(classes, H, W)`` float32 sums and counts for the whole scene, one write at the end.
It prints ``predict_scene / model only`` (target ≤ 1.10 on CPU) and the full-array time ratio.

Part 2 (memory): scenes of ``--mem-sizes`` (default 2000, 6000, 12000) with a small 3-layer CNN (so that
12,000² runs in minutes on a CPU), each predicted in a fresh child process, streaming and full-array; each child
reports its peak RSS (``ru_maxrss``). Streaming should stay flat; the full-array accumulator grows with H × W.
``--stream-only-sizes 20000`` adds scenes run by the streaming path only (the full array would need ~10 GB).

Feed (``--feed``, issue 11): the CPU side a GPU run still needs — reading and decoding each scene row once,
cutting raw windows and handing them over (pinned and normalised on the GPU where CUDA exists), then writing
finished rows — with the model, softmax and blending replaced by stand-ins that cost nothing (a preallocated
probability tensor; finished rows of a constant label, and with ``--probs`` constant uint8 probabilities as the
device quantises them). Generated ``--feed-size``² scenes (default 8192): 4-band uint8 uncompressed (striped),
4-band uint8 DEFLATE (256² tiles) and 4-band uint16 DEFLATE; windows 512 every 256, batch 4; for 1 and 2
reading threads, with and without ``--probs``, it prints windows per second (target >= 900 with both cores on
the DEFLATE uint8 scene without ``--probs``). ``--smoke`` runs it on a 768² scene once (the test suite does).

    PYTHONPATH=$PWD python bench/infer_bench.py [--time-size 2000] [--mem-sizes 2000,6000,12000] [--device cpu]
    PYTHONPATH=$PWD python bench/infer_bench.py --feed [--feed-size 8192] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from rs_deeplab.geo.grid import axis_offsets
from rs_deeplab.geo.raster import geotiff_profile
from rs_deeplab.inference.predicting.blending import FinishedRows, window_weight
from rs_deeplab.inference.predicting.predictor import Normaliser
from rs_deeplab.inference.predicting.rows import RowJob
from rs_deeplab.inference.predicting.scene import predict_scene
from rs_deeplab.inference.predicting.streams import BackgroundSink, prefetch
from rs_deeplab.inference.reading.reader import scene_info
from rs_deeplab.inference.writing.writer import OutputSpec, RowWriter
from rs_deeplab.models import build_model
from rs_deeplab.runtime.devices import pick_device
from rs_deeplab.runtime.tuning import tune_malloc

TRANSFORM = Affine(0.1, 0.0, 368_000.0, 0.0, -0.1, 5_808_000.0)
MEAN, STD = [110.0, 110.0, 100.0, 120.0], [50.0, 45.0, 45.0, 55.0]


def write_scene(
    path: Path, size: int, strip: int = 1000, *, dtype: str = "uint8", compress: str | None = None, tiled: bool = True
) -> Path:
    """A ``size``² 4-band scene of smooth random fields plus noise, written strip by strip (default: tiled, raw)."""
    if path.exists():
        return path
    rng = np.random.default_rng(size)
    profile = geotiff_profile(
        width=size,
        height=size,
        count=4,
        dtype=dtype,
        crs="EPSG:32633",
        transform=TRANSFORM,
        compress=compress,
        tiled=tiled,
    )
    if tiled:
        profile["interleave"] = "band"
    scale = 1 if dtype == "uint8" else 40  # uint16: 12-bit-like values
    base = rng.integers(40, 220, (4, 64, 64)).astype(dtype) * scale
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, strip):
            rows = min(strip, size - r)
            yy = (np.arange(r, r + rows) // 37) % 64
            xx = (np.arange(size) // 37) % 64
            noise = rng.integers(0, 20, (4, rows, size), dtype=np.uint8).astype(dtype) * scale
            dst.write(base[:, yy][:, :, xx] + noise, window=Window(0, r, size, rows))
    os.replace(tmp, path)
    return path


def small_cnn() -> torch.nn.Module:
    """Three convolutions, 6 classes: a stand-in for a model when memory, not speed, is measured."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 6, 1),
    ).eval()


def deeplab() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("deeplabv3plus", num_classes=6, in_channels=4, backbone="resnet18", output_stride=16).eval()


def model_only(model: torch.nn.Module, size: int, win: int, stride: int, batch: int, device: str) -> float:
    """Seconds to run the scene's windows (same batches: one window row at a time) from ready tensors."""
    rows, cols = axis_offsets(size, win, stride), axis_offsets(size, win, stride)
    x = torch.randn(batch, 4, win, win)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in rows:
            for i in range(0, len(cols), batch):
                n = min(batch, len(cols) - i)
                model(x[:n].to(device)).softmax(1).cpu()
    return time.perf_counter() - start


def full_array(model: torch.nn.Module, scene: Path, out: Path, win: int, stride: int, batch: int) -> None:
    """mmsegmentation-style slide inference: whole-scene input, probability sums and counts in memory."""
    with rasterio.open(scene) as src:
        image = src.read().astype(np.float32)
        profile = src.profile
    image -= np.asarray(MEAN, np.float32)[:, None, None]
    image /= np.asarray(STD, np.float32)[:, None, None]
    _, h, w = image.shape
    sums = np.zeros((6, h, w), np.float32)
    weights = np.zeros((h, w), np.float32)
    windows = [(r, c) for r in axis_offsets(h, win, stride) for c in axis_offsets(w, win, stride)]
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            chunk = windows[i : i + batch]
            x = torch.from_numpy(np.stack([image[:, r : r + win, c : c + win] for r, c in chunk]))
            probs = model(x).softmax(1).numpy()
            for (r, c), p in zip(chunk, probs, strict=True):
                wt = window_weight(r, c, win, h, w)
                sums[:, r : r + win, c : c + win] += p * wt
                weights[r : r + win, c : c + win] += wt
    labels = (sums / weights).argmax(0).astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=255, compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(labels, 1)


def child(mode: str, scene: str, out: str, win: int, stride: int, batch: int) -> None:
    """Run one mode in this (fresh) process and print its peak RSS and time as JSON."""
    model = small_cnn()
    start = time.perf_counter()
    if mode == "stream":
        predict_scene(
            model, scene, out, size=win, stride=stride, batch_size=batch, mean=MEAN, std=STD, device="cpu", resume=False
        )
    else:
        full_array(model, Path(scene), Path(out), win, stride, batch)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "peak_mib": peak, "seconds": seconds}))


def time_part(work: Path, size: int, repeats: int, device: str) -> None:
    scene = write_scene(work / f"scene_{size}.tif", size)
    model = deeplab().to(device)
    win, stride, batch = 512, 256, 4
    runs: dict[str, list[float]] = {"model": [], "stream": [], "full": []}
    model_only(model, 600, win, stride, batch, device)  # warm-up
    for _ in range(repeats):
        runs["model"].append(model_only(model, size, win, stride, batch, device))
        start = time.perf_counter()
        predict_scene(
            model,
            scene,
            work / "stream.tif",
            size=win,
            stride=stride,
            batch_size=batch,
            mean=MEAN,
            std=STD,
            device=device,
            resume=False,
        )
        runs["stream"].append(time.perf_counter() - start)
        if device == "cpu":
            start = time.perf_counter()
            full_array(model, scene, work / "full.tif", win, stride, batch)
            runs["full"].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in runs.items() if v}
    n = len(axis_offsets(size, win, stride)) ** 2
    print(
        f"# time: {size}² scene, DeepLab v3+ R18, {n} windows {win}/{stride}, batch {batch}, {device}, "
        f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}"
    )
    for k, v in runs.items():
        if v:
            print(f"  {k:7s} best {best[k]:7.2f} s   runs {' '.join(f'{x:.2f}' for x in v)}")
    print(f"  predict_scene / model only: {best['stream'] / best['model']:.3f}  (target <= 1.10)")
    if "full" in best:
        print(f"  full-array accumulator / model only: {best['full'] / best['model']:.3f}")
    print(f"  windows per second: {n / best['stream']:.2f} (model only {n / best['model']:.2f})")


FEED_SCENES = {
    "uint8 raw": ("uint8", None, False),
    "uint8 deflate": ("uint8", "deflate", True),
    "uint16 deflate": ("uint16", "deflate", True),
}


def feed_once(scene: Path, out: Path, threads: int, probs: bool, device: torch.device) -> tuple[int, float]:
    """Windows handed over and seconds for one pass of the feed (stand-in model and blending, real writer)."""
    win, stride, classes = 512, 256, 6
    job = RowJob(
        info=scene_info(scene),
        size=win,
        stride=stride,
        batch_size=4,
        bands=(1, 2, 3, 4),
        num_classes=classes,
        mean=tuple(MEAN),
        std=tuple(STD),
        keep_probs=probs,
        read_threads=threads,
    )
    info, cuda = job.info, device.type == "cuda"
    normalise = Normaliser(job.mean, job.std, device) if cuda else None  # on a CPU the device work is left out
    out_probs = torch.zeros((job.batch_size, classes, win, win), device=device)  # the model's stand-in
    labels = np.zeros((win, info.width), np.uint8)
    kept = np.full((classes, win, info.width), 42, np.uint8) if probs else None
    spec = OutputSpec(
        out, tuple(f"c{i}" for i in range(classes)), None, out.with_suffix(".probs.tif") if probs else None
    )
    writer = RowWriter(spec, info, {"bench": "feed"})
    writer.open()
    reader = job.reader(pin_memory=cuda)
    offs, last_col, windows, start = job.row_offs, reader.col_offs[-1], 0, time.perf_counter()
    with BackgroundSink[FinishedRows](writer.write) as sink:
        done = 0
        for batch in prefetch(reader.batches()):
            if normalise is not None:
                valid = None if batch.valid is None else batch.valid.to(device, non_blocking=True)
                normalise(batch.pixels, valid, batch.extent)
            probs_of_batch = out_probs[: len(batch.col_offs)]  # what the model would hand to blending
            windows += probs_of_batch.shape[0]
            if batch.col_offs[-1] == last_col:  # the window row is done: rows above the next one are finished
                nxt = offs.index(batch.row_off) + 1
                until = offs[nxt] if nxt < len(offs) else info.height
                n = until - done
                sink.put(FinishedRows(done, labels[:n], None if kept is None else kept[:, :n]))
                done = until
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    writer.close()
    return windows, seconds


def feed_part(work: Path, size: int, repeats: int, device: torch.device, threads: list[int]) -> None:
    print(
        f"# feed: {size}² 4-band scenes, windows 512/256, batch 4, stand-in model and blending, {device}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    for case, (dtype, compress, tiled) in FEED_SCENES.items():
        name = f"feed_{size}_{case.replace(' ', '_')}.tif"
        scene = write_scene(work / name, size, dtype=dtype, compress=compress, tiled=tiled)
        for probs in (False, True):
            for t in threads:
                runs = [feed_once(scene, work / "feed_out.tif", t, probs, device) for _ in range(repeats)]
                n, best = runs[0][0], min(r[1] for r in runs)
                print(
                    f"  {case:15s} probs {'yes' if probs else 'no ':3s} threads {t}: {n} windows, best {best:6.2f} s"
                    f" = {n / best:7.1f} windows/s   runs {' '.join(f'{r[1]:.2f}' for r in runs)}"
                )


def memory_part(work: Path, sizes: list[int], stream_only: list[int]) -> None:
    print(f"# memory: small CNN, windows 512/256, batch 4, fresh process per run, load {os.getloadavg()[0]:.1f}")
    for size in sizes + stream_only:
        scene = write_scene(work / f"scene_{size}.tif", size)
        for mode in ("stream",) if size in stream_only else ("stream", "full"):
            cmd = [sys.executable, __file__, "--child", mode, str(scene), str(work / f"{mode}_{size}.tif")]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ))
            r: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {size:6d}²  {mode:6s}  peak RSS {r['peak_mib']:8.0f} MiB   {r['seconds']:7.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time-size", type=int, default=2000)
    p.add_argument("--mem-sizes", default="2000,6000,12000")
    p.add_argument("--stream-only-sizes", default="", help="larger scenes run by the streaming path only (20000)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", help="cpu or cuda (default: cpu for the time part, a GPU where there is one for --feed)")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--skip-time", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--feed", action="store_true", help="benchmark the CPU side of feeding a GPU (only that)")
    p.add_argument("--feed-size", type=int, default=8192)
    p.add_argument("--feed-threads", default="1,2", help="reading threads to compare")
    p.add_argument("--smoke", action="store_true", help="--feed on a 768² scene, once (a quick check)")
    p.add_argument("--child", nargs=3, metavar=("MODE", "SCENE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    tune_malloc()  # as the pipelines do (RS_DEEPLAB_MALLOC_TUNING=0 measures glibc's defaults)
    if args.child:
        child(*args.child, win=512, stride=256, batch=4)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="infer_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch {torch.__version__}, work {work}")
    if args.feed:
        size, repeats = (768, 1) if args.smoke else (args.feed_size, args.repeats)
        dev = pick_device(args.device or "auto")
        feed_part(work, size, repeats, dev, [int(t) for t in args.feed_threads.split(",")])
        return
    if not args.skip_time:
        time_part(work, args.time_size, args.repeats, args.device or "cpu")
    if not args.skip_memory:
        extra = [int(s) for s in args.stream_only_sizes.split(",") if s]
        memory_part(work, [int(s) for s in args.mem_sizes.split(",")], extra)


if __name__ == "__main__":
    main()
