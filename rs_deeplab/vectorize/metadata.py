"""The class selection of a vectorize run; the class-name tags of label rasters."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rs_deeplab.cli.errors import InputError
from rs_deeplab.labels.class_names import CLASS_NAMES_TAG, class_name, class_names_tag, read_class_names
from rs_deeplab.labels.classes import IGNORE_INDEX

__all__ = ["CLASS_NAMES_TAG", "ClassSelection", "class_name", "class_names_tag", "read_class_names"]


@dataclass(frozen=True)
class ClassSelection:
    """Which pixel values become polygons.

    Attributes:
        names: Class names in index order (may be empty).
        ignored: Values never polygonized (255 and the raster's nodata).
        include: Only these values, or None for every value not ignored or excluded.
        exclude: Values left out.
    """

    names: tuple[str, ...]
    ignored: frozenset[int]
    include: frozenset[int] | None
    exclude: frozenset[int]

    def keeps(self, value: int) -> bool:
        """Whether pixels of ``value`` become polygons."""
        if value in self.ignored or value in self.exclude:
            return False
        return self.include is None or value in self.include

    def mask(self, data: np.ndarray) -> np.ndarray | None:
        """Boolean array of pixels to polygonize, or None when every pixel is kept."""
        dropped = sorted(self.ignored | self.exclude)
        if self.include is None and len(dropped) <= 2:  # plain comparisons beat a lookup table
            keep = data != dropped[0]
            for value in dropped[1:]:
                keep &= data != value
        elif data.dtype == np.uint8:
            keep = self._byte_lut[data]
        else:
            keep = ~np.isin(data, np.array(dropped, dtype=np.int64))
            if self.include is not None:
                keep &= np.isin(data, np.fromiter(self.include, dtype=np.int64))
        return None if keep.all() else keep

    def keeps_array(self, values: np.ndarray) -> np.ndarray:
        """Vectorized :meth:`keeps` for an array of class values."""
        if len(values) and values.min() >= 0 and values.max() < 256:
            return self._byte_lut[values]
        uniq, inverse = np.unique(values, return_inverse=True)
        return np.array([self.keeps(int(v)) for v in uniq], dtype=bool)[inverse]

    @functools.cached_property
    def _byte_lut(self) -> np.ndarray:
        return np.array([self.keeps(v) for v in range(256)], dtype=bool)

    def name(self, value: int) -> str:
        """Class name of ``value``."""
        return class_name(self.names, value)


def _parse_classes(tokens: Iterable[str | int], names: Sequence[str], option: str) -> frozenset[int]:
    """Map class names (or numeric ids) to ids; an unknown name fails listing the valid ones."""
    ids: set[int] = set()
    for token in tokens:
        if isinstance(token, int) or (isinstance(token, str) and token.strip().isdigit()):
            ids.add(int(token))
            continue
        key = str(token).strip()
        if key in names:
            ids.add(names.index(key))
        elif key.startswith("class_") and key[6:].isdigit():
            ids.add(int(key[6:]))
        else:
            valid = ", ".join(names) if names else "none recorded in the raster"
            raise InputError(
                f"unknown class {key!r} in {option}; valid names: {valid} (numeric class ids are accepted too)"
            )
    return frozenset(ids)


def select_classes(
    names: Sequence[str],
    *,
    nodata: float | None,
    classes: Iterable[str | int] | None = None,
    exclude: Iterable[str | int] | None = None,
) -> ClassSelection:
    """Build the :class:`ClassSelection` for a raster.

    Args:
        names: Class names in index order.
        nodata: The raster's nodata value, never polygonized (255 never is either).
        classes: Keep only these classes (names or ids); None keeps all.
        exclude: Leave out these classes (names or ids).

    Raises:
        InputError: A class name is unknown; the message lists the valid names.
    """
    ignored = {IGNORE_INDEX}
    if nodata is not None and float(nodata).is_integer():
        ignored.add(int(nodata))
    include = None if classes is None else _parse_classes(classes, names, "classes")
    dropped = frozenset() if exclude is None else _parse_classes(exclude, names, "exclude")
    return ClassSelection(tuple(names), frozenset(ignored), include, dropped)
