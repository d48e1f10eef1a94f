"""Keeps a run folder's ``report.html`` up to date while training (rank 0): one call per evaluation, one at the end.

:class:`RunPage` picks a few fixed validation crops once, predicts them with the evaluated model at each evaluation,
times the training steps between logs (images/s), collects the warnings (collapsed classes, a NaN stop) and writes
the page through :func:`rs_deeplab.report.training.write_training_page`. A page that cannot be written (the run
folder deleted or full) is one warning line and training goes on; the page is not worth a run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rs_deeplab.cli.errors import InputError, TrainingError
from rs_deeplab.evaluation.metrics import collapse_warning
from rs_deeplab.report.page import check_page_path
from rs_deeplab.report.training import PAGE_NAME, Crop, TrainingView, read_metrics, runtime_rows, write_training_page
from rs_deeplab.training.datasets.base import SegmentationSource
from rs_deeplab.training.engine import autocast
from rs_deeplab.training.transforms import ChannelStats, EvalTransform

log = logging.getLogger("rs_deeplab.train")

CROPS = 6
"""Fixed validation crops shown on the page."""
CROP_SIZE = 160
"""Largest side of a shown crop (the centre of a larger validation image)."""


def display_image(image: np.ndarray) -> np.ndarray:
    """``H × W × 3`` uint8 of a ``C × H × W`` image: its first three bands (or the first, grey), 2-98 % stretched."""
    bands = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    out = np.zeros((*bands.shape[1:], 3), np.uint8)
    for i, band in enumerate(bands.astype(np.float64)):
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, (2, 98)) if finite.size else (0.0, 1.0)
        out[..., i] = np.clip((np.nan_to_num(band) - lo) * 255.0 / max(hi - lo, 1e-9), 0, 255).astype(np.uint8)
    return out


def pick_crops(source: SegmentationSource, count: int = CROPS, size: int = CROP_SIZE) -> list[tuple[str, Any, Any]]:
    """``count`` validation samples spread evenly over ``source``, each cut to its centre ``size`` square."""
    n = len(source)
    chosen = sorted({round(v) for v in np.linspace(0, n - 1, min(count, n))}) if n else []
    crops = []
    for index in chosen:
        image, label = source.read(index)
        h, w = label.shape
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        window = (slice(top, top + size), slice(left, left + size))
        crops.append((Path(str(source.images[index])).stem, image[(slice(None), *window)], label[window]))
    return crops


def predict_labels(
    model: torch.nn.Module,
    transform: EvalTransform,
    image: np.ndarray,
    label: np.ndarray,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> np.ndarray:
    """The class ids ``model`` (in eval mode) predicts for one crop, as the evaluation prepares it."""
    tensor = transform(image, label)[0][None].to(device)
    with torch.inference_mode(), autocast(device, amp):
        logits = model(tensor)
    return logits.argmax(1)[0].to("cpu", torch.uint8).numpy()


class RunPage:
    """The training page of one run folder (see the module's description); rank 0 makes one, the others none."""

    def __init__(
        self,
        run_dir: Path,
        *,
        class_names: Sequence[str],
        colours: Sequence[tuple[int, int, int]],
        val_source: SegmentationSource,
        stats: ChannelStats,
        device: torch.device,
        amp: torch.dtype | None,
        images_per_iteration: int,
        eval_every: int,
    ) -> None:
        """Check the page's path (one line, before training starts) and pick the crops.

        Raises:
            InputError: ``report.html`` or its folder's name is taken by the wrong kind of file.
        """
        self.run_dir, self.page = run_dir, run_dir / PAGE_NAME
        if run_dir.exists():
            check_page_path(self.page)
        self.names = list(class_names)
        self.colours = [(int(c[0]), int(c[1]), int(c[2])) for c in colours]
        self.device, self.amp, self.per_iteration = device, amp, images_per_iteration
        self.transform = EvalTransform(stats)
        self.samples = pick_crops(val_source)
        self.crops = [Crop(name, display_image(img), lbl.astype(np.uint8)) for name, img, lbl in self.samples]
        self.confusion: np.ndarray | None = None
        self.collapse: str | None = None
        self.stop: str | None = None
        self.failing = False
        self.eval_seconds = 0.0
        self.eval_every = eval_every
        self.started = self.last_write = time.time()
        self.timing: tuple[int, float] | None = None  # (iteration, time) of the last log in this stretch
        self.images, self.seconds = 0, 0.0

    def logged(self, iteration: int) -> None:
        """A training log at ``iteration``: adds the stretch since the previous log to the images/s count."""
        now = time.perf_counter()
        if self.timing is not None and iteration > self.timing[0]:
            self.images += (iteration - self.timing[0]) * self.per_iteration
            self.seconds += now - self.timing[1]
        self.timing = (iteration, now)

    @torch.inference_mode()
    def _predict(self, model: torch.nn.Module) -> list[Crop]:
        was_training = model.training
        model.eval()
        crops = []
        try:
            for crop, (_, image, label) in zip(self.crops, self.samples, strict=True):
                pred = predict_labels(model, self.transform, image, label, self.device, self.amp)
                crops.append(Crop(crop.name, crop.image, crop.truth, pred))
        finally:
            model.train(was_training)
        return crops

    def evaluated(self, iteration: int, cm: np.ndarray, model: torch.nn.Module) -> None:
        """After an evaluation: predict the crops with ``model`` (the evaluated one) and rewrite the page."""
        started = time.perf_counter()
        self.confusion = np.asarray(cm)
        warning = collapse_warning(self.confusion, self.names)
        self.collapse = None if warning is None else f"iteration {iteration}: {warning}"
        self.crops = self._predict(model)
        self.timing = None  # the next stretch starts after this evaluation
        self.write("running")
        self.eval_seconds = max(self.eval_seconds, time.perf_counter() - started)

    def ended(self, error: BaseException | None = None) -> None:
        """The run ended: ``finished`` without ``error``, else ``stopped`` with the reason (NaN loss, Ctrl-C...)."""
        if error is None:
            self.write("finished")
            return
        if isinstance(error, TrainingError):
            self.stop = f"training stopped: {error}"
        elif isinstance(error, KeyboardInterrupt):
            self.stop = "training was interrupted (Ctrl-C)"
        else:
            self.stop = f"training stopped: {type(error).__name__}: {error}"
        self.write("stopped")

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Around training: an exception (NaN stop, Ctrl-C, failure) writes a ``stopped`` page and goes on up."""
        try:
            yield
        except BaseException as exc:
            self.ended(exc)
            raise

    def view(self, status: str) -> TrainingView:
        """What the page shows now."""
        runtime: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            runtime = json.loads((self.run_dir / "runtime.json").read_text())
        config = ""
        with contextlib.suppress(OSError):
            config = (self.run_dir / "config.yaml").read_text()
        rate = f"{self.images / self.seconds:.1f}" if self.seconds > 0 else "n/a"
        elapsed = f"{time.time() - self.started:.0f} s"
        warnings = [w for w in (self.stop, self.collapse) if w]
        gap = max(600.0, 10 * (time.time() - self.last_write))  # far longer than an evaluation interval
        return TrainingView(
            self.run_dir.name,
            status,
            read_metrics(self.run_dir / "metrics.csv"),
            self.names,
            self.colours,
            self.confusion,
            self.crops,
            config,
            runtime_rows(runtime, [("images/s (training steps)", rate), ("wall time", elapsed)]),
            warnings,
            stale_after=gap,
        )

    def write(self, status: str) -> bool:
        """Write the page; on failure log one warning line (once until it works again) and return False."""
        try:
            write_training_page(self.page, self.view(status))
        except (InputError, OSError) as exc:
            if not self.failing:
                log.warning(
                    "training page %s not written (%s); training goes on without it",
                    self.page,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )
            self.failing = True
            return False
        self.failing = False
        self.last_write = time.time()
        return True
