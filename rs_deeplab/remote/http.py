"""HTTP behaviour of remote reads: timeouts, retries, the GDAL options that apply them, and the server probe.

Timeouts and retries come from the environment (:func:`http_settings`); the probe is a one-byte Range request
that asks a server for an object's size and version (:func:`http_stat`). A server that hiccups (HTTP 429/5xx, a
reset connection) is retried with backoff; one that stops answering fails the read after
``RS_DEEPLAB_HTTP_TIMEOUT`` seconds without a byte, as :class:`RemoteUnavailableError`: one line, and what the
job finished stays for the re-run.
"""

from __future__ import annotations

import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from rs_deeplab.cli.errors import InputError, RasterError

HTTP_TIMEOUT_S = 30
"""Seconds a request may go without receiving a byte (``RS_DEEPLAB_HTTP_TIMEOUT``)."""
HTTP_RETRIES = 3
"""Retries of a request the server answered 429/500/502/503/504 or reset (``RS_DEEPLAB_HTTP_RETRIES``)."""
HTTP_RETRY_DELAY_S = 1.0
"""Pause before the first retry, doubled for each next one (GDAL adds jitter) (``RS_DEEPLAB_HTTP_RETRY_DELAY``)."""
NON_CACHED = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/")
"""GDAL file systems whose downloaded ranges are forgotten when the file is closed (``CPL_VSIL_CURL_NON_CACHED``).

GDAL keeps a range for the life of the process, and a transfer cut short after its headers (a reset mid-body,
which GDAL does not retry) would be read back truncated on every retry; closing and reopening the file
(:func:`rs_deeplab.remote.reads.read_retrying`) then downloads it again. The cost is one header request per open."""
RETRY_CODES = frozenset({429, 500, 502, 503, 504})
"""HTTP answers that mean "try again shortly" (GDAL retries the same ones)."""
RESUME = "re-run the same command to resume"
FALSE_WORDS = ("NO", "FALSE", "OFF", "0")
S3_CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or AWS_NO_SIGN_REQUEST=YES for a public bucket"
)


@dataclass(frozen=True)
class HttpSettings:
    """How remote reads wait and retry (see :func:`http_settings`)."""

    timeout: int
    retries: int
    retry_delay: float


def http_settings() -> HttpSettings:
    """The HTTP timeout and retries of remote reads, from the environment.

    ``RS_DEEPLAB_HTTP_TIMEOUT`` (whole seconds, default 30): a request that receives nothing for this long fails
    (connecting, waiting for the answer, or a transfer that stalls midway; a slow transfer that keeps moving is
    not cut). ``RS_DEEPLAB_HTTP_RETRIES`` (default 3): how often a request answered 429/500/502/503/504 or reset
    is sent again, and a read whose transfer broke off is read again. ``RS_DEEPLAB_HTTP_RETRY_DELAY`` (seconds,
    default 1): the pause before the first retry, doubling for each next one.

    Raises:
        InputError: A value that is not a number in range.
    """
    return HttpSettings(
        int(_env_number("RS_DEEPLAB_HTTP_TIMEOUT", HTTP_TIMEOUT_S, whole=True, low=1)),
        int(_env_number("RS_DEEPLAB_HTTP_RETRIES", HTTP_RETRIES, whole=True, low=0)),
        _env_number("RS_DEEPLAB_HTTP_RETRY_DELAY", HTTP_RETRY_DELAY_S, whole=False, low=0),
    )


