"""The error boundary of every script (:func:`rs_deeplab.cli.console.cli_entry`), exercised in-process."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator, Sequence

import pytest

from rs_deeplab.cli.console import ArgumentParser, add_common_arguments, cli_entry, held_logs, one_line
from rs_deeplab.cli.errors import CheckpointError, ConfigError, InputError, RasterError


def entry(exc: BaseException) -> object:
    """A pipeline ``main`` that parses the common arguments, then raises ``exc``."""

    @cli_entry
    def main(argv: Sequence[str] | None = None) -> int:
        parser = ArgumentParser(prog="x.py")
        add_common_arguments(parser)
        parser.parse_args(argv)
        raise exc

    return main


@pytest.mark.parametrize(
    "exc, words",
    [
        (InputError("bad size"), "error: bad size"),
        (ConfigError("a.yaml: data.x: unknown key"), "error: a.yaml: data.x: unknown key"),
        (RasterError("s.tif: cannot read"), "error: s.tif: cannot read"),
        (
            CheckpointError("c.pt: checkpoint is of another architecture\n  model.name a → b\n\n"),
            "error: c.pt: checkpoint is of another architecture; model.name a → b",
        ),
        (PermissionError(13, "Permission denied", "/ro/out.tif"), "error: /ro/out.tif: permission denied"),
        (IsADirectoryError(21, "Is a directory", "/tmp/out"), "error: /tmp/out: is a folder where a file"),
        (NotADirectoryError(20, "Not a directory", "/f/x"), "error: /f/x: a part of this path is a file"),
        (FileExistsError(17, "File exists", "/tmp/a"), "error: /tmp/a: already exists"),
        (pickle.UnpicklingError("invalid load key, 'x'."), "error: not a readable file (invalid load key"),
        (
            InputError(
                "Caught InputError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                '  File "x.py", line 1, in f\nrs_deeplab.cli.errors.InputError: x.tif: label value 9 is outside'
            ),
            "error: x.tif: label value 9 is outside",
        ),
    ],
)
def test_user_errors_are_one_line(exc: BaseException, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert entry(exc)([]) == 2  # type: ignore[operator]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(words), err
    assert "Traceback" not in err


def test_a_bug_keeps_its_traceback() -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        entry(RuntimeError("a bug"))([])  # type: ignore[operator]
    with pytest.raises(OSError, match="disk on fire"):  # an OS error naming no path is not a user's mistake
        entry(OSError(5, "disk on fire"))([])  # type: ignore[operator]


def test_debug_prints_the_full_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry(InputError("bad size"))(["--debug"]) == 2  # type: ignore[operator]
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1] == "error: bad size"


def test_ctrl_c_is_one_line_and_130_also_when_masked(capsys: pytest.CaptureFixture[str]) -> None:
    def masked() -> BaseException:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as inner:
                raise RuntimeError("EnvError: GDAL environment lost") from inner
        except RuntimeError as outer:
            return outer

    for exc in (KeyboardInterrupt(), masked()):
        assert entry(exc)([]) == 130  # type: ignore[operator]
        assert capsys.readouterr().err == "interrupted; re-run the same command to resume\n"


def test_usage_errors_and_help_still_exit_through_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        entry(InputError("never"))(["--nonsense"])  # type: ignore[operator]
    assert info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_one_line_collapses_blanks_and_lines() -> None:
    assert one_line("a\n\n  b   c\n") == "a; b c"
    assert one_line("") == "unknown error"


@pytest.fixture
def logger_lines() -> Iterator[tuple[logging.Logger, list[str]]]:
    """A logger with one handler that records the messages it prints."""
    logger, lines = logging.getLogger("rs_deeplab.test_held"), []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, lines
    logger.removeHandler(handler)


def test_held_logs_print_once_released_and_drop_before_a_user_error(
    logger_lines: tuple[logging.Logger, list[str]],
) -> None:
    logger, lines = logger_lines
    before = logger.handlers[:]
    with held_logs(logger.name) as release:
        logger.info("checks: a")
        assert lines == []
        release()
        assert lines == ["checks: a"]
        logger.info("training")
        assert lines == ["checks: a", "training"]
    with pytest.raises(ConfigError), held_logs(logger.name):
        logger.info("checks: b")
        raise ConfigError("c.yaml: bad")
    with pytest.raises(ZeroDivisionError), held_logs(logger.name):
        logger.info("checks: c")  # a bug keeps what led to it
        raise ZeroDivisionError
    with held_logs(logger.name):
        logger.info("checks: d")  # never released: printed when the block ends
    assert lines == ["checks: a", "training", "checks: c", "checks: d"]
    with pytest.raises(ConfigError), held_logs(logger.name) as release:
        logger.info("checks: e")
        release()
        raise ConfigError("late")  # after the release, what printed stays printed
    assert lines[-1] == "checks: e" and logger.handlers == before
