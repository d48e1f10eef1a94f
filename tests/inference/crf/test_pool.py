"""DenseCRF in worker processes: the labels of a thread, safe starts, bounded work, a dead worker as one line."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from rs_deeplab.cli.errors import InputError, RsDeeplabError, WorkerDiedError
from rs_deeplab.inference.crf.dense import CRFSettings
from rs_deeplab.inference.crf.pool import (
    AHEAD_PER_PROCESS,
    PROCESSES_ENV,
    CRFPool,
    resolve_processes,
    strips_in_flight,
)
from rs_deeplab.inference.predicting.blending import quantise_probs
from rs_deeplab.inference.predicting.rows import RowJob, _Finisher
from rs_deeplab.runtime.cores import start_method
from tests.inference.crf.test_dense import blurred_prediction, synthetic_scene
from tests.inference.predicting.test_rows_feed import SoftOracle, crf_scene, job_for, run_rows


@pytest.mark.slow
@pytest.mark.parametrize(("start", "stop"), [(0, 150), (37, 101)])
def test_processes_give_the_rows_of_a_thread(tmp_path: Path, start: int, stop: int) -> None:
    path = crf_scene(tmp_path)

    def job(processes: int) -> RowJob:
        # size 64 on 200 columns: 4 blocks per strip, refined side by side
        return job_for(path, 2, crf=CRFSettings(iterations=3, processes=processes), keep_probs=True)

    threaded = run_rows(job(1), start, stop, SoftOracle())
    with _Finisher(job(2), start, stop) as finisher:
        assert finisher.pool is not None and finisher.pool.processes == 2
    pooled = run_rows(job(2), start, stop, SoftOracle())
    np.testing.assert_array_equal(pooled.labels, threaded.labels)
    assert pooled.probs is not None and threaded.probs is not None
    np.testing.assert_array_equal(pooled.probs, threaded.probs)
    plain = run_rows(job_for(path, 2, keep_probs=True), start, stop, SoftOracle())
    assert plain.probs is not None and (quantise_probs(pooled.probs) != plain.probs).any()  # the CRF ran
    assert repr(job(1)) == repr(job(2))  # the number of processes is not in the resume fingerprint


def test_one_process_is_a_thread_as_before(tmp_path: Path) -> None:
    job = job_for(crf_scene(tmp_path), 2, crf=CRFSettings())
    with _Finisher(job, 0, 150) as finisher:
        assert finisher.pool is None and finisher.worker is not None


def test_resolve_processes() -> None:
    assert resolve_processes(None, cores=16, env=None, daemonic=False) == 16
    assert resolve_processes(None, cores=16, env="3", daemonic=False) == 3
    assert resolve_processes(None, cores=16, env="", daemonic=False) == 16
    assert resolve_processes(2, cores=16, env="3", daemonic=False) == 2  # an explicit choice wins
    assert resolve_processes(None, cores=16, env=None, daemonic=True) == 1  # a Dask worker: a thread
    assert resolve_processes(1, cores=16, env=None, daemonic=False) == 1
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(InputError) as err:
            resolve_processes(None, cores=4, env=bad, daemonic=False)
        assert PROCESSES_ENV in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="at least 1"):
        resolve_processes(0, cores=4, env=None, daemonic=False)


def test_work_in_flight_is_bounded() -> None:
    assert strips_in_flight(16, 12) == 3  # 36 blocks for 32 wanted
    assert strips_in_flight(2, 1) == 2 * AHEAD_PER_PROCESS
    assert strips_in_flight(2, 40) == 2
    assert strips_in_flight(16, 1) == 16 * AHEAD_PER_PROCESS


def test_workers_are_spawned_beside_other_threads() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert start_method() == "spawn"
    finally:
        stop.set()
        other.join()


@pytest.mark.slow
def test_a_killed_worker_is_one_line() -> None:
    label, image = synthetic_scene(120, 160)
    probs = blurred_prediction(label)
    slow = CRFSettings(iterations=400)  # seconds per block: the kill lands while they run
    with CRFPool(2) as pool:
        pool.warm_up()
        results = pool.map(slow, [(probs, image, np.ones(label.shape, bool))] * 6, None)
        victim = next(iter(pool._pool._processes))  # a worker's pid
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerDiedError) as err:
            list(results)
    message = str(err.value)
    assert isinstance(err.value, RsDeeplabError) and "\n" not in message
    assert "DenseCRF worker process died" in message and f"{PROCESSES_ENV}=1" in message
