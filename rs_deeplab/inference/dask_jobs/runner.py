"""The Dask runner of inference: ranges of scene rows as tasks on a scheduler's workers, written in order.

Before anything is submitted the workers are asked what they have (:func:`gpu_report`); :func:`plan_workers`
decides, as a pure function, the device and precision each worker will use, refuses a ``--device``/``--amp`` a
worker cannot honour, and whether tasks request a ``GPU`` resource (one model per GPU, when every worker
advertises one; see :mod:`rs_deeplab.inference.dask_jobs.gpu_workers`).

Results are waited for through a :class:`rs_deeplab.runtime.cluster_watch.Watch`: a worker killed mid-task is survived
(its rows are computed again elsewhere, the same rows), while no worker left for 30 s or a lost scheduler stops
the run with one line; the rows already written stay in the partial file and the same command resumes from them
(:mod:`rs_deeplab.inference.writing.writer`).

Tasks change nothing process-wide on the workers: :func:`dask_workers` registers the
:class:`rs_deeplab.runtime.worker_tuning.TuneWorker` plugin on the scheduler, so each worker process tunes malloc and
matches torch's threads to its own thread count once, explicitly, when the client is opened.
"""

from __future__ import annotations

import contextlib
import math
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rs_deeplab.cli.errors import InputError
from rs_deeplab.inference.predicting.blending import FinishedRows
from rs_deeplab.inference.predicting.predictor import Predictor
from rs_deeplab.inference.predicting.rows import RowJob, concat_rows, stream_rows
from rs_deeplab.inference.runtimes.trained import TrainedModel, worker_model
from rs_deeplab.inference.writing.writer import BLOCK
from rs_deeplab.runtime.cluster import scheduler_client
from rs_deeplab.runtime.devices import precision_name, resolve_amp, resolve_device

GPU_RESOURCE = "GPU"
"""The worker resource a GPU worker advertises (``dask worker --resources GPU=1``)."""

_MOVE_LOCK = threading.Lock()


@dataclass(frozen=True)
class WorkerGPU:
    """What a worker process sees: its visible GPUs and the first one's compute capability."""

    count: int
    capability: tuple[int, int] | None = None


def gpu_report() -> WorkerGPU:
    """Run on a worker (``client.run``): the GPUs torch sees there."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    capability = tuple(torch.cuda.get_device_capability(0)) if count else None
    return WorkerGPU(count, capability)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WorkerPlan:
    """Where the rows of a Dask run are computed."""

    address: str
    workers: int
    device_types: tuple[str, ...]
    precisions: tuple[str, ...]
    resources: dict[str, int] | None
    """What every task requests (``{"GPU": 1}``), or None where some worker has no GPU resource."""

    def fingerprint(self) -> dict[str, str]:
        """The resume fingerprint's record of the compute: device types, precisions, and that Dask ran it."""
        return {"device": "+".join(self.device_types), "precision": "+".join(self.precisions), "runner": "dask workers"}

    @property
    def description(self) -> str:
        """For logs and :attr:`SceneResult.runner`."""
        per_gpu = ", one task per GPU" if self.resources else ""
        return f"Dask scheduler {self.address} ({self.workers} workers, {'+'.join(self.device_types)}{per_gpu})"


def plan_workers(
    address: str,
    reports: Mapping[str, WorkerGPU],
    resources: Mapping[str, Mapping[str, float]],
    device: str,
    amp: str,
) -> WorkerPlan:
    """Decide each worker's device and precision from what it reported; pure.

    Args:
        address: The scheduler's address (for messages).
        reports: :func:`gpu_report` of every worker, by worker address.
        resources: The resources each worker advertises, by worker address.
        device: ``--device``: ``auto`` lets every worker use its GPU when it has one.
        amp: ``--amp``.

    Raises:
        InputError: No worker, or a worker that cannot run ``device`` or ``amp``; names the worker.
    """
    if not reports:
        raise InputError(
            f"the Dask scheduler at {address} has no workers; start `dask worker {address}` or "
            f"`python -m rs_deeplab.inference.dask_jobs.gpu_workers {address}` first"
        )
    types, precisions = set(), set()
    for name, report in sorted(reports.items()):
        try:
            dev = resolve_device(device, local_rank=0, cuda_count=report.count)  # its first GPU for auto
            dtype = resolve_amp(amp, device_type=dev.type, capability=report.capability, option="--amp")
        except InputError as exc:
            raise InputError(f"Dask worker {name}: {exc}") from None
        types.add(dev.type)
        precisions.add(precision_name(dtype))
    every_gpu = all(GPU_RESOURCE in resources.get(name, {}) for name in reports)
    return WorkerPlan(
        address, len(reports), tuple(sorted(types)), tuple(sorted(precisions)), {GPU_RESOURCE: 1} if every_gpu else None
    )


@contextlib.contextmanager
def dask_workers(address: str, device: str, amp: str) -> Iterator[tuple[Any, WorkerPlan]]:
    """A client on the scheduler at ``address`` and the plan of its current workers; closed afterwards.

    The workers are tuned for torch through the :class:`~rs_deeplab.runtime.worker_tuning.TuneWorker` plugin (registered
    on the scheduler: it stays for later workers too).
    """
    with scheduler_client(address, tune_workers=True) as client:
        reports = client.run(gpu_report)
        info = client.scheduler_info(n_workers=-1)["workers"]
        resources = {name: w.get("resources") or {} for name, w in info.items()}
        yield client, plan_workers(address, reports, resources, device, amp)


def task_rows(job: RowJob) -> int:
    """Scene rows per Dask task: whole output blocks, about four window rows."""
    return max(BLOCK, math.ceil(4 * job.stride / BLOCK) * BLOCK)


def module_task(client: Any, module: torch.nn.Module) -> Any:
    """A future of ``module`` computed by a task that carries it, for the row tasks to depend on.

    Not scattered: Dask keeps one copy of scattered data (its memory manager drops the others), which is lost for
    good with the worker holding it, and every task that needs it fails. A task's result is computed again
    elsewhere, so a killed worker costs only its own tasks.
    """
    with warnings.catch_warnings():  # the module travels once, in this task: no "large graph" advice to print
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
        return client.submit(_same, module, pure=False, key=f"model-{uuid.uuid4().hex[:8]}")


def _same(module: torch.nn.Module) -> torch.nn.Module:
    return module


def predict_rows(
    model: torch.nn.Module | TrainedModel, job: RowJob, start: int, stop: int, device: str = "auto"
) -> FinishedRows:
    """Dask task: rows ``[start, stop)`` as one :class:`FinishedRows` (the model is loaded once per worker).

    ``model`` is a CPU ``torch.nn.Module`` (the result of :func:`module_task`; moved to the worker's device once) or a
    :class:`~rs_deeplab.inference.runtimes.trained.TrainedModel`; ``auto`` runs on the worker's GPU when it has one.
    """
    dev = resolve_device(device, local_rank=0, cuda_count=gpu_report().count)
    if isinstance(model, TrainedModel):
        module = worker_model(model, dev).module  # kept on this worker between tasks
        predictor = Predictor(module, dev, tta=job.tta, amp=job.amp, channels_last=job.channels_last)
    else:
        with _MOVE_LOCK:  # the module is shared by the worker's threads: move it once
            predictor = Predictor(model, dev, tta=job.tta, amp=job.amp, channels_last=job.channels_last)
    parts = list(stream_rows(job, predictor, start, stop))
    return concat_rows(parts, job, start, stop)
