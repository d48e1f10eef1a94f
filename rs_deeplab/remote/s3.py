"""S3 HeadObject for remote scenes, configured from the same ``AWS_*`` variables GDAL's ``/vsis3/`` reads."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from rs_deeplab.cli.errors import RasterError
from rs_deeplab.remote.http import (
    RESUME,
    S3_CREDENTIALS_FIX,
    RemoteStat,
    RemoteUnavailableError,
    env_flag,
    http_problem,
    http_settings,
)


def s3_client() -> Any:
    """A botocore S3 client for ``AWS_S3_ENDPOINT`` (``AWS_HTTPS=NO``: plain HTTP), ``AWS_VIRTUAL_HOSTING=FALSE``
    (path-style addressing), ``AWS_REGION`` and ``AWS_NO_SIGN_REQUEST=YES`` (anonymous), as GDAL interprets them.
    """  # noqa: D205
    import botocore
    import botocore.session
    from botocore.config import Config

    endpoint = os.environ.get("AWS_S3_ENDPOINT")
    url = None
    if endpoint:
        url = endpoint if "://" in endpoint else f"{'https' if env_flag('AWS_HTTPS', True) else 'http'}://{endpoint}"
    settings = http_settings()  # the timeout and retries of GDAL's reads (RS_DEEPLAB_HTTP_*)
    config: dict[str, Any] = {
        "s3": {"addressing_style": "auto" if env_flag("AWS_VIRTUAL_HOSTING", True) else "path"},
        "retries": {"max_attempts": settings.retries + 1, "mode": "standard"},
        "connect_timeout": settings.timeout,
        "read_timeout": settings.timeout,
    }
    if env_flag("AWS_NO_SIGN_REQUEST", False):
        config["signature_version"] = botocore.UNSIGNED
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    session = botocore.session.get_session()
    return session.create_client("s3", endpoint_url=url, region_name=region, config=Config(**config))


def s3_stat(url: str) -> RemoteStat:
    """HeadObject of ``s3://bucket/key``: its size, ETag and Last-Modified.

    Raises:
        RasterError: No credentials, access denied, no such bucket or key.
        RemoteUnavailableError: No answer from the endpoint (within ``RS_DEEPLAB_HTTP_TIMEOUT``, after the retries).
    """
    import botocore.exceptions as bex

    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    try:
        head = s3_client().head_object(Bucket=bucket, Key=key)
    except bex.NoCredentialsError:
        raise RasterError(f"{url}: no AWS credentials to read it; {S3_CREDENTIALS_FIX}") from None
    except bex.ClientError as exc:
        meta = exc.response.get("ResponseMetadata", {})
        code = int(meta.get("HTTPStatusCode") or 0) or 400
        raise RasterError(http_problem(url, code)) from None
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError) as exc:
        raise RemoteUnavailableError(
            f"{url}: no answer from the S3 endpoint ({exc}); check AWS_S3_ENDPOINT and the network, then {RESUME}"
        ) from None
    modified = head.get("LastModified")
    return RemoteStat(
        url, head.get("ContentLength"), head.get("ETag"), None if modified is None else modified.isoformat()
    )
