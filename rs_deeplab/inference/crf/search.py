"""DenseCRF kernels found by cross-validation (DeepLab v1; v2 section 4.1): "learn the DCNN first, the CRF next".

The model's probabilities are computed once per validation crop and cached (uint8-quantised, with the crop's
8-bit colour image and its label, one ``.npz`` per crop); every kernel setting of a grid is then scored by mIoU
(confusion matrices summed over the crops), one Dask task per setting, each holding one crop at a time. Finished
settings are recorded in a file replaced atomically, so a re-run skips them and the cache. The smoothness kernel
stays fixed (``w2`` = 3, ``σγ`` = 3, as in the paper); the appearance kernel's weight ``w1`` and widths ``σα``
(pixels) and ``σβ`` (colour) are searched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rs_deeplab.cli.console import progress
from rs_deeplab.cli.errors import InputError
from rs_deeplab.evaluation.metrics import confusion_matrix
from rs_deeplab.inference.crf.dense import CRFSettings, colour_image
from rs_deeplab.inference.crf.grid import DEFAULT, NO_CRF, GridPoint, Setting, markdown, ranked_rows, settings
from rs_deeplab.runtime.cluster import Cluster, open_cluster

log = logging.getLogger("rs_deeplab.inference")

CACHE_DIR = "crf_cache"
DONE_FILE = "crf_search_done.json"
TABLE_MD = "crf_search.md"
TABLE_JSON = "crf_search.json"


def quantise(probs: np.ndarray) -> np.ndarray:
    """Probabilities as uint8 (0..255): 1/4 of a float16 cache, ample for the CRF's ``-log p``."""
    return np.clip(np.rint(probs * 255), 0, 255).astype(np.uint8)


def dequantise(q: np.ndarray) -> np.ndarray:
    """uint8 probabilities back to float32 that sum to 1 over classes (a tiny floor keeps ties and zeros finite)."""
    probs = q.astype(np.float32) + 0.5
    return probs / probs.sum(axis=0, keepdims=True)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` under a temporary name, then rename it: a crash never leaves a half-written crop."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz")
    try:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` through a temporary sibling and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


Sample = tuple[np.ndarray, np.ndarray]
"""A crop's ``(bands, H, W)`` image and ``(H, W)`` uint8 label."""


