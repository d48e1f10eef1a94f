"""The shared Dask plumbing: option checks, scoped quieting, in-process runs (the tuning plugin: test_global_state)."""

from __future__ import annotations

import logging

import pytest

from rs_deeplab.cli.errors import InputError
from rs_deeplab.runtime.cluster import DASK_LOGGERS, check_cluster_options, default_workers, open_cluster, quiet_dask


def test_options_are_checked_before_anything_starts() -> None:
    check_cluster_options(2, "tcp://10.0.0.5:8786")
    check_cluster_options(None, None)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(InputError, match="--workers must be a whole number of at least 1"):
            check_cluster_options(bad, None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"scheduler address '10.0.0.5:8786' is not like tcp://host:8786"):
        check_cluster_options(None, "10.0.0.5:8786")


def test_quieting_is_scoped_and_restored_after_an_error() -> None:
    import distributed  # noqa: F401  (importing it sets its loggers' levels, as quiet_dask does first)

    # distributed.client has a level and a handler of its own: it logs the client's reconnection tracebacks
    loggers = [logging.getLogger(n) for n in (*DASK_LOGGERS, "distributed.client")]
    before = [lg.level for lg in loggers]
    loggers[0].setLevel(logging.INFO)  # a caller's own choice
    try:
        with pytest.raises(RuntimeError), quiet_dask():
            assert all(lg.level == logging.CRITICAL for lg in loggers)
            raise RuntimeError("a task failed")
        assert loggers[0].level == logging.INFO and [lg.level for lg in loggers[1:]] == before[1:]
    finally:
        loggers[0].setLevel(before[0])


def test_one_worker_runs_in_this_process_without_dask() -> None:
    with open_cluster(1) as cluster:
        assert (cluster.client, cluster.workers, cluster.description) == (None, 1, "this process (1 worker)")
    assert default_workers() >= 1


def test_inference_and_training_reach_dask_through_cluster_not_through_the_tiler() -> None:
    """The generic Dask part is shared: inference and training import nothing of rs_deeplab.tiling."""
    import ast
    from pathlib import Path

    from tests.sources import parse

    package = Path(__file__).resolve().parents[2] / "rs_deeplab"
    found = []
    for stage in ("inference", "training"):
        for path in sorted((package / stage).rglob("*.py")):
            for node in ast.walk(parse(path)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                found += [f"{path.relative_to(package)}: {n}" for n in names if n.startswith("rs_deeplab.tiling")]
    assert found == []
