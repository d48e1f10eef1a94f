"""Exports of a checkpoint cached beside it: keyed by content and settings, built once, checked on every use.

A checkpoint ``runs/x/best.pt`` run through ONNX Runtime is exported to ``runs/x/.rs_deeplab_cache/best.<key>.onnx``,
where ``<key>`` hashes the checkpoint's bytes, the export settings (output stride, opset, precision, calibration),
the versions of torch, onnx, onnxruntime and segmentation-models-pytorch, and the source of the code that builds
and exports the model (:func:`code_digest`): a retrained checkpoint, another setting or an rs_deeplab whose networks
changed is another file, and the files of earlier contents of the same checkpoint are removed when a new one is
written. A file is written under a temporary name and renamed into place, with a JSON sidecar holding its SHA-256:
a truncated or damaged file (or a missing sidecar) is found on the next use and built again. Several processes
starting at once take an advisory lock (``fcntl.flock``) on the cache folder: the first builds, the others wait and
use its file.

A checkpoint folder that cannot be written (read-only media, another user's run) falls back to the user cache
folder (``$XDG_CACHE_HOME/rs_deeplab`` or ``~/.cache/rs_deeplab``), said once per process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rs_deeplab.cli.errors import CheckpointError

log = logging.getLogger("rs_deeplab.inference")

CACHE_FOLDER = ".rs_deeplab_cache"
"""The cache folder created beside a checkpoint."""
CACHE_FORMAT = 1
"""Bumped when the way exports are written changes: every cached file is then built again."""
USER_CACHE_ENV = "XDG_CACHE_HOME"
LOCK_NAME = ".lock"
SIDECAR_SUFFIX = ".json"
FAILED_SUFFIX = ".failed.json"
TMP_SUFFIX = ".tmp.onnx"
"""A file being built (its readers go by the ``.onnx`` suffix)."""
_CHUNK = 1 << 20

_said: set[str] = set()
_said_lock = threading.Lock()
_process_lock = threading.Lock()
"""Threads of one process (a Dask worker's) build one at a time too (``flock`` is per open file, not per thread)."""


def say_once(message: str, *args: Any, level: int = logging.INFO) -> None:
    """Log ``message`` once per process (a Dask worker loads its model once per task's change of model)."""
    text = message % args if args else message
    with _said_lock:
        if text in _said:
            return
        _said.add(text)
    log.log(level, "%s", text)


@dataclass(frozen=True)
class ExportSettings:
    """What an export depends on besides the checkpoint's bytes."""

    output_stride: int | None
    opset: int
    precision: str = "fp32"
    calibration: str = ""
    """int8: what the quantization was calibrated on (scene fingerprints and window count); empty for fp32."""


class ExportFailedError(CheckpointError):
    """The checkpoint's model does not export (an operator ONNX lacks, or outputs unlike PyTorch's)."""


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


PACKAGE = Path(__file__).resolve().parents[2]
LIBRARIES = ("torch", "onnx", "onnxruntime", "segmentation-models-pytorch")
CODE_SOURCES = ("models/*.py", "inference/runtimes/export.py", "inference/runtimes/quantize.py")
"""The package's files (relative to ``rs_deeplab/``) that build, export or quantize a model."""


@functools.cache
def code_digest(root: Path = PACKAGE) -> str:
    """SHA-256 of the sources in :data:`CODE_SOURCES` under ``root`` (the package; read once per process)."""
    h = hashlib.sha256()
    for path in sorted(p for pattern in CODE_SOURCES for p in root.glob(pattern)):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(checkpoint_digest: str, settings: ExportSettings) -> str:
    """16 hex digits naming an export of a checkpoint with ``settings`` under these libraries and this code."""
    record = {
        "checkpoint": checkpoint_digest,
        **asdict(settings),
        "format": CACHE_FORMAT,
        "code": code_digest(),
        "versions": [_version(p) for p in LIBRARIES],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def user_cache_folder(checkpoint: Path) -> Path:
    """The fallback folder of ``checkpoint``'s exports in the user cache (one folder per checkpoint path)."""
    base = Path(os.environ.get(USER_CACHE_ENV) or Path.home() / ".cache") / "rs_deeplab" / "onnx"
    name = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:16]
    return base / f"{checkpoint.parent.name or 'root'}-{name}"


def _writable(folder: Path) -> str | None:
    """None when ``folder`` exists (or was created) and a file can be written in it; else the reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def cache_folder(checkpoint: Path) -> Path:
    """Where ``checkpoint``'s exports go: beside it, or the user cache when that cannot be written (said once).

    Raises:
        CheckpointError: Neither can be written.
    """
    beside = checkpoint.parent / CACHE_FOLDER
    problem = _writable(beside)
    if problem is None:
        return beside
    fallback = user_cache_folder(checkpoint)
    other = _writable(fallback)
    if other is not None:
        raise CheckpointError(
            f"{checkpoint}: no folder to cache its ONNX export in ({beside}: {problem}; "
            f"{fallback}: {other}); set {USER_CACHE_ENV} to a writable folder or pass --runtime "
            "torch"
        )
    say_once(
        "%s cannot be written (%s); the ONNX export of %s is cached in %s",
        beside,
        problem,
        checkpoint.name,
        fallback,
        level=logging.WARNING,
    )
    return fallback


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the cache folder's lock (blocking) for the block; where locking is unsupported, go on unguarded."""
    with _process_lock:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # some network file systems
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
            yield
        finally:
            os.close(fd)


def sidecar(path: Path) -> Path:
    """The JSON record beside a cached file: its size, SHA-256 and what it was built from."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def failure_record(path: Path) -> Path:
    """The JSON record of an export that failed (so the next run falls back at once, with the same reason)."""
    return path.with_name(path.name + FAILED_SUFFIX)


def is_intact(path: Path) -> bool:
    """Whether ``path`` and its sidecar exist and the file's size and SHA-256 are the ones recorded."""
    try:
        record = json.loads(sidecar(path).read_text())
        if not isinstance(record, dict) or path.stat().st_size != record.get("size"):
            return False
        return bool(file_digest(path) == record.get("sha256"))
    except (OSError, ValueError):
        return False


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)


