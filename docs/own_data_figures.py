"""Draw the pictures of ``docs/own_data.md`` from the outputs of its commands.

Run the tutorial's commands in a folder, then ``python docs/own_data_figures.py FOLDER`` there: it writes
``docs/own_data_*.png`` (the labelled scene with its polygons, the tile index over the scenes, the training curves
and the new scene's prediction with its building polygons).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

DOCS = Path(__file__).resolve().parent
SCENES = "my_data/4_Ortho_RGBIR/top_potsdam_{}_RGBIR.tif"


def rgb(path: Path) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The first three bands as a display image, and the raster's extent (left, right, bottom, top)."""
    with rasterio.open(path) as src:
        image = src.read([1, 2, 3]).astype(np.float32)
        b = src.bounds
    lo, hi = np.percentile(image, (1, 99))
    shown = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.moveaxis(shown, 0, -1), (b.left, b.right, b.bottom, b.top)


def class_colours(path: Path) -> tuple[list[str], dict[str, tuple[float, float, float]]]:
    """Class names (``CLASS_NAMES`` tag) and their colours (the raster's colour table) of a label raster."""
    with rasterio.open(path) as src:
        names = json.loads(src.tags()["CLASS_NAMES"])
        table = src.colormap(1)
    return names, {n: (table[i][0] / 255, table[i][1] / 255, table[i][2] / 255) for i, n in enumerate(names)}


def main() -> None:
    """Draw the four pictures from the tutorial folder given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the tutorial's commands ran")
    parser.add_argument("--docs", type=Path, default=DOCS, help="where to write the PNGs (default: docs/)")
    args = parser.parse_args()
    work, docs = args.folder, args.docs
    docs.mkdir(parents=True, exist_ok=True)
    names, colours = class_colours(work / "my_landcover.tif")
    legend = [Patch(color=colours[n], label=n) for n in names]

    # 1. what the user starts from: a scene and polygons drawn over it
    image, extent = rgb(work / SCENES.format("2_13"))
    polygons = gpd.read_file(work / "my_data" / "landcover.gpkg")
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    axes[0].imshow(image, extent=extent)
    axes[0].set_title("my_data/…/top_potsdam_2_13_RGBIR.tif")
    axes[1].imshow(image, extent=extent)
    inside = polygons.cx[extent[0] : extent[1], extent[2] : extent[3]]
    inside.plot(
        ax=axes[1],
        color=[colours.get(c, (0, 0, 0)) for c in inside.class_name],
        alpha=0.55,
        edgecolor="black",
        linewidth=0.4,
    )
    axes[1].set_xlim(extent[0], extent[1])
    axes[1].set_ylim(extent[2], extent[3])
    axes[1].set_title("my_data/landcover.gpkg (attribute class_name)")
    axes[1].legend(handles=legend, loc="lower left", fontsize=7, framealpha=0.9)
    finish(fig, axes, docs / "own_data_input.png")

    # 2. the tile index: crops of both scenes, coloured by split
    tiles = gpd.read_file(work / "my_tiles" / "index.gpkg", layer="tiles")
    fig, ax = plt.subplots(figsize=(5.6, 9))
    for scene in ("2_13", "2_14"):
        img, ext = rgb(work / SCENES.format(scene))
        ax.imshow(img, extent=ext)
    for split, colour in (("train", "tab:blue"), ("val", "tab:orange")):
        part = tiles[tiles.split == split]
        part.dissolve().plot(ax=ax, facecolor=colour, alpha=0.35, edgecolor=colour, linewidth=1.5)
    handles = [
        Patch(color=c, alpha=0.5, label=f"{s}: {(tiles.split == s).sum()} crops")
        for s, c in (("train", "tab:blue"), ("val", "tab:orange"))
    ]
    ax.legend(handles=handles, loc="lower left")
    ax.set_title("my_tiles/index.gpkg: 128 px crops,\n25 % of the area held out in whole blocks")
    finish(fig, [ax], docs / "own_data_tiles.png")

    # 3. training curves, as train.py draws them
    shutil.copyfile(work / "runs" / "own_data" / "curves.png", docs / "own_data_curves.png")

    # 4. the new scene, its predicted labels and the cleaned building polygons
    image, extent = rgb(work / SCENES.format("3_10"))
    with rasterio.open(work / "my_landcover.tif") as src:
        labels = src.read(1)
    lut = ListedColormap([colours[n] for n in names])
    buildings = gpd.read_file(work / "my_buildings.gpkg")
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    axes[0].imshow(image, extent=extent)
    axes[0].set_title("new scene (top_potsdam_3_10)")
    shown = np.ma.masked_equal(labels, 255)
    axes[1].imshow(shown, extent=extent, cmap=lut, vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
    axes[1].set_title("my_landcover.tif")
    axes[1].legend(handles=legend, loc="lower left", fontsize=7, framealpha=0.9)
    axes[2].imshow(image, extent=extent)
    buildings.boundary.plot(ax=axes[2], color="yellow", linewidth=1.0)
    axes[2].set_xlim(extent[0], extent[1])
    axes[2].set_ylim(extent[2], extent[3])
    axes[2].set_title(f"my_buildings.gpkg: {len(buildings)} building polygons")
    finish(fig, axes, docs / "own_data_result.png")


def finish(fig: plt.Figure, axes: object, path: Path) -> None:
    """Hide the map axes' ticks and write the figure."""
    for ax in axes:  # type: ignore[attr-defined]
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(path)


if __name__ == "__main__":
    main()
