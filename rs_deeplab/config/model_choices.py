"""What the configuration checks need to know about the models, without torch.

Each model's heads with their default output strides, and the rule for multi-scale (MSC) input scales.
:mod:`rs_deeplab.config.schema` validates with them on machines without torch; :mod:`rs_deeplab.models` builds its
``MODELS`` table and checks ``build_model(msc=...)`` from the same data, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_OUTPUT_STRIDES: dict[str, dict[str, int]] = {
    "deeplabv1": {"paper": 8},
    "deeplabv2": {"paper": 8},
    "deeplabv3": {"paper": 16, "mmseg": 8},
    "deeplabv3plus": {"paper": 16, "mmseg": 8},
}
"""Model name → its heads (``paper`` first) → the head's default output stride."""


def msc_problem(scales: Sequence[float]) -> str | None:
    """What is wrong with a list of MSC scales (positive, distinct, 1.0 among them, at least two), or None."""
    values = [float(s) for s in scales]
    if len(values) < 2:
        return f"give at least two scales, 1.0 among them, e.g. [1.0, 0.75, 0.5] (null turns MSC off), got {values}"
    bad = [s for s in values if not s > 0 or s == float("inf")]
    if bad:
        return f"scales must be positive finite numbers, got {bad[0]}; e.g. [1.0, 0.75, 0.5]"
    if len(set(values)) != len(values):
        return f"scales must be distinct, got {values}"
    if 1.0 not in values:
        return f"scales must include 1.0 (the scale of the output), got {values}; e.g. [1.0, 0.75, 0.5]"
    return None