@torch.no_grad()
def cache_probabilities(
    model: torch.nn.Module,
    read: Callable[[int], Sample],
    indices: Sequence[int],
    folder: Path,
    *,
    normalise: Callable[[np.ndarray], torch.Tensor],
    band_ranges: Sequence[tuple[float, float]] | None,
    device: torch.device,
    quiet: bool = False,
) -> tuple[list[Path], int]:
    """Cache each crop's probabilities, colour image and label as ``folder/<index>.npz``; existing ones are kept.

    Returns:
        The cache files (in ``indices`` order) and how many were computed now.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i:06d}.npz" for i in indices]
    computed = 0
    model.eval()
    for i, path in progress(list(zip(indices, files, strict=True)), desc="probabilities", unit="crop", quiet=quiet):
        if path.is_file():
            continue
        image, label = read(i)
        logits = model(normalise(image)[None].to(device))
        probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
        rgb = colour_image(image, None, band_ranges=band_ranges).transpose(2, 0, 1)
        _save_npz(path, probs=quantise(probs), rgb=np.ascontiguousarray(rgb), label=label.astype(np.uint8))
        computed += 1
    return files, computed


def score_setting(files: Sequence[str], kernels: dict[str, Any] | None, num_classes: int) -> np.ndarray:
    """Confusion matrix of one CRF setting's kernels (None: the cached probabilities as they are) over the cached crops.

    A Dask task: plain paths and numbers in, one crop in memory at a time. A crop's cached colour image is its three
    bands, the default :attr:`CRFSettings.bands`.
    """
    crf = None if kernels is None else CRFSettings(**kernels)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for name in files:
        with np.load(name) as z:
            probs, rgb, label = dequantise(z["probs"]), z["rgb"], z["label"]
        if crf is not None:
            probs = crf.refine(probs, rgb)
        cm += confusion_matrix(probs.argmax(axis=0), label, num_classes)
    return cm


def _pending(
    todo: Sequence[Setting], files: Sequence[str], num_classes: int, executor: Any
) -> Iterator[tuple[Setting, np.ndarray]]:
    """Yield each setting with its confusion matrix as it finishes (local serial run or Dask)."""
    args = [(s, None if s.crf is None else s.crf.kernels()) for s in todo]
    if executor.client is None:
        for s, kernels in args:
            yield s, score_setting(files, kernels, num_classes)
        return
    watch = executor.watch()  # a worker killed mid-task is survived; none left, or the scheduler lost: one line
    run = uuid.uuid4().hex[:8]
    futures = {
        executor.client.submit(score_setting, list(files), kernels, num_classes, key=f"crf-{run}-{i}", pure=False): s
        for i, (s, kernels) in enumerate(args)
    }
    try:
        for future in watch.as_completed(list(futures)):
            yield futures[future], watch.result(future)
    finally:
        watch.cancel(list(futures))


def score_settings(
    todo: Sequence[Setting],
    files: Sequence[Path],
    num_classes: int,
    done_file: Path,
    fingerprint: str,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    quiet: bool = False,
    cluster: Cluster | None = None,
) -> tuple[dict[str, list[list[int]]], int]:
    """Confusion matrices of every setting; finished ones are read from (and new ones added to) ``done_file``.

    ``cluster`` (already open) runs the settings; without it one is opened from ``workers`` and ``scheduler``
    when a setting is left to score.

    Returns:
        ``{setting key: confusion matrix}`` and how many settings were computed now.
    """
    done: dict[str, list[list[int]]] = {}
    if done_file.is_file():
        try:
            record = json.loads(done_file.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("fingerprint") == fingerprint:
            done = dict(record.get("points", {}))
    pending = [s for s in todo if s.key not in done]
    if pending:
        paths = [str(f.resolve()) for f in files]  # absolute: a scheduler's workers run elsewhere
        opened = contextlib.nullcontext(cluster) if cluster is not None else open_cluster(workers, scheduler)
        with opened as executor:
            log.info("scoring %d CRF setting(s) on %d crops with %s", len(pending), len(files), executor.description)
            results = _pending(pending, paths, num_classes, executor)
            for setting, cm in progress(results, total=len(pending), desc="CRF grid", unit="setting", quiet=quiet):
                done[setting.key] = cm.tolist()
                write_json_atomic(done_file, {"fingerprint": fingerprint, "points": done})
    return done, len(pending)


def record_path(model_path: Path) -> Path:
    """Where the searched CRF setting of a model file is recorded: ``<stem>.crf.json`` beside it."""
    return model_path.with_name(f"{model_path.stem}.crf.json")


def model_stamp(model_path: Path) -> dict[str, int]:
    """Size and modification time of a model file: a record made for other weights is not used."""
    st = model_path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def recorded_crf(model_path: Path) -> tuple[CRFSettings, Path] | None:
    """The CRF setting recorded beside a model file by the search, if there is one for these very weights.

    Raises:
        InputError: The record exists but cannot be read or holds invalid settings.
    """
    path = record_path(model_path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        crf = CRFSettings(**record["crf"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: not a readable CRF search record ({exc}); remove it or run pipelines/crf_search.py again"
        ) from None
    if record.get("model") != model_stamp(model_path):
        log.warning(
            "%s was searched for other weights than %s now holds; using the default CRF kernels", path, model_path
        )
        return None
    return crf, path


def best_setting(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The best-ranked CRF setting (``infer.py --crf`` asks for a CRF, so the no-CRF row is never chosen).

    The default kernels are kept where they beat every grid point (a warning says to widen the grid): recording a
    worse setting would make ``--crf`` worse after the search than before it.
    """
    best = next(r for r in rows if r["setting"] != NO_CRF)
    if best["setting"] == DEFAULT:
        log.warning(
            "the default kernels beat every setting of the grid (mIoU %.4f); they are recorded. Widen the "
            "grid (--w1, --sxy, --srgb) to search around them",
            best["mIoU"],
        )
    if rows[0]["setting"] == NO_CRF:
        log.warning(
            "no CRF (mIoU %.4f) beats every CRF setting on these crops; infer.py without --crf may do better",
            rows[0]["mIoU"],
        )
    return best