def _env_number(name: str, default: float, *, whole: bool, low: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < low or (whole and value != int(value)):
        kind = "a whole number" if whole else "a number"
        raise InputError(f"{name}={text}: expected {kind} >= {low:g}; unset it for the default {default:g}")
    return value


def read_options() -> dict[str, str]:
    """GDAL settings while windows of remote scenes are read (harmless for local files).

    Built from :func:`http_settings`; a ``GDAL_*``/``CPL_*`` variable set in the environment wins over the value
    here. GDAL retries 429/5xx answers and resets itself (``GDAL_HTTP_MAX_RETRY``, ``GDAL_HTTP_RETRY_DELAY``). The
    timeout is curl's low-speed limit (under 1 byte/s for ``timeout`` seconds) plus the connect timeout, not
    ``GDAL_HTTP_TIMEOUT``: that one caps a whole transfer (a big range on a slow link would fail while data still
    flows), and GDAL retries its expiry, which would multiply the wait for a server that stopped answering.
    """
    settings = http_settings()
    options = {
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # adjacent tiles of a window in one request
        "GDAL_HTTP_MULTIPLEX": "YES",  # HTTP/2 multiplexing where the server offers it
        "GDAL_HTTP_MAX_RETRY": str(settings.retries),
        "GDAL_HTTP_RETRY_DELAY": f"{settings.retry_delay:g}",
        "GDAL_HTTP_CONNECTTIMEOUT": str(settings.timeout),
        "GDAL_HTTP_LOW_SPEED_TIME": str(settings.timeout),
        "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
        "CPL_VSIL_CURL_NON_CACHED": ":".join(NON_CACHED),
    }
    return {k: v for k, v in options.items() if k not in os.environ}


class RemoteUnavailableError(RasterError):
    """The server of a remote scene stopped answering (or refused, or kept failing) in the middle of a job.

    Not a damaged file: what the job finished is kept, and re-running the same command resumes once the server
    is back.
    """


@dataclass(frozen=True)
class RemoteStat:
    """What the server reports about a remote object."""

    url: str
    size: int | None
    etag: str | None
    modified: str | None

    def fingerprint(self) -> dict[str, Any]:
        """The scene's identity for resume records: its URL, size and version as the server reports them."""
        return {"scene": self.url, "scene_size": self.size, "scene_etag": self.etag, "scene_modified": self.modified}


def http_stat(url: str, name: str | None = None) -> RemoteStat:
    """A one-byte Range request: 206 gives the size; 200 means the server would send the whole file every time.

    Raises:
        RasterError: Not found, access denied, no Range support, a host that does not resolve.
        RemoteUnavailableError: No answer within the timeout, a refused connection, or 429/5xx answers and resets
            after every retry (:func:`http_settings`).
    """
    shown = name or url
    status, headers = _probe(url, shown, http_settings())
    if status != 206:
        raise RasterError(
            f"{shown}: the server ignores HTTP Range requests (answered {status} to one), so every window would "
            "download the whole file; download it and pass the local path, or serve it from a server with Range support"
        )
    total = headers.get("Content-Range", "").rpartition("/")[2]
    size = int(total) if total.isdigit() else None
    return RemoteStat(url, size, headers.get("ETag"), headers.get("Last-Modified"))


def _probe(url: str, shown: str, settings: HttpSettings) -> tuple[int, Any]:
    """Status and headers of a one-byte Range GET, retrying 429/5xx answers and resets as GDAL does."""
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0", "User-Agent": "rs_deeplab"})
    attempt = 0
    while True:
        try:
            # an opener of this call: urlopen's global one keeps the proxy settings of the process's first request
            with urllib.request.build_opener().open(request, timeout=settings.timeout) as response:
                return response.status, response.headers
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_CODES:
                raise RasterError(http_problem(shown, exc.code)) from None
            problem = f"the server answered HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if not isinstance(reason, ConnectionResetError):
                raise no_answer(shown, reason, settings.timeout) from None
            problem = "the server reset the connection"
        if attempt >= settings.retries:
            raise RemoteUnavailableError(f"{shown}: {problem} (also to {settings.retries} retries); {RESUME}")
        time.sleep(settings.retry_delay * 2**attempt)
        attempt += 1


def no_answer(name: str, reason: object, timeout: float) -> RasterError:
    """The error for a request that got no answer: :class:`RemoteUnavailableError` for a timeout or a refused or
    dropped connection (the job resumes later), a plain :class:`RasterError` for a host that does not resolve.
    """  # noqa: D205
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return RemoteUnavailableError(
            f"{name}: {did_not_answer(timeout)}; check the network and the server, then {RESUME}"
        )
    if isinstance(reason, ConnectionError):
        return RemoteUnavailableError(
            f"{name}: the server refused or dropped the connection ({reason}); once it is back, {RESUME}"
        )
    return RasterError(f"{name}: no answer from the server ({reason}); check the URL and the network")


def did_not_answer(timeout: float) -> str:
    """The words for a server that sent nothing for ``timeout`` seconds."""
    return f"the server did not answer within {timeout:g} s (RS_DEEPLAB_HTTP_TIMEOUT)"


def http_problem(name: str, code: int) -> str:
    """One line for an HTTP error status of a remote scene."""
    if code == 404:
        return f"{name}: not found on the server (HTTP 404); check the URL"
    if code in (401, 403):
        return (
            f"{name}: access denied (HTTP {code}); check the URL, its signature or expiry, or the credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GDAL_HTTP_AUTH, GDAL_HTTP_HEADERS)"
        )
    return f"{name}: the server answered HTTP {code}; check the URL, or retry later"


def env_flag(name: str, default: bool) -> bool:
    """A GDAL-style yes/no environment variable (``AWS_HTTPS=NO``)."""
    value = os.environ.get(name)
    return default if value is None else value.strip().upper() not in FALSE_WORDS
