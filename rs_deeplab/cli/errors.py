"""Exception tree: every user-facing failure is an ``RsDeeplabError`` that also subclasses a builtin."""

from __future__ import annotations


class RsDeeplabError(Exception):
    """Root of all errors raised by rs_deeplab for problems the user can fix.

    Pipelines print ``str(error)`` as one line on stderr and exit with code 2.
    """


class ConfigError(RsDeeplabError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, out of range)."""


class InputError(RsDeeplabError, ValueError):
    """An input argument or dataset is invalid (missing folder, bad size, bad class name)."""


class RasterError(RsDeeplabError, OSError):
    """A raster cannot be read or written, or does not match what was expected."""


class DiskFullError(RsDeeplabError, OSError):
    """A write failed, or would fail, for lack of space: a full disk, a used-up quota or a file-size limit.

    Attributes:
        path: The output that could not be written (None where a folder of several was being written).
        errno_code: ``errno.ENOSPC``, ``errno.EDQUOT`` or ``errno.EFBIG`` (None for a refusal before writing).
        needed: Bytes the output still needs, where known (None otherwise).
    """

    def __init__(
        self, message: str, *, path: str | None = None, errno_code: int | None = None, needed: int | None = None
    ) -> None:
        super().__init__(message)
        self.path, self.errno_code, self.needed = path, errno_code, needed


class CheckpointError(RsDeeplabError, OSError):
    """A checkpoint is missing, corrupt or does not match the model or data."""


class TrainingError(RsDeeplabError, FloatingPointError):
    """Training diverged (a NaN or infinite loss): a learning rate too high or labels the loss cannot use."""


class ClusterError(RsDeeplabError, ConnectionError):
    """The Dask cluster running a job failed it: the scheduler was lost, no worker was left, or workers kept dying.

    Finished work is kept; the message says how to get the cluster back and that the same command resumes.
    """


class WorkerDiedError(RsDeeplabError, ChildProcessError):
    """A worker process of this run died (killed, or out of memory): the message says how to run with fewer."""
