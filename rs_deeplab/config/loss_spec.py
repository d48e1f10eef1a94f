"""The loss spec a config names: a sum of terms ``[weight*]name`` (``ce``, ``ce+dice``, ``ce+0.5*dice``).

Plain string parsing, without torch, so the config can validate a spec; :mod:`rs_deeplab.training.losses` builds
the loss from it.
"""

from __future__ import annotations

import re

LOSS_NAMES = ("ce", "dice", "lovasz", "focal")
"""Loss terms a spec may combine."""
_TERM = re.compile(r"^(?:(?P<w>\d+(?:\.\d*)?|\.\d+)\*)?(?P<name>[a-z]+)$")


def parse_loss(spec: str) -> list[tuple[float, str]]:
    """``"ce+0.5*dice"`` → ``[(1.0, "ce"), (0.5, "dice")]``.

    Raises:
        ValueError: A term is not ``[weight*]name`` with a known name and a positive weight, or a name repeats.
    """
    allowed = f"terms [weight*]name, each name once, weights > 0, names {', '.join(LOSS_NAMES)}"
    terms: list[tuple[float, str]] = []
    for raw in spec.replace(" ", "").split("+"):
        match = _TERM.match(raw)
        if match is None or match["name"] not in LOSS_NAMES:
            raise ValueError(f"loss term {raw!r} is not valid; allowed: {allowed} (e.g. ce, ce+dice, ce+0.5*dice)")
        weight = float(match["w"]) if match["w"] else 1.0
        if weight <= 0:
            raise ValueError(f"loss term {raw!r} has weight 0; allowed: {allowed}")
        terms.append((weight, match["name"]))
    names = [n for _, n in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"loss {spec!r} names a term twice; allowed: {allowed}")
    return terms
