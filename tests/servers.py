"""Real servers on loopback for remote-scene tests: an HTTP file server that honours Range requests and counts the
bytes it sends (and misbehaves on request: error answers, reset connections, silence, see :class:`Faults`), and an
S3-compatible server (moto in server mode) holding the same files."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.server
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RANGE = re.compile(r"(\d*)-(\d*)")


@dataclass
class Traffic:
    """What the HTTP server did: body bytes sent per path, and the requests it answered."""

    sent: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, path: str, range_header: str, nbytes: int) -> None:
        """Record one answer."""
        with self.lock:
            self.sent[path] = self.sent.get(path, 0) + nbytes
            self.requests.append((method, path, range_header))

    def reset(self) -> None:
        """Forget what was counted so far."""
        with self.lock:
            self.sent.clear()
            self.requests.clear()


Fault = int | str | None
"""What a misbehaving server does to one request: an HTTP status (500, 503...), ``reset`` (the connection is reset
before any answer), ``cut`` (the headers and half the body, then a reset), or None (a proper answer)."""


@dataclass
class Faults:
    """Scripted misbehaviour of :func:`http_server`.

    Hiccups: the first ``after`` Range GETs of a file (never the one-byte probe) are answered; each later one takes
    the next entry of ``queue`` until it is empty. Outage: from the first request (of any kind) for which
    ``outage_when(range_header)`` holds, until :meth:`clear`, the server ``stall``s (reads each request and sends
    nothing, the connection left open), is ``gone`` (stops listening: connections are refused, open ones reset) or
    answers every request with the HTTP status ``outage`` (an int, e.g. 503).
    ``delivered`` lists what was done instead of answering, in order.
    """

    after: int = 0
    queue: list[Fault] = field(default_factory=list)
    outage_when: Callable[[str], bool] | None = None
    outage: str | int = "stall"
    delivered: list[Fault] = field(default_factory=list)
    answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    calm: threading.Event = field(default_factory=threading.Event)
    out: bool = False

    def pick(self, method: str, range_header: str) -> Fault:
        """What to do with this request (None: answer it)."""
        with self.lock:
            if not self.out and self.outage_when is not None and self.outage_when(range_header):
                self.out = True
            if self.out:
                self.delivered.append(self.outage)
                return self.outage
            if method != "GET" or not range_header or range_header == "bytes=0-0":
                return None
            if self.answered < self.after or not self.queue:
                self.answered += 1
                return None
            fault = self.queue.pop(0)
            if fault is not None:
                self.delivered.append(fault)
            return fault

    def clear(self) -> None:
        """Behave from now on; stalled requests get their connection closed (still no answer)."""
        with self.lock:
            self.queue.clear()
            self.outage_when, self.out = None, False
        self.calm.set()


def range_start(range_header: str) -> int:
    """The first byte a ``Range`` header asks for (-1 without one)."""
    m = RANGE.match(range_header.removeprefix("bytes="))
    return int(m.group(1)) if m and m.group(1) else -1


def _go_away(server: http.server.ThreadingHTTPServer) -> None:
    """Stop listening: later connections to the port are refused."""
    server.shutdown()
    server.socket.close()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.root``; honours single and multiple byte ranges unless ``server.ranges`` is False.

    Paths under ``/forbidden/`` answer 403. ``server.faults`` (:class:`Faults`) makes it misbehave on purpose.
    """

    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_HEAD(self) -> None:
        """Headers only."""
        self._answer(body=False)

    def do_GET(self) -> None:
        """The file, or the asked ranges of it."""
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        target = self.server.root / rel
        header = self.headers.get("Range", "")
        fault = self.server.faults.pick(self.command, header)
        if fault is not None:
            return self._misbehave(fault, target.read_bytes() if target.is_file() else b"", header)
        if rel.startswith("forbidden/"):
            return self._status(403)
        if not rel or not target.is_file():
            return self._status(404)
        data = target.read_bytes()
        stamp = email.utils.formatdate(target.stat().st_mtime, usegmt=True)
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        ranges = self._ranges(header, len(data)) if header and self.server.ranges else None
        if ranges is None:
            self._send(200, data, {"Content-Type": "image/tiff"}, etag, stamp, body)
        elif len(ranges) == 1:
            a, b = ranges[0]
            extra = {"Content-Range": f"bytes {a}-{b}/{len(data)}", "Content-Type": "image/tiff"}
            self._send(206, data[a : b + 1], extra, etag, stamp, body)
        else:
            self._send(206, *self._multipart(data, ranges), etag, stamp, body)
        return None

    @staticmethod
    def _ranges(header: str, size: int) -> list[tuple[int, int]] | None:
        out = []
        for part in header.removeprefix("bytes=").split(","):
            m = RANGE.fullmatch(part.strip())
            if not m:
                return None
            a, b = m.groups()
            start, end = (size - int(b), size - 1) if not a else (int(a), min(int(b) if b else size - 1, size - 1))
            out.append((start, end))
        return out

    @staticmethod
    def _multipart(data: bytes, ranges: list[tuple[int, int]]) -> tuple[bytes, dict[str, str]]:
        chunks = []
        for a, b in ranges:
            head = f"--SEP\r\nContent-Type: image/tiff\r\nContent-Range: bytes {a}-{b}/{len(data)}\r\n\r\n"
            chunks.append(head.encode() + data[a : b + 1] + b"\r\n")
        return b"".join(chunks) + b"--SEP--\r\n", {"Content-Type": "multipart/byteranges; boundary=SEP"}

    def _send(self, code: int, payload: bytes, extra: Mapping[str, str], etag: str, stamp: str, body: bool) -> None:
        self.send_response(code)
        for k, v in {**extra, "Content-Length": str(len(payload)), "ETag": etag, "Last-Modified": stamp}.items():
            self.send_header(k, v)
        if self.server.ranges:
            self.send_header("Accept-Ranges", "bytes")
        # counted before the headers go out: a client may act on them before this thread would get to count
        self.server.traffic.add(self.command, self.path, self.headers.get("Range", ""), len(payload) if body else 0)
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.server.traffic.add(self.command, self.path, self.headers.get("Range", ""), 0)
        self.end_headers()

    def _misbehave(self, fault: Fault, data: bytes, header: str) -> None:
        """Answer ``fault`` instead of the data (see :data:`Fault`)."""
        self.close_connection = True
        if isinstance(fault, int):
            return self._status(fault)
        if fault == "stall":
            self.server.faults.calm.wait(600)  # the client gives up long before (its timeout); then the socket closes
            return None
        if fault == "gone":
            threading.Thread(target=_go_away, args=(self.server,), daemon=True).start()
        if fault == "cut":
            a, b = (self._ranges(header, len(data)) or [(0, len(data) - 1)])[0]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
            self.send_header("Content-Length", str(b + 1 - a))
            self.end_headers()
            self.wfile.write(data[a : a + (b + 1 - a) // 2])
            self.wfile.flush()
        # an RST instead of a FIN: the client sees "connection reset by peer"
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        return None


@dataclass
class HttpServer:
    """A running loopback file server."""

    url: str
    root: Path
    traffic: Traffic
    faults: Faults = field(default_factory=Faults)


@contextlib.contextmanager
def http_server(
    root: Path, *, ranges: bool = True, faults: Faults | None = None, port: int = 0
) -> Iterator[HttpServer]:
    """Serve ``root`` on ``http://127.0.0.1:<port>`` (a free one by default) from a thread.

    ``ranges=False`` ignores Range headers; ``faults`` makes it misbehave as scripted (none by default).
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), RangeHandler)
    server.daemon_threads = True
    faults = faults if faults is not None else Faults()
    server.root, server.ranges, server.traffic, server.faults = root, ranges, Traffic(), faults  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpServer(f"http://127.0.0.1:{server.server_address[1]}", root, server.traffic, faults)  # type: ignore[attr-defined]
    finally:
        faults.clear()  # stalled handler threads end
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextlib.contextmanager
def s3_server(bucket: str, files: Mapping[str, Path]) -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback holding ``files`` (key → local file) in ``bucket``.

    Yields the environment GDAL and botocore need to reach it (endpoint, plain HTTP, path-style addressing, region
    and test credentials); the test sets it with ``monkeypatch.setenv``.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            **{"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
        )
        client.create_bucket(Bucket=bucket)
        for key, path in files.items():
            client.upload_file(str(path), bucket, key)
        yield {
            "AWS_S3_ENDPOINT": f"127.0.0.1:{port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_REGION": "us-east-1",
            **S3_KEYS,
        }
    finally:
        server.stop()