def recorded_failure(path: Path) -> str | None:
    """The reason an earlier run recorded for this export failing, if it did."""
    try:
        record = json.loads(failure_record(path).read_text())
    except (OSError, ValueError):
        return None
    return str(record.get("reason")) if isinstance(record, dict) else None


def cached_export(
    checkpoint: Path,
    settings: ExportSettings,
    build: Callable[[Path], Mapping[str, Any]],
    *,
    digest: str | None = None,
) -> Path:
    """The cached export of ``checkpoint`` with ``settings``, built by ``build(tmp_path)`` when missing or damaged.

    ``build`` writes the file at the path it is given and returns facts to record in the sidecar. Files of other
    contents of the same checkpoint (stale exports) are removed once the new one is in place.

    Raises:
        ExportFailedError: ``build`` raised it (recorded: later calls raise it at once, until the key changes).
        CheckpointError: No writable cache folder.
    """
    digest = digest or file_digest(checkpoint)
    key = cache_key(digest, settings)
    folder = cache_folder(checkpoint)
    path = folder / f"{checkpoint.stem}.{key}.onnx"
    failed = recorded_failure(path)
    if failed is not None:
        raise ExportFailedError(failed)
    if is_intact(path):
        _known[key] = path
        return path
    with folder_lock(folder):
        if is_intact(path):  # another process built it while this one waited
            _known[key] = path
            return path
        if path.exists():
            say_once("%s: the cached export is damaged or unrecorded; building it again", path, level=logging.WARNING)
        for leftover in folder.glob(f".*{TMP_SUFFIX}"):  # under the lock, any is a killed build's
            leftover.unlink(missing_ok=True)
        tmp = folder / f".{path.stem}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
        try:
            facts = _copy_known(key, tmp) or dict(build(tmp))
        except ExportFailedError as exc:
            tmp.unlink(missing_ok=True)
            _write_json(failure_record(path), {"reason": str(exc), "checkpoint": str(checkpoint)})
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        record = {
            **facts,
            "size": tmp.stat().st_size,
            "sha256": file_digest(tmp),
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": digest,
            "settings": asdict(settings),
        }
        sidecar(path).unlink(missing_ok=True)  # never a sidecar vouching for the file being replaced
        os.replace(tmp, path)
        _write_json(sidecar(path), record)
        _remove_stale(folder, checkpoint.stem, digest)
    _known[key] = path
    return path


_known: dict[str, Path] = {}
"""Exports this process built or found, by key: a copy of the same checkpoint elsewhere copies the file."""


def _copy_known(key: str, tmp: Path) -> dict[str, Any] | None:
    """Copy an intact export of the same key that this process used elsewhere into ``tmp``; its recorded facts."""
    known = _known.get(key)
    if known is None or not is_intact(known):
        return None
    try:
        facts = json.loads(sidecar(known).read_text())
        shutil.copyfile(known, tmp)
    except (OSError, ValueError):
        tmp.unlink(missing_ok=True)
        return None
    log.info("%s: an export of the same checkpoint contents, copied from %s", tmp.parent, known)
    return {k: v for k, v in facts.items() if k not in ("size", "sha256", "checkpoint", "settings")}


def _remove_stale(folder: Path, stem: str, digest: str) -> None:
    """Remove this checkpoint name's exports made from other contents (an earlier best.pt of a run)."""
    for record_path in folder.glob(f"{stem}.*.onnx{SIDECAR_SUFFIX}"):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("checkpoint_sha256") not in (None, digest):
            model = record_path.with_name(record_path.name[: -len(SIDECAR_SUFFIX)])
            with contextlib.suppress(OSError):
                record_path.unlink()
                model.unlink()
                log.debug("removed the stale export %s", model)
