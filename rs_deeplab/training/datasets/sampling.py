"""Deterministic iteration-based sampling: which samples (and augmentation seeds) each rank sees per step.

The stream of samples is a concatenation of seeded permutations of the dataset. Global position ``p`` in the
stream is sample ``perm[p // n][p % n]`` augmented with seed ``f(seed, p)``. Iteration ``it`` consumes positions
``[it * G, (it + 1) * G)`` with ``G = batch_size * world_size * grad_accum``; micro-step ``m`` of rank ``r`` takes
a contiguous run of ``batch_size`` of them. Hence one process with batch ``B * world`` sees exactly the samples
``world`` processes with batch ``B`` see together, and a resumed run continues the very same stream.

Balanced sampling (``weights``) replaces each epoch's permutation by ``n`` seeded draws with replacement, crop
``i`` drawn with probability ``weights[i]`` (:func:`balanced_weights`); positions, seeds, ranks and resume work
as above.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from rs_deeplab.labels.classes import IGNORE_INDEX
from rs_deeplab.training.datasets.base import SegmentationSource, check_labels

SampleKey = tuple[int, int]  # (dataset index, augmentation seed)
Transform = Callable[[np.ndarray, np.ndarray, int], tuple[torch.Tensor, torch.Tensor]]


class IterationBatchSampler(Sampler[list[SampleKey]]):
    """Yields this rank's micro-batches of ``(index, seed)`` from ``start_iteration`` to ``iterations``."""

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        iterations: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        start_iteration: int = 0,
        weights: np.ndarray | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (num_samples,) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(f"weights must be {num_samples} non-negative numbers with a positive sum")
            weights = weights / weights.sum()
        self.weights = weights
        self.n, self.batch_size, self.iterations = num_samples, batch_size, iterations
        self.seed, self.rank, self.world_size, self.grad_accum = seed, rank, world_size, grad_accum
        self.start_iteration = start_iteration
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(self.iterations - self.start_iteration, 0) * self.grad_accum

    def key(self, position: int) -> SampleKey:
        """Dataset index and augmentation seed at global stream ``position``."""
        epoch, offset = divmod(position, self.n)
        if epoch not in self._perms:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.n) if self.weights is None else rng.choice(self.n, self.n, p=self.weights)
            self._perms = {epoch: order}
        return int(self._perms[epoch][offset]), (self.seed * 1_000_003 + position) % 2**32

    def __iter__(self) -> Iterator[list[SampleKey]]:
        per_step = self.batch_size * self.world_size
        for it in range(self.start_iteration, self.iterations):
            for micro in range(self.grad_accum):
                base = (it * self.grad_accum + micro) * per_step + self.rank * self.batch_size
                yield [self.key(base + k) for k in range(self.batch_size)]


def balanced_weights(counts: np.ndarray) -> np.ndarray:
    """Sampling weight of each crop that favours crops holding rare classes (rare-class sampling).

    A class is drawn with probability proportional to ``1 / sqrt(frequency)`` of its pixels in the split, then a
    crop with probability proportional to its pixels of that class: crop ``i`` gets
    ``Σ_c P(c) · n_ic / Σ_j n_jc``. Crops without labelled pixels are never drawn (uniform if no crop has any).

    Args:
        counts: ``(crops, classes)`` labelled pixels of each class in each crop.
    """
    counts = np.asarray(counts, dtype=np.float64)
    per_class = counts.sum(0)
    present = per_class > 0
    if not present.any():
        return np.full(len(counts), 1.0 / max(len(counts), 1))
    p_class = np.zeros_like(per_class)
    p_class[present] = 1.0 / np.sqrt(per_class[present] / per_class.sum())
    p_class /= p_class.sum()
    share = np.divide(counts, per_class, out=np.zeros_like(counts), where=per_class > 0)
    weights = share @ p_class
    return weights / weights.sum()


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Applies a seeded transform to samples of a :class:`SegmentationSource`; items are keyed by (index, seed)."""

    def __init__(self, source: SegmentationSource, transform: Transform) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: SampleKey | int) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        image, label = self.source.read(index)
        check_labels(label, self.source.num_classes, str(self.source.labels[index]))
        return self.transform(image, label, seed)


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples of different sizes, padding images with 0 and masks with 255 to the largest."""
    h = max(img.shape[1] for img, _ in batch)
    w = max(img.shape[2] for img, _ in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w)
    masks = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.uint8)
    for i, (img, msk) in enumerate(batch):
        images[i, :, : img.shape[1], : img.shape[2]] = img
        masks[i, : msk.shape[0], : msk.shape[1]] = msk
    return images, masks


def limit_worker_threads(worker_id: int) -> None:
    """``worker_init_fn`` of the training loaders: one OpenCV and one torch thread per DataLoader worker.

    Each worker process otherwise starts a thread pool as wide as the machine, so ``num_workers`` workers on a
    GPU host run ``num_workers × cores`` threads that fight over the cores the GPU's feed needs. It changes the
    worker process's own settings only (the loader runs it there, see :func:`loader_options`); the trainer's process
    keeps its own.
    """
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


WORKER_MODULES = ("__main__", "rs_deeplab.training")
"""What the loaders' fork server imports once, before it forks the first worker: the training package the pickled
datasets and transforms come from (with torch, albumentations and rasterio). ``__main__`` is Python's own default."""


def loader_options(num_workers: int, *, pin_memory: bool) -> dict[str, Any]:
    """DataLoader keywords for ``num_workers`` worker processes (none: load in this process).

    Workers start from a fork server, not by forking the trainer: a forked child inherits the state of thread
    pools the trainer has used (OpenCV's hangs in ``cv2.setNumThreads`` there; CUDA contexts must not be forked),
    while a fork-server child starts clean. The server is started here, so it imports :data:`WORKER_MODULES` while
    the trainer builds its model; each worker is then a fork of it. Without that preload every worker would import
    the training stack itself when it unpickles its dataset (several seconds of CPU each, per loader start).
    """
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers:
        start_worker_server()
        options |= {"worker_init_fn": limit_worker_threads, "multiprocessing_context": "forkserver"}
    return options


def start_worker_server() -> None:
    """Start this process's fork server (once) with :data:`WORKER_MODULES` imported in it."""
    multiprocessing.set_forkserver_preload(list(WORKER_MODULES))
    multiprocessing.forkserver.ensure_running()
