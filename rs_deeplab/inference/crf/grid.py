"""The DenseCRF search grid: ranges, kernel settings (the paper's fixed smoothness kernel), crop choice, ranking.

Plain values and numpy only; :mod:`rs_deeplab.inference.crf.search` caches probabilities and scores the settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rs_deeplab.cli.errors import InputError
from rs_deeplab.evaluation.metrics import scores
from rs_deeplab.inference.crf.dense import CRFSettings

NO_CRF = "no CRF"
DEFAULT = "default"
SELECTION_SEED = 0
"""Seed of the permutation whose first ``images`` crops are searched on (the rest stay held out)."""


@dataclass(frozen=True)
class GridPoint:
    """One appearance-kernel setting: weight ``w1``, spatial ``sxy`` (σα) and colour ``srgb`` (σβ) widths."""

    w1: float
    sxy: float
    srgb: float
    iterations: int

    @property
    def key(self) -> str:
        """A stable name in the progress file."""
        return f"w1={self.w1:g},sxy={self.sxy:g},srgb={self.srgb:g},it={self.iterations}"

    def settings(self) -> CRFSettings:
        """The CRF settings: this appearance kernel, the paper's fixed smoothness kernel (w2 = 3, σγ = 3)."""
        return CRFSettings(
            gaussian_sxy=3.0,
            gaussian_compat=3.0,
            bilateral_sxy=self.sxy,
            bilateral_srgb=self.srgb,
            bilateral_compat=self.w1,
            iterations=self.iterations,
        )


def parse_range(text: str, option: str) -> tuple[float, ...]:
    """``a`` (one value), ``a:b`` (a..b in steps of 1, both ends included) or ``a:b:step``.

    Raises:
        InputError: Not numbers, a reversed range (``b < a``), a step that is not positive.
    """
    if not text.strip():
        raise InputError(f"{option} '': gives no values, so the CRF grid would have no points; e.g. {option} 3:6")
    parts = text.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"{option} {text!r}: expected A, A:B or A:B:STEP with numbers, e.g. 30:100:10") from None
    if len(numbers) > 3 or not all(np.isfinite(numbers)):
        raise InputError(f"{option} {text!r}: expected A, A:B or A:B:STEP with numbers, e.g. 30:100:10")
    start = numbers[0]
    stop = numbers[1] if len(numbers) > 1 else start
    step = numbers[2] if len(numbers) > 2 else 1.0
    if step <= 0:
        raise InputError(f"{option} {text!r}: the step must be positive")
    if stop < start:
        raise InputError(
            f"{option} {text!r}: the range is reversed ({stop:g} < {start:g}); write it as {stop:g}:{start:g}"
        )
    count = int(np.floor((stop - start) / step + 1e-9)) + 1
    return tuple(round(start + i * step, 10) for i in range(count))


def make_grid(w1: Sequence[float], sxy: Sequence[float], srgb: Sequence[float], iterations: int) -> list[GridPoint]:
    """Every combination, each checked as CRF settings.

    Raises:
        InputError: The grid is empty, iterations < 1, or a value is not a valid CRF setting (e.g. σ ≤ 0).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"--iterations {iterations}: must be a whole number of at least 1")
    points = [GridPoint(a, b, c, iterations) for a in w1 for b in sxy for c in srgb]
    if not points:
        raise InputError("the CRF grid has no points; give each of --w1, --sxy and --srgb at least one value")
    for p in points:
        p.settings()  # raises for sxy/srgb <= 0 or w1 < 0
    return points


def choose_images(total: int, count: int, seed: int = SELECTION_SEED) -> list[int]:
    """The ``count`` crops searched on: the first of a seeded permutation of ``total``, in index order.

    Raises:
        InputError: ``count`` is below 1 or above ``total``.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"--images {count}: must be a whole number of at least 1")
    if count > total:
        raise InputError(f"--images {count}: the split has only {total} crops; ask for at most {total}")
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(total)[:count])


@dataclass(frozen=True)
class Setting:
    """A row of the ranked table: a grid point or a reference (no CRF, the default kernels)."""

    name: str
    crf: CRFSettings | None

    @property
    def key(self) -> str:
        """Its key in the progress file."""
        if self.crf is None:
            return NO_CRF
        p = self.crf
        return (
            f"{self.name}:w1={p.bilateral_compat:g},sxy={p.bilateral_sxy:g},srgb={p.bilateral_srgb:g},"
            f"w2={p.gaussian_compat:g},sg={p.gaussian_sxy:g},it={p.iterations}"
        )


def settings(points: Sequence[GridPoint]) -> list[Setting]:
    """The reference rows (no CRF; the default kernels infer.py uses without a search) and the grid."""
    return [Setting(NO_CRF, None), Setting(DEFAULT, CRFSettings())] + [Setting("grid", p.settings()) for p in points]


def ranked_rows(todo: Sequence[Setting], done: dict[str, list[list[int]]]) -> list[dict[str, Any]]:
    """One row per setting with its scores, best mIoU first."""
    rows = []
    for s in todo:
        result = scores(np.asarray(done[s.key]))
        row: dict[str, Any] = {
            "setting": s.name,
            "mIoU": result.miou,
            "mF1": result.mean_f1,
            "OA": result.overall_accuracy,
            "pixels": result.pixels,
        }
        row["crf"] = None if s.crf is None else s.crf.kernels()
        rows.append(row)
    rows.sort(key=lambda r: -r["mIoU"] if np.isfinite(r["mIoU"]) else 0.0)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def markdown(rows: Sequence[dict[str, Any]], images: int) -> str:
    """The ranked table: rank, setting, the kernels (w1, σα, σβ, w2, σγ), iterations and the scores in %."""
    lines = [
        f"CRF kernels ranked by mIoU over {images} validation crop(s)",
        "",
        "| rank | setting | w1 | σα | σβ | w2 | σγ | iterations | mIoU | mF1 | OA |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["crf"]
        kernels = (
            ["–"] * 6
            if c is None
            else [
                f"{c[k]:g}"
                for k in (
                    "bilateral_compat",
                    "bilateral_sxy",
                    "bilateral_srgb",
                    "gaussian_compat",
                    "gaussian_sxy",
                    "iterations",
                )
            ]
        )
        name = f"**{r['setting']}**" if r["setting"] in (NO_CRF, DEFAULT) else r["setting"]
        scores_pc = [f"{100 * r[k]:.2f}" for k in ("mIoU", "mF1", "OA")]
        lines.append(f"| {r['rank']} | {name} | " + " | ".join(kernels + scores_pc) + " |")
    return "\n".join(lines) + "\n"
