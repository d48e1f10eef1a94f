"""Merge the pieces of regions cut by block seams, so block-wise output equals whole-raster output.

Blocks are visited row by row. A piece is *open* while it touches a seam whose block on the other side has not
been read yet. When a block is read, the pixels along its left and top seams are matched with the pixels of the
blocks already read: two pieces merge when they hold the same class on the two sides of one pixel edge of the
seam (4-connectivity, as ``rasterio.features.shapes``; pieces meeting only at a corner never merge). Pieces are
grouped with a union-find, so regions joined only through other blocks, or crossing many seams, come out as one.
A group is emitted, as the union of its pieces, as soon as none of its pieces waits for an unread block; memory
therefore holds the current block plus the open pieces, never the whole raster.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import shapely

from rs_deeplab.vectorize.stitch import stitch_many

SEAM_SIDES = ("left", "right", "top", "bottom")


class SeamMerger:
    """Union-find over open pieces; emits whole regions (in pixel coordinates) once all their seams are read.

    Piece geometries must be in global pixel coordinates so seam vertices of neighbouring pieces are identical.

    Args:
        block_size: Block edge in pixels (seams lie on its multiples).
        validate: Check stitched regions for validity (after simplification), see
            :func:`~rs_deeplab.vectorize.stitch.stitch`.
        to_crs: Maps ``(n, 2)`` pixel coordinates to the output's: regions are emitted mapped.
    """

    def __init__(
        self, block_size: int, *, validate: bool = False, to_crs: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> None:
        self._grid = block_size
        self._validate = validate
        self._to_crs = to_crs
        self._geom: dict[int, shapely.Geometry] = {}
        self._value: dict[int, int] = {}
        self._parent: dict[int, int] = {}
        self._members: dict[int, list[int]] = {}
        self._pending: dict[int, int] = {}
        self._right: np.ndarray | None = None
        self._bottom: dict[int, np.ndarray] = {}
        self._next_id = 0
        self.merged = 0
        """Number of emitted regions that were assembled from more than one piece."""

    @property
    def open_pieces(self) -> int:
        """Number of pieces still waiting for a neighbouring block."""
        return len(self._geom)

    def add_block(
        self, block_col: int, geoms: np.ndarray, values: np.ndarray, owners: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Register the open pieces of the next block (row-major order) and return the regions now complete.

        Args:
            block_col: Column index of the block in the block grid.
            geoms: Open pieces of the block (pixel coordinates), i.e. those touching an internal seam.
            values: Class id of each piece.
            owners: For each internal side of the block (``left``, ``right``, ``top``, ``bottom``), the index into
                ``geoms`` of the piece owning each pixel along that side, -1 where none.

        Returns:
            Class ids and geometries (pixel coordinates, or mapped by ``to_crs``) of the regions completed by
            this block.
        """
        base = self._next_id
        ids = np.arange(base, base + len(geoms), dtype=np.int64)
        self._next_id += len(geoms)
        glob = {side: np.where(own >= 0, own + base, -1) for side, own in owners.items()}
        pending = np.zeros(len(geoms), dtype=np.int64)
        for side in ("right", "bottom"):
            if side in glob:
                pending[_unique_ids(glob[side]) - base] += 1
        for k, pid in enumerate(ids.tolist()):
            self._geom[pid], self._value[pid] = geoms[k], int(values[k])
            self._parent[pid], self._members[pid], self._pending[pid] = pid, [pid], int(pending[k])
        touched = set(ids.tolist())
        if "left" in glob:
            if self._right is None:
                raise RuntimeError("blocks must be added in row-major order")
            touched |= self._stitch(self._right, glob["left"])
        if "top" in glob:
            touched |= self._stitch(self._bottom.pop(block_col), glob["top"])
        self._right = glob.get("right")
        if "bottom" in glob:
            self._bottom[block_col] = glob["bottom"]
        return self._emit({self._find(t) for t in touched})

    def _find(self, pid: int) -> int:
        parent = self._parent
        root = pid
        while parent[root] != root:
            root = parent[root]
        while parent[pid] != root:
            parent[pid], pid = root, parent[pid]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if len(self._members[ra]) < len(self._members[rb]):
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._members[ra].extend(self._members.pop(rb))
        self._pending[ra] += self._pending.pop(rb)

    def _stitch(self, before: np.ndarray, after: np.ndarray) -> set[int]:
        """Merge pieces facing each other across one seam; mark the seam as read for the earlier pieces."""
        both = (before >= 0) & (after >= 0)
        if both.any():
            pairs = np.unique(np.stack((before[both], after[both]), axis=1), axis=0)
            for a, b in pairs.tolist():
                if self._value[a] == self._value[b]:
                    self._union(a, b)
        roots: set[int] = set()
        for pid in _unique_ids(before).tolist():
            root = self._find(pid)
            self._pending[root] -= 1
            roots.add(root)
        return roots

    def _emit(self, roots: set[int]) -> tuple[np.ndarray, np.ndarray]:
        values: list[int] = []
        groups: list[list[shapely.Geometry]] = []
        for root in roots:
            if self._pending[root] > 0:
                continue
            members = self._members.pop(root)
            del self._pending[root]
            parts = [self._geom.pop(pid) for pid in members]
            for pid in members:
                del self._parent[pid]
            values.append(self._value[root])
            for pid in members:
                del self._value[pid]
            groups.append(parts)
        return np.asarray(values, dtype=np.int64), self._dissolve(groups)

    def _dissolve(self, groups: list[list[shapely.Geometry]]) -> np.ndarray:
        """One geometry per group: the piece itself, or the pieces stitched together along their seams."""
        out = np.empty(len(groups), dtype=object)
        several = [k for k, parts in enumerate(groups) if len(parts) > 1]
        single = [k for k, parts in enumerate(groups) if len(parts) == 1]
        if single:
            alone = np.array([groups[k][0] for k in single], dtype=object)
            out[single] = alone if self._to_crs is None else shapely.transform(alone, self._to_crs)
        if several:
            self.merged += len(several)
            pieces = [np.asarray(groups[k], dtype=object) for k in several]
            out[several] = stitch_many(pieces, self._grid, validate=self._validate, to_crs=self._to_crs)
        return out


def _unique_ids(owner: np.ndarray) -> np.ndarray:
    ids = np.unique(owner)
    return ids[ids >= 0]
