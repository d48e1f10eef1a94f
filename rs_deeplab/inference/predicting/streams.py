"""Background threads that keep reading, writing and CRF refinement overlapped with the model."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 2, name: str = "rs-deeplab-reader") -> Iterator[T]:
    """Produce ``items`` in a background thread, up to ``depth`` ahead; re-raise its errors here.

    Leaving the loop early stops the thread at its next item.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:
            put(_Failure(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            obj = q.get()
            if obj is _DONE:
                return
            if isinstance(obj, _Failure):
                raise obj.exc
            yield obj  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class BackgroundSink(Generic[T]):
    """Hand items to ``consume`` on a background thread, in order, at most ``depth`` queued.

    Use as a context manager; an error in ``consume`` is raised by the next :meth:`put` or on exit.
    """

    def __init__(self, consume: Callable[[T], None], depth: int = 4, name: str = "rs-deeplab-writer") -> None:
        self._consume = consume
        self._q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> BackgroundSink[T]:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            obj = self._q.get()
            if obj is _DONE:
                return
            if self._error is None:
                try:
                    self._consume(obj)  # type: ignore[arg-type]
                except BaseException as exc:
                    self._error = exc

    def put(self, item: T) -> None:
        """Queue one item (blocks while the queue is full)."""
        if self._error is not None:
            raise self._error
        self._q.put(item)

    def __exit__(self, *exc: object) -> None:
        self._q.put(_DONE)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


class OrderedWorker(Generic[T, R]):
    """Apply ``fn`` to items on background threads (one by default); hand the results back in the order the items
    came.

    At most ``depth`` items are in flight: :meth:`submit` blocks on the oldest one beyond that. An error in ``fn``
    is raised where its result is collected. Use as a context manager (the threads stop on exit).
    """  # noqa: D205

    def __init__(self, fn: Callable[[T], R], depth: int = 2, name: str = "rs-deeplab-worker", threads: int = 1) -> None:
        self._fn, self._depth = fn, max(1, depth)
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix=name)
        self._pending: deque[Future[R]] = deque()

    def __enter__(self) -> OrderedWorker[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)

    def submit(self, item: T) -> list[R]:
        """Queue ``item``; return the results that are ready (oldest first), waiting while too many are queued."""
        self._pending.append(self._pool.submit(self._fn, item))
        ready: list[R] = []
        while self._pending and (len(self._pending) > self._depth or self._pending[0].done()):
            ready.append(self._pending.popleft().result())
        return ready

    def drain(self) -> Iterator[R]:
        """Yield every remaining result, in order."""
        while self._pending:
            yield self._pending.popleft().result()
