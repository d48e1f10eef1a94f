"""A case server: a script's imports paid once, each case still run in a process of its own (a fork).

``python -m tests.case_server pipelines/infer.py SPOOL`` imports the script as a module (``__name__`` is not
``"__main__"``) together with every module the script imports, at the top or inside its functions (torch, rasterio,
geopandas: the seconds a fresh ``python pipelines/infer.py`` pays). Then it reads one JSON request a line on stdin,
``{"id": .., "cwd": .., "argv": [..], "timeout": ..}``, and for each forks a child that points fd 0 at /dev/null and
fds 1 and 2 at files in ``SPOOL``, changes to ``cwd``, sets ``sys.argv`` and runs exactly the script's
``if __name__ == "__main__":`` block, ending as the interpreter would (``SystemExit``'s code, a traceback and 1 for an
uncaught exception, ``threading`` joined, ``atexit`` handlers run, streams flushed). The exit status, as
:func:`os.waitstatus_to_exitcode` gives it (a signal is negative), is written back as one JSON line on stdout:
``{"id": .., "returncode": .., "stdout": path, "stderr": path, "timed_out": bool}``.

Children run side by side: the client decides how many requests are in flight. The server itself runs no thread
and no tensor op (torch's thread pools start at the first op): before each fork it checks that it is the only
thread and stops loudly otherwise, since a fork copies only the calling thread. The client is
:class:`tests.badkit.CaseServer`.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import importlib
import importlib.util
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

CHILD_FAILED = 70
"""Exit status of a child whose set-up (before the script's block) failed."""


def main_block(path: Path) -> CodeType:
    """The body of ``path``'s top-level ``if __name__ == "__main__":`` block, compiled under the script's name."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        test = node.test if isinstance(node, ast.If) else None
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "__name__"
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__"
        ):
            assert isinstance(node, ast.If)
            return compile(ast.Module(body=node.body, type_ignores=[]), str(path), "exec")
    raise SystemExit(f'case_server: {path} has no `if __name__ == "__main__":` block')


def imported_modules(path: Path) -> list[str]:
    """Every absolute import of ``path``, at the top or inside a function, in the order written."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module != "__future__":
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]  # submodules imported by name
    return list(dict.fromkeys(names))


def load(path: Path) -> ModuleType:
    """The script as a module named after its file (not ``__main__``: its block does not run), and its imports."""
    sys.path[0] = str(path.parent)  # as `python path` has it
    spec = importlib.util.spec_from_file_location(f"case_script_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for name in imported_modules(path):
        with contextlib.suppress(ImportError):  # `from package import function`, or an optional dependency
            importlib.import_module(name)
    return module


def exit_status(code: Any) -> int:
    """The interpreter's exit status for ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):  # as the interpreter: the status stays 1
        print(code, file=sys.stderr)
    return 1


def flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream: the interpreter ignores it too
            stream.flush()


def uncaught(exc: BaseException) -> None:
    """Print ``exc`` as the interpreter prints an uncaught exception: its traceback from the script's block on."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # without run_block's own frame
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)


def run_block(block: CodeType, namespace: dict[str, Any]) -> int:
    """Run the script's block as the interpreter runs a script: the exit status it would end with."""
    interrupted = False
    try:
        exec(block, namespace)
        status = 0
    except SystemExit as exc:
        status = exit_status(exc.code)
    except KeyboardInterrupt as exc:
        uncaught(exc)
        status, interrupted = 1, True
    except BaseException as exc:  # the interpreter prints any uncaught exception and exits 1
        uncaught(exc)
        status = 1
    shutdown = getattr(threading, "_shutdown", None)  # the interpreter joins non-daemon threads before atexit
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    flush_streams()
    if interrupted:  # the interpreter ends an uncaught Ctrl-C by SIGINT, so the parent sees the signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status


def child(
    script: str, module: ModuleType, block: CodeType, request: dict[str, Any], out: str, err: str, close: list[int]
) -> None:
    """In the forked child (``close``: the server's own descriptors): never returns."""
    status = CHILD_FAILED
    try:
        for fd in close:
            os.close(fd)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY), (2, err, os.O_WRONLY)):
            opened = os.open(path, flags | (os.O_CREAT | os.O_TRUNC if fd else 0), 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        sys.argv = [script, *request["argv"]]
        status = run_block(block, module.__dict__)
    except BaseException:  # the child must never return into the server's loop
        try:
            traceback.print_exc()
            flush_streams()
        finally:
            os._exit(CHILD_FAILED)
    os._exit(status)


def serve(script: str, spool: Path) -> None:
    block = main_block(Path(script))
    module = load(Path(script))
    requests = os.dup(0)  # the protocol's own descriptors; 0 and 1 become /dev/null and stderr
    replies = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    running: dict[int, tuple[dict[str, Any], str, str, float, int | None]] = {}  # pid: request, out, err, end, pidfd
    pending = b""
    open_input = True

    def reply(message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(replies, data) :]

    while open_input or running:
        waits = [requests] if open_input else []
        waits += [pidfd for *_, pidfd in running.values() if pidfd is not None]
        polling = any(pidfd is None for *_, pidfd in running.values())
        ready, _, _ = select.select(waits, [], [], 0.02 if polling else (1.0 if running else None))
        if requests in ready:
            chunk = os.read(requests, 65536)
            open_input = bool(chunk)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                out, err = str(spool / f"{request['id']}.out"), str(spool / f"{request['id']}.err")
                if threading.active_count() != 1:
                    names = [t.name for t in threading.enumerate()]
                    raise SystemExit(f"case_server: cannot fork with {len(names)} threads running: {names}")
                flush_streams()
                pid = os.fork()
                if pid == 0:
                    pidfds = [pidfd for *_, pidfd in running.values() if pidfd is not None]
                    child(script, module, block, request, out, err, [requests, replies, *pidfds])
                try:
                    pidfd: int | None = os.pidfd_open(pid)
                except (AttributeError, OSError):  # an old kernel: poll
                    pidfd = None
                running[pid] = (request, out, err, time.monotonic() + float(request.get("timeout", 300)), pidfd)
        for pid, (request, out, err, end, pidfd) in list(running.items()):
            timed_out = time.monotonic() > end
            if timed_out:
                os.kill(pid, signal.SIGKILL)
            done, status = os.waitpid(pid, 0 if timed_out else os.WNOHANG)
            if done:
                del running[pid]
                if pidfd is not None:
                    os.close(pidfd)
                code = os.waitstatus_to_exitcode(status)
                reply({"id": request["id"], "returncode": code, "stdout": out, "stderr": err, "timed_out": timed_out})


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.case_server SCRIPT SPOOL")
    serve(sys.argv[1], Path(sys.argv[2]))