@dataclass
class SearchResult:
    """What :func:`run_search` wrote and found."""

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    """The best CRF row: a grid point, or the default kernels where they beat every grid point."""
    markdown: Path
    json: Path
    record: Path | None
    computed_probabilities: int
    computed_settings: int


def run_search(
    model: torch.nn.Module,
    read: Callable[[int], Sample],
    indices: Sequence[int],
    out: Path,
    *,
    num_classes: int,
    points: Sequence[GridPoint],
    normalise: Callable[[np.ndarray], torch.Tensor],
    band_ranges: Sequence[tuple[float, float]] | None,
    fingerprint: str,
    device: torch.device,
    record_for: Path | None = None,
    about: dict[str, Any] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    quiet: bool = False,
) -> SearchResult:
    """Cache the probabilities of crops ``indices``, score every setting, write the ranked table and the record.

    Args:
        model: Outputs ``(1, C, H, W)`` logits at the input's size.
        read: A crop's image and label by index.
        indices: The crops searched on.
        out: Folder of the cache, the progress file and the tables (created).
        num_classes: ``C``.
        points: The grid (see :func:`make_grid`).
        normalise: ``(bands, H, W)`` raw pixels → the model's ``(bands, H, W)`` input tensor.
        band_ranges: Per band ``(low, high)`` stretched to 0..255 for the CRF's colour image (non-8-bit crops).
        fingerprint: Identifies the model and the crops: a cache or progress file made for another is not reused.
        device: Where the model runs.
        record_for: A model file: its best setting is recorded beside it (:func:`record_path`).
        about: Extra fields for the JSON table and the record (checkpoint, split, ...).
        workers: Local Dask worker processes (1: this process; None: one per core).
        scheduler: Address of a Dask scheduler whose workers score the settings (they must see ``out``); it is
            reached before anything is computed (:func:`rs_deeplab.runtime.cluster.open_cluster`), and the search stops
            with one line when no worker is left for 30 s or the scheduler is lost (finished settings are kept).
        quiet: No progress bars.
    """
    import hashlib

    digest = hashlib.sha1(f"{fingerprint}|{list(indices)}".encode(), usedforsecurity=False).hexdigest()[:12]
    with contextlib.ExitStack() as stack:
        # a scheduler is reached (and has workers) before any probability is computed or anything is written
        cluster = stack.enter_context(open_cluster(None, scheduler)) if scheduler else None
        out.mkdir(parents=True, exist_ok=True)
        files, computed = cache_probabilities(
            model,
            read,
            indices,
            out / CACHE_DIR / digest,
            normalise=normalise,
            band_ranges=band_ranges,
            device=device,
            quiet=quiet,
        )
        todo = settings(points)
        done, scored = score_settings(
            todo,
            files,
            num_classes,
            out / DONE_FILE,
            f"{digest}:{num_classes}",
            workers=workers,
            scheduler=scheduler,
            quiet=quiet,
            cluster=cluster,
        )
    rows = ranked_rows(todo, done)
    best = best_setting(rows)
    table = {
        **(about or {}),
        "images": list(indices),
        "computed": {"probabilities": computed, "settings": scored},
        "best": best,
        "rows": rows,
    }
    write_json_atomic(out / TABLE_JSON, table)
    md = out / TABLE_MD
    write_text_atomic(md, markdown(rows, len(indices)))
    record = None
    if record_for is not None:
        record = record_path(record_for)
        write_json_atomic(
            record,
            {
                "crf": best["crf"],
                "mIoU": best["mIoU"],
                "images": len(indices),
                "model": model_stamp(record_for),
                **(about or {}),
            },
        )
    return SearchResult(rows, best, md, out / TABLE_JSON, record, computed, scored)
