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


class CheckpointError(RsDeeplabError, OSError):
    """A checkpoint is missing, corrupt or does not match the model or data."""


class TrainingError(RsDeeplabError, FloatingPointError):
    """Training diverged (a NaN or infinite loss): a learning rate too high or labels the loss cannot use."""
