"""A trained checkpoint scored on a split of the data it was trained on, and the CRF settings searched on it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rs_deeplab.cli.errors import InputError
from rs_deeplab.config.modelcard import ModelCard, card_from_state
from rs_deeplab.config.schema import ExperimentConfig
from rs_deeplab.evaluation.metrics import markdown_table, scores
from rs_deeplab.runtime.devices import pick_device
from rs_deeplab.training.checkpoint import load_checkpoint
from rs_deeplab.training.datasets import SegmentationSource
from rs_deeplab.training.datasets.sampling import (
    SegmentationDataset,
    pad_collate,
)
from rs_deeplab.training.preflight import check_bands, check_labelled, check_output_dir
from rs_deeplab.training.transforms import ChannelStats, EvalTransform

if TYPE_CHECKING:
    from rs_deeplab.inference.crf.grid import GridPoint
    from rs_deeplab.inference.crf.search import SearchResult
    from rs_deeplab.report.page import PageOutput
    from rs_deeplab.report.training import Crop
from rs_deeplab.training.experiment import build_source


@dataclass(frozen=True)
class ScoredCheckpoint:
    """A checkpoint read once for scoring on its data: the model (eval mode), its card and training config."""

    path: Path
    model: torch.nn.Module
    card: ModelCard
    config: ExperimentConfig
    iteration: int

    @classmethod
    def read(cls, path: Path, device: torch.device) -> ScoredCheckpoint:
        """Read ``path`` (once) and rebuild its model on ``device``.

        Raises:
            CheckpointError: Missing, unreadable, or weights unlike the architecture it records.
        """
        from rs_deeplab.inference.runtimes.trained import model_from_weights

        state = load_checkpoint(path)
        card = card_from_state(path, state)
        model = model_from_weights(path, card, state["model"], device)
        return cls(path, model, card, ExperimentConfig.model_validate(state["config"]), int(state["iteration"]))

    @property
    def stats(self) -> ChannelStats:
        """The band statistics the model was trained with."""
        return ChannelStats(self.card.mean, self.card.std)

    def split(self, name: str) -> SegmentationSource:
        """Split ``name`` of the data the model was trained on, checked: labelled, same bands and classes.

        Raises:
            InputError: Missing or unlabelled split, other bands or classes than the checkpoint's.
        """
        data = self.config.data
        source = build_source(data, name)
        check_labelled(source, name)
        check_bands([source], data.bands)
        if source.class_names != self.card.class_names:
            raise InputError(f"{data.root}: classes {source.class_names} differ from the checkpoint's")
        return source


def evaluate_checkpoint(path: Path, split: str, out_dir: Path, *, device: str = "auto") -> dict[str, Any]:
    """Score a checkpoint on ``split`` of the data it was trained on; write ``<split>_scores.json`` and ``.md``."""
    return score_checkpoint(path, split, out_dir, device=device)[0]


def score_checkpoint(
    path: Path, split: str, out_dir: Path, *, device: str = "auto", page: Path | None = None
) -> tuple[dict[str, Any], PageOutput | None]:
    """:func:`evaluate_checkpoint`, and with ``page`` its evaluation page (checked by the caller before this call).

    The page shows the scores, the model's details and :data:`~rs_deeplab.training.run_page.CROPS` fixed crops of
    the split (those the training page would pick) predicted by the model: a few small forward passes more.

    Returns:
        The report (``<split>_scores.json``'s content) and the written page (None without ``page``).
    """
    dev = pick_device(device, option="--device")
    check_output_dir(out_dir, "--out")
    ck = ScoredCheckpoint.read(path, dev)
    model, cfg, source = ck.model, ck.config, ck.split(split)
    dataset = SegmentationDataset(source, EvalTransform(ck.stats))
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, collate_fn=pad_collate)
    from rs_deeplab.training.engine import evaluate

    cm = evaluate(model, loader, len(source.class_names), device=dev)
    if not cm.sum():
        raise InputError(
            f"{cfg.data.root}: split {split!r} has no labelled pixel to score (every label is 255, ignore); "
            "check its labels or choose another --split"
        )
    result = scores(cm)
    report = {
        "checkpoint": str(path),
        "split": split,
        "iteration": ck.iteration,
        **result.as_dict(source.class_names),
        "confusion_matrix": cm.tolist(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{split}_scores.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"{split}_scores.md").write_text(markdown_table(result, source.class_names) + "\n")
    return report, None if page is None else _write_page(page, report, ck, source, dev)


def _write_page(
    page: Path, report: dict[str, Any], ck: ScoredCheckpoint, source: SegmentationSource, device: torch.device
) -> PageOutput:
    from rs_deeplab.labels.classes import class_colours
    from rs_deeplab.report.evaluation import write_checkpoint_page

    names = list(source.class_names)
    arch = ck.card.architecture
    details = [
        (
            "architecture",
            " ".join(str(v) for v in (arch.name, arch.backbone) if v)
            + ("" if arch.output_stride is None else f", output stride {arch.output_stride}"),
        ),
        ("classes", f"{len(names)}: {', '.join(names)}"),
        ("bands", str(ck.card.in_channels)),
        ("checkpoint", str(ck.path.resolve())),
        ("iteration", str(ck.iteration)),
        ("split", report["split"]),
        ("images", str(len(source))),
        ("data", str(ck.config.data.root)),
    ]
    return write_checkpoint_page(
        page,
        report,
        class_names=names,
        colours=class_colours(names, ck.config.data.scheme),
        details=details,
        crops=predict_crops(ck, source, device),
    )


@torch.inference_mode()
def predict_crops(ck: ScoredCheckpoint, source: SegmentationSource, device: torch.device) -> list[Crop]:
    """The training page's fixed crops of ``source``, each with its display image, truth and the model's prediction.

    The crops are :func:`~rs_deeplab.training.run_page.pick_crops`'s (the centres of a few evenly spread images).
    """
    from rs_deeplab.report.training import Crop
    from rs_deeplab.training.run_page import display_image, pick_crops, predict_labels

    transform = EvalTransform(ck.stats)
    return [
        Crop(
            name,
            display_image(image),
            label.astype(np.uint8),
            predict_labels(ck.model, transform, image, label, device),
        )
        for name, image, label in pick_crops(source)
    ]


def search_checkpoint_crf(
    path: Path,
    split: str,
    out_dir: Path,
    points: Sequence[GridPoint],
    *,
    images: int = 100,
    device: str = "auto",
    workers: int | None = None,
    scheduler: str | None = None,
    quiet: bool = False,
) -> SearchResult:
    """Cross-validate DenseCRF kernels for a checkpoint on ``images`` crops of ``split`` of its data.

    Every input and output is checked before the first probability is computed: the report folder, the
    checkpoint's folder (the best setting is recorded beside it as ``<stem>.crf.json``, which ``infer.py --crf``
    then uses), the split (its ``data.root`` must be reachable) and the crop count. See
    :func:`rs_deeplab.inference.crf.search.run_search`.
    """
    from rs_deeplab.cli.outputs import check_output_file
    from rs_deeplab.inference.crf.grid import choose_images
    from rs_deeplab.inference.crf.search import record_path, run_search
    from rs_deeplab.runtime.cluster import check_cluster_options
    from rs_deeplab.training.transforms import normalise

    check_cluster_options(workers, scheduler)
    check_output_dir(out_dir, "--out")
    dev = pick_device(device, option="--device")
    ck = ScoredCheckpoint.read(path, dev)
    check_output_file(record_path(path), what=f"the CRF record beside {path}", inputs=[path])
    model, cfg, source, stats = ck.model, ck.config, ck.split(split), ck.stats
    chosen = choose_images(len(source), images)
    ranges = [(m - 2.5 * s, m + 2.5 * s) for m, s in zip(stats.mean, stats.std, strict=True)]

    def as_model_input(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(
            np.ascontiguousarray(np.moveaxis(normalise(np.moveaxis(image, 0, -1), stats), -1, 0), dtype=np.float32)
        )

    st = path.stat()
    about = {"checkpoint": str(path.resolve()), "split": split, "data_root": str(cfg.data.root)}
    return run_search(
        model,
        source.read,
        chosen,
        out_dir,
        num_classes=len(source.class_names),
        points=points,
        normalise=as_model_input,
        band_ranges=ranges,
        fingerprint=f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{split}",
        device=dev,
        record_for=path,
        about=about,
        workers=workers,
        scheduler=scheduler,
        quiet=quiet,
    )
