"""Tiler benchmark: wall time against a one-process floor and a serial per-window baseline (ratios, one run).

Generates four 6000×6000 4-band uint8 scenes with colour-coded labels (a tenth of ISPRS Potsdam), uncompressed
like the originals, then times, crops 512 stride 256, every output written to a fresh folder (tmpfs by default):

- ``floor``: one process reads each image and label whole once, decodes the colours and writes the same crops
  with the same codec and profile: the least work that produces the same files;
- ``serial``: a per-window loop of the kind mmsegmentation's converter uses (read window, decode, write);
- ``cli``: ``pipelines/tile.py``'s ``main`` with the scenes, ``--labels`` and ``--scheme`` (argument parsing,
  logging, the library call: what a user runs, less the interpreter's start and imports); ``cli-gdal`` the same
  with every crop written through GDAL (``crops.TEMPLATE_WRITES = False``: the tiler before issue 25.4);
- ``tiler``: ``tile_scenes`` with its defaults, ``tiler-1`` with one worker, ``tiler-2`` with two (on 2 cores the
  default is two workers, so it is not timed twice), ``threads-2`` (``--threads``) two worker threads.

All variants run in this one process (imports paid once), in a rotated order, ``--repeat`` times; the fastest
run of each is kept. It first times the crop codecs on real crops. Run on a quiet machine:
``PYTHONPATH=$PWD python bench/tile_bench.py`` (``--scene-size 2000`` for a quick look; ``--paired 8`` for
floor/tile.py pairs back to back, when others load the machine).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from rs_deeplab.geo.grid import window_grid
from rs_deeplab.geo.raster import geotiff_profile
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.labels.decoding import decode_label
from rs_deeplab.runtime.cluster import default_workers
from rs_deeplab.tiling import crops
from rs_deeplab.tiling.crops import crop_profiles
from rs_deeplab.tiling.tiler import DEFAULT_COMPRESS, SceneSpec, tile_scenes

SCHEME = SCHEMES["potsdam"]
SIZE, STRIDE = 512, 256


def make_scenes(folder: Path, count: int, side: int) -> list[tuple[Path, Path]]:
    """Write (or reuse) ``count`` blocky synthetic scenes with ISPRS colour labels."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        image, label = folder / f"scene{i}_{side}.tif", folder / f"scene{i}_{side}_label.tif"
        pairs.append((image, label))
        if image.exists() and label.exists():
            continue
        rng = np.random.default_rng(i)
        cells = rng.integers(0, 6, (side // 50 + 1, side // 50 + 1)).astype(np.uint8)
        classes = np.repeat(np.repeat(cells, 50, axis=0), 50, axis=1)[:side, :side]
        base = np.array([[90, 160, 60, 40, 200, 120], [90, 60, 170, 120, 200, 40], [90, 60, 60, 40, 40, 40]])
        image_data = np.empty((4, side, side), np.uint8)
        for b in range(3):
            image_data[b] = base[b][classes] + rng.integers(0, 40, (side, side), dtype=np.uint8)
        image_data[3] = classes * 30 + rng.integers(0, 40, (side, side), dtype=np.uint8)
        transform = Affine(0.05, 0, 368_000.0 + i * side * 0.05, 0, -0.05, 5_808_000.0)
        for path, data in ((image, image_data), (label, SCHEME.encode_colours(classes))):
            profile = geotiff_profile(
                width=side,
                height=side,
                count=data.shape[0],
                dtype="uint8",
                crs="EPSG:32633",
                transform=transform,
                compress=None,
                tiled=False,
            )
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(data)
    return pairs


def _write(path: Path, data: np.ndarray, profile: dict, colormap: dict | None = None) -> None:
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if colormap is not None:
            dst.write_colormap(1, colormap)


def floor(pairs: list[tuple[Path, Path]], out: Path) -> None:
    """Whole reads, one decode, the same crops written once each: the least work a single core can do."""
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for image_path, label_path in pairs:
        with rasterio.open(image_path) as src, rasterio.open(label_path) as lab:
            image, label = src.read(), decode_label(lab.read(), SCHEME)
            image_profile, label_profile = crop_profiles(src, SIZE, DEFAULT_COMPRESS)
            transform = src.transform
        for w in window_grid(src.height, src.width, SIZE, STRIDE):
            t = transform @ Affine.translation(w.col_off, w.row_off)
            sl = np.s_[w.row_off : w.row_off + SIZE, w.col_off : w.col_off + SIZE]
            name = w.name(image_path.stem)
            _write(out / "images" / f"{name}.tif", image[(slice(None), *sl)], dict(image_profile, transform=t))
            _write(
                out / "labels" / f"{name}.tif",
                label[np.newaxis][(slice(None), *sl)],
                dict(label_profile, transform=t),
                SCHEME.colormap(),
            )


def serial(pairs: list[tuple[Path, Path]], out: Path) -> None:
    """Per-window reads of image and label with the scheme's own decoder, as dataset converters do."""
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for image_path, label_path in pairs:
        with rasterio.open(image_path) as src, rasterio.open(label_path) as lab:
            image_profile, label_profile = crop_profiles(src, SIZE, DEFAULT_COMPRESS)
            for w in window_grid(src.height, src.width, SIZE, STRIDE):
                win = Window(w.col_off, w.row_off, SIZE, SIZE)
                image, label = src.read(window=win), SCHEME.decode(lab.read(window=win))
                t = src.transform @ Affine.translation(w.col_off, w.row_off)
                name = w.name(image_path.stem)
                _write(out / "images" / f"{name}.tif", image, dict(image_profile, transform=t))
                _write(
                    out / "labels" / f"{name}.tif",
                    label[np.newaxis],
                    dict(label_profile, transform=t),
                    SCHEME.colormap(),
                )


def cli(pairs: list[tuple[Path, Path]], out: Path, templates: bool = True) -> None:
    """``pipelines/tile.py`` with its defaults, in this process (the interpreter's start and imports paid once);
    ``templates=False`` writes every crop through GDAL (the tiler before issue 25.4; the same files).
    """  # noqa: D205
    from pipelines.tile import main as tile_main

    argv = [
        *(str(i) for i, _ in pairs),
        "--labels",
        *(str(lab) for _, lab in pairs),
        "--scheme",
        "potsdam",
        "--size",
        str(SIZE),
        "--stride",
        str(STRIDE),
        "--out",
        str(out),
        "-q",
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # where the crops went: not the bench's output
        crops.TEMPLATE_WRITES = templates  # forked workers inherit it
        try:
            code = tile_main(argv)
        finally:
            crops.TEMPLATE_WRITES = True
    if code != 0:
        raise RuntimeError(f"tile.py {' '.join(argv)} failed")


def tiler(pairs: list[tuple[Path, Path]], out: Path, workers: int | None, processes: bool = True) -> None:
    tile_scenes(
        [SceneSpec(i, lab) for i, lab in pairs],
        out,
        size=SIZE,
        stride=STRIDE,
        scheme="potsdam",
        workers=workers,
        processes=processes,
        quiet=True,
    )


def codecs(image_path: Path, count: int = 60) -> None:
    """Per-crop write and read time and size of each codec on real crops of one scene (same profiles as tiles)."""
    with rasterio.open(image_path) as src:
        crops = [src.read(window=w.window) for w in window_grid(src.height, src.width, SIZE, STRIDE)[:count]]
        profiles = {c: crop_profiles(src, SIZE, c)[0] for c in (None, "zstd", "lzw", "deflate")}
    folder = image_path.parent.parent / "codecs"
    results = {}
    for codec, profile in profiles.items():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        start = time.perf_counter()
        for i, crop in enumerate(crops):
            _write(folder / f"{i}.tif", crop, dict(profile, transform=Affine(0.05, 0, 0, 0, -0.05, 0)))
        write = (time.perf_counter() - start) / len(crops)
        start = time.perf_counter()
        for i in range(len(crops)):
            with rasterio.open(folder / f"{i}.tif") as src:
                src.read()
        read = (time.perf_counter() - start) / len(crops)
        size = sum(p.stat().st_size for p in folder.iterdir()) / len(crops)
        results[codec or "none"] = (write, read, size)
    shutil.rmtree(folder, ignore_errors=True)
    base = results["none"][0]
    for codec, (write, read, size) in results.items():
        print(
            f"codec {codec:8} write {write * 1e3:6.2f} ms ({write / base:4.1f}x none)  read {read * 1e3:5.2f} ms  "
            f"{size / 2**20:5.2f} MiB/crop"
        )


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (worker processes, once closed)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(name: str, func: Callable[[Path], None], scratch: Path) -> tuple[float, float]:
    """Wall time and CPU seconds (this process and its worker processes) of one run into a fresh folder, deleted
    afterwards. CPU time is what to compare on a machine others load: wall time then says little.
    """  # noqa: D205
    out = scratch / name
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    gc.collect()
    start, cpu = time.perf_counter(), _cpu()
    func(out)
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    shutil.rmtree(out, ignore_errors=True)
    return seconds, cpu


def paired(pairs: list[tuple[Path, Path]], scratch: Path, count: int) -> None:
    """Time ``count`` pairs of floor and tile.py back to back (which goes first alternates); print each pair's
    wall and CPU ratios and their medians.
    """  # noqa: D205
    cli(pairs[:1], scratch / "warm-up")  # imports and first-use costs, as the other variants have them paid
    shutil.rmtree(scratch / "warm-up", ignore_errors=True)
    walls, cpus = [], []
    try:
        for i in range(count):
            order = ["floor", "cli"] if i % 2 == 0 else ["cli", "floor"]
            runs = {
                name: timed(
                    name, (lambda o: floor(pairs, o)) if name == "floor" else (lambda o: cli(pairs, o)), scratch
                )
                for name in order
            }
            walls.append(runs["cli"][0] / runs["floor"][0])
            cpus.append(runs["cli"][1] / runs["floor"][1])
            print(
                f"pair {i + 1} ({' then '.join(order)}): floor {runs['floor'][0]:.2f} s, tile.py "
                f"{runs['cli'][0]:.2f} s: wall ratio {walls[-1]:.2f}, CPU ratio {cpus[-1]:.2f}, load "
                f"{os.getloadavg()[0]:.1f}"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"tile.py / floor over {count} pairs: wall median {np.median(walls):.2f} (min {min(walls):.2f}, max "
        f"{max(walls):.2f}), CPU median {np.median(cpus):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/rs_deeplab_tile_bench"), help="scenes (kept)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("/dev/shm/rs_deeplab_tile_bench") if Path("/dev/shm").is_dir() else None,
        help="crop outputs, deleted after each run; tmpfs by default: on this VM's ext4, creating files right after "
        "thousands were deleted is slow for minutes, which would penalise whichever variant runs next",
    )
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--scene-size", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each variant; the fastest is kept")
    parser.add_argument("--threads", action="store_true", help="also time 2 local workers as threads")
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="N",
        help="only time N pairs of floor and tile.py back to back (order alternating), print "
        "the median of their ratios (steadier than fastest runs on a loaded machine)",
    )
    args = parser.parse_args()
    pairs = make_scenes(args.dir / "scenes", args.scenes, args.scene_size)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    scratch = args.out_dir or args.dir / "out"
    if args.paired:
        paired(pairs, scratch, args.paired)
        return
    codecs(pairs[0][0])
    variants: dict[str, Callable[[Path], None]] = {
        "floor": lambda o: floor(pairs, o),
        "serial": lambda o: serial(pairs, o),
        "cli": lambda o: cli(pairs, o),
        "cli-gdal": lambda o: cli(pairs, o, templates=False),
        "tiler": lambda o: tiler(pairs, o, None),
        "tiler-1": lambda o: tiler(pairs, o, 1),
    }
    if default_workers() != 2:  # on 2 cores the default already is 2 workers
        variants["tiler-2"] = lambda o: tiler(pairs, o, 2)
    if args.threads:
        variants["threads-2"] = lambda o: tiler(pairs, o, 2, processes=False)
    runs: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        names = list(variants)
        for r in range(args.repeat):  # rotate the order: a run is slower right after some others (page cache state)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                wall, cpu = timed(name, variants[name], scratch)
                runs[name].append(wall)
                cpus[name].append(cpu)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best = {name: min(times) for name, times in runs.items()}
    crops = len(window_grid(args.scene_size, args.scene_size, SIZE, STRIDE)) * len(pairs)
    print(f"{len(pairs)} scenes {args.scene_size}², {crops} crops {SIZE}/{STRIDE}, codec {DEFAULT_COMPRESS or 'none'}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    two = best.get("tiler-2", best["tiler"])
    print(f"tile.py (default: {default_workers()} workers) / floor: {best['cli'] / best['floor']:.2f}  (target <= 0.6)")
    print(f"tiler (default) / floor          : {best['tiler'] / best['floor']:.2f}")
    print(f"tile.py, crops through GDAL / floor: {best['cli-gdal'] / best['floor']:.2f}  (before issue 25.4)")
    print(f"tiler --workers 1 / floor        : {best['tiler-1'] / best['floor']:.2f}  (target <= 1.2)")
    print(f"tiler (default) / serial window  : {best['tiler'] / best['serial']:.2f}  (target < 1)")
    print(f"speed-up 1 -> 2 workers           : {best['tiler-1'] / two:.2f}x")
    print(f"floor / serial window            : {best['floor'] / best['serial']:.2f}")
    print("seconds, fastest (all runs); CPU seconds of this process and its workers, least (all runs):")
    for name, times in runs.items():
        print(
            f"  {name:9} {best[name]:6.2f}  ({' '.join(f'{t:.2f}' for t in times)})   CPU {min(cpus[name]):6.2f}  "
            f"({' '.join(f'{t:.2f}' for t in cpus[name])})"
        )
    least = {name: min(times) for name, times in cpus.items()}
    print(
        f"CPU seconds / floor's: tile.py {least['cli'] / least['floor']:.2f}, tile.py through GDAL "
        f"{least['cli-gdal'] / least['floor']:.2f}, tiler-1 {least['tiler-1'] / least['floor']:.2f}"
    )


if __name__ == "__main__":
    main()
