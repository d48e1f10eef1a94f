"""Durations as users write them (``15m``, ``1h30m``, ``90s``): parsed to seconds and written back."""

from __future__ import annotations

import math
import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd])", re.IGNORECASE)


def parse_duration(value: str | float | int) -> float:
    """Seconds of a duration: ``15m``, ``1h30m``, ``90s``, ``2.5h``, or a plain number of seconds.

    Raises:
        ValueError: Not a duration, or not longer than zero.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 15m, 1h30m or 900s")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or _DURATION.sub("", text).strip():
                raise ValueError(f"{value!r} is not a duration; write e.g. 15m, 1h30m or 900s") from None
            seconds = sum(float(n) * _UNITS[u.lower()] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a duration longer than zero; write e.g. 15m, 1h30m or 900s")
    return seconds


def duration_text(seconds: float) -> str:
    """``15m``, ``1h30m``, ``45s``: a duration as a user writes it (rounded to seconds)."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "m": 2**20,
    "mb": 2**20,
    "g": 2**30,
    "gb": 2**30,
    "t": 2**40,
    "tb": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(value: str | float | int) -> int:
    """Bytes of a memory size as users write it: ``8GB``, ``512MB``, ``1.5g``, or a plain number of bytes.

    Raises:
        ValueError: Not a size, or not larger than zero.
    """
    match = None if isinstance(value, bool) else _SIZE.fullmatch(str(value))
    unit = match[2].lower() if match else ""
    if match is None or unit not in _SIZE_UNITS or float(match[1]) <= 0:
        raise ValueError(f"{value!r} is not a memory size; write e.g. 8GB, 512MB or 2.5GiB")
    return int(float(match[1]) * _SIZE_UNITS[unit])
