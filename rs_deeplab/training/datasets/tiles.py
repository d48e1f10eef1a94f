"""The tiler's output as a training set: ``index.gpkg`` (layers ``tiles`` and ``classes``) plus crop files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rs_deeplab.cli.errors import InputError
from rs_deeplab.labels.classes import IGNORE_INDEX
from rs_deeplab.training.datasets.base import SegmentationSource, read_pixels


def read_index_tables(index_path: Path) -> tuple[list[dict[str, object]], list[str], list[str | None]]:
    """Rows of the ``tiles`` layer (attributes only), the class names and each class's count column.

    Class ``i`` is named by the ``classes`` row with ``class_id == i``; ids the table skips (labels that never
    use them) are named ``class_<i>`` and have no count column (None).
    """
    import pyogrio
    import pyogrio.errors

    if not index_path.is_file():
        raise InputError(
            f"tiles: index {index_path} not found; run pipelines/tile.py with --out {index_path.parent} first"
        )
    try:
        tiles = pyogrio.read_dataframe(index_path, layer="tiles", read_geometry=False)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        problem = " ".join(str(exc).split())
        raise InputError(
            f"tiles: {index_path} is not a readable tile index ({problem}); run pipelines/tile.py again"
        ) from None
    try:
        classes = pyogrio.read_dataframe(index_path, layer="classes", read_geometry=False)
    except Exception:  # an index without labels has no classes table
        classes = None
    names: list[str] = []
    columns: list[str | None] = []
    if classes is not None:
        cols = classes["column"] if "column" in classes else [None] * len(classes)
        known = {
            int(i): (str(n), None if c is None else str(c))
            for i, n, c in zip(classes["class_id"], classes["name"], cols, strict=True)
            if int(i) != IGNORE_INDEX
        }
        for i in range(max(known, default=-1) + 1):
            name, column = known.get(i, (f"class_{i}", None))
            names.append(name)
            columns.append(column if column in tiles else None)
    return tiles.to_dict("records"), names, columns


BALANCED_SPREAD = 30.0
"""``balanced``'s largest ratio between two classes' weights. New Brunswick's 20x imbalance needed full
``1/frequency`` (limited to 10x, its held-out mIoU fell from 0.511 to 0.471); unlimited, the generated scenes' 120x
imbalance collapsed (a class of 0.3 % of the pixels took the loss; bench/RESULTS.md)."""
WEIGHTINGS: dict[str, dict[str, float]] = {
    "auto": {"power": 0.5},
    "balanced": {"power": 1.0, "spread": BALANCED_SPREAD},
}
"""``train.class_weights`` rules computed from pixel counts: :func:`auto_class_weights`'s arguments for each."""


def auto_class_weights(
    counts: np.ndarray, *, cap: float = 10.0, power: float = 0.5, spread: float | None = None
) -> np.ndarray:
    """Class weights from per-class pixel counts: ``1 / frequency**power``, normalised to mean 1, capped.

    ``power`` 0.5 (``train.class_weights: auto``) softens the imbalance; 1 (``balanced``, with ``spread``
    :data:`BALANCED_SPREAD`) removes it up to a 30-fold imbalance: every class weighs as much in the loss as any
    other, as if the classes were equally frequent, which is what a map of a region whose class mix differs from the
    training tiles' needs (and what mIoU, a mean over classes, rewards); beyond that, the rarer classes weigh 30
    times the most frequent, so that a class of 0.3 % of the pixels does not leave the large classes a few
    hundredths of the loss.

    Args:
        counts: ``(C,)`` pixel counts of each class in the training split.
        cap: Largest weight (after normalising); keeps a class of a few pixels from dominating the loss.
        power: Exponent of the inverse frequency.
        spread: Largest ratio between two classes' weights (before normalising); None: no limit.

    Returns:
        ``(C,)`` float32 weights; the mean over classes with pixels is 1 (before capping), absent classes get 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise InputError(
            "tiles: the training split has no labelled pixels; train.class_weights: auto or balanced needs some"
        )
    weights = np.zeros_like(counts)
    weights[present] = (counts[present] / counts.sum()) ** -power
    if spread is not None:
        weights[present] = np.minimum(weights[present], spread * weights[present].min())
    weights[present] /= weights[present].mean()
    return np.minimum(weights, cap).astype(np.float32)


class TileIndexSource(SegmentationSource):
    """The crops of one split (``train``, ``val``...) listed in a tiler ``index.gpkg``.

    Args:
        root: The tiler's output folder (holding ``index.gpkg``) or the index file itself.
        split: Value of the index's ``split`` column.
        bands: 1-based bands to read from each crop; None reads all.
    """

    def __init__(self, root: str | os.PathLike[str], split: str, bands: list[int] | None = None) -> None:
        base = Path(root)
        index = base if base.suffix == ".gpkg" else base / "index.gpkg"
        rows, names, columns = read_index_tables(index)
        if not names:
            raise InputError(f"tiles: {index} has no class table; tile with labels (--labels or --preset)")
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:
            present = sorted({str(r["split"]) for r in rows})
            raise InputError(f"tiles: split {split!r} is empty in {index}; splits present: {', '.join(present)}")
        unlabeled = [r for r in chosen if not r["label"]]
        if unlabeled:
            raise InputError(f"tiles: {len(unlabeled)} crops of split {split!r} in {index} have no label file")
        folder = index.parent
        super().__init__([folder / str(r["image"]) for r in chosen], [folder / str(r["label"]) for r in chosen], names)
        self.bands = bands
        self.scenes = [str(r["scene"]) for r in chosen]
        """The scene each crop was cut from (the index's ``scene`` column)."""
        self.class_counts = np.array(
            [[r[c] if c is not None else 0 for c in columns] for r in chosen], dtype=np.int64
        ).reshape(len(chosen), len(names))
        """``(crops, classes)`` labelled pixels of each class in each crop, from the index's ``n_<class>`` columns."""

    def read_image(self, index: int) -> np.ndarray:
        """Crop pixels of the selected bands; fails in one line if a band is missing."""
        return read_pixels(self.images[index], self.bands)

    def read_label(self, index: int) -> np.ndarray:
        """Class-index crop (uint8, 255 = ignore)."""
        return read_pixels(self.labels[index], [1])[0]

    def scene_images(self, limit: int = 64) -> list[Path]:
        """The first crop of each scene (a crop carries its scene's pixel size and CRS)."""
        first: dict[str, Path] = {}
        for scene, image in zip(self.scenes, self.images, strict=True):
            first.setdefault(scene, image)
        return list(first.values())[:limit]

    def in_channels(self) -> int:
        """Band count the model sees."""
        return len(self.bands) if self.bands else super().in_channels()
