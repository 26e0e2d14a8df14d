"""S3 access shared by every stage: URI parsing, a pooled boto3 client, a lean object reader with
retries, and an embedded S3 server.

Credentials always come from boto3's standard chain (environment, profile, instance or pod
identity); nothing here reads or writes them. ``anonymous=True`` sends unsigned requests, which is
how the public ABID bucket is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlencode, urlsplit
from xml.etree import ElementTree

import urllib3

from invmon.core.settings import Settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Options(Settings):
    """How a stage reaches an S3 store: the endpoint and whether requests are signed."""

    endpoint_url: str | None = setting(
        None, help="S3-compatible endpoint URL (MinIO, moto, ...); none for AWS S3"
    )
    anonymous: bool = setting(
        False, help="send unsigned requests (public buckets such as aft-vbi-pds)"
    )


@dataclass(frozen=True)
class S3Uri:
    """A parsed ``s3://bucket/prefix`` location; ``prefix`` has no leading or trailing slash."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """Parse ``s3://BUCKET[/PREFIX]``; raise ValueError naming the value otherwise."""
        if not uri.startswith("s3://"):
            raise ValueError(f"not an S3 URI: {uri!r} (expected s3://BUCKET[/PREFIX])")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"S3 URI has no bucket: {uri!r} (expected s3://BUCKET[/PREFIX])")
        return cls(bucket=bucket, prefix=prefix.strip("/"))

    def key(self, relative: str) -> str:
        """Return the full object key of ``relative`` under this prefix."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def relative(self, key: str) -> str:
        """Return ``key`` relative to this prefix (the inverse of :meth:`key`)."""
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def is_s3_uri(value: str) -> bool:
    """True when ``value`` names an S3 location rather than a local path."""
    return value.startswith("s3://")


def make_client(
    endpoint_url: str | None = None,
    anonymous: bool = False,
    max_connections: int = 32,
    region: str | None = None,
):
    """Return a boto3 S3 client with a connection pool sized for ``max_connections`` requests.

    Retries use botocore's adaptive mode, which backs off on 503 SlowDown and throttles itself.
    """
    # boto3 is imported here, not with the module: training and serving import this module for
    # its URI helpers, and must run where boto3 is not installed (a bare GPU machine).
    import boto3
    import botocore
    from botocore.config import Config

    config = Config(
        max_pool_connections=max_connections,
        retries={"mode": "adaptive", "max_attempts": 10},
        connect_timeout=10,
        read_timeout=60,
        # SigV4 everywhere: presigned URLs (ObjectReader) would use the legacy scheme otherwise.
        signature_version=botocore.UNSIGNED if anonymous else "s3v4",
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or session.region_name or "us-east-1",
        config=config,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried.

    The wait before retry ``n`` is drawn uniformly from ``[0, min(cap, base * 2**n)]`` ("full
    jitter"), so that many workers throttled at once do not retry in lockstep. S3's 503 SlowDown
    asks clients to slow down, so it starts from the larger ``slowdown_base``.
    """

    attempts: int = 8
    base: float = 0.05
    slowdown_base: float = 0.5
    cap: float = 20.0

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")

    def wait(self, attempt: int, slowdown: bool = False) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        base = self.slowdown_base if slowdown else self.base
        return random.uniform(0, min(self.cap, base * 2**attempt))


@dataclass(frozen=True)
class ListedObject:
    """One entry of a listing."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectInfo:
    """Size and ETag of an object (the ETag is the MD5 of the body unless uploaded in parts)."""

    size: int
    etag: str


class S3ObjectError(OSError):
    """A request for one object that failed for good (after retries, or not worth retrying)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")


def _proxy_for(url: str) -> str | None:
    """The proxy the standard environment variables name for ``url`` (as boto3 honours them)."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


# ListObjectsV2's query parameters, as botocore names them and as they go on the wire.
_LIST_QUERY = {
    "Prefix": "prefix",
    "EncodingType": "encoding-type",
    "MaxKeys": "max-keys",
    "StartAfter": "start-after",
    "ContinuationToken": "continuation-token",
}
# A bucket name that can be a DNS label: virtual-hosted style (no dots, which the *.s3 wildcard
# certificate would not cover).
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def unsigned_bucket_url(endpoint_url: str | None, bucket: str, region: str | None = None) -> str:
    """The URL of ``bucket`` for unsigned requests, without the trailing ``/`` that object URLs
    add, addressed as an unsigned boto3 client addresses it.

    On an S3-compatible endpoint (MinIO, moto, ...): path style, which every such server serves.
    On AWS S3: virtual-hosted style on the global endpoint, which routes to any region; path
    style on the region's endpoint for a bucket name with dots (the ``*.s3`` wildcard certificate
    does not cover them).
    """
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{quote(bucket)}"
    if _DNS_BUCKET.match(bucket):
        return f"https://{bucket}.s3.amazonaws.com/"
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    host = "s3.amazonaws.com" if region in (None, "", "us-east-1") else f"s3.{region}.amazonaws.com"
    return f"https://{host}/{quote(bucket)}"


class ObjectReader:
    """Lists and GETs objects with many requests in flight, retrying what a busy S3 does to them.

    Each request goes over a pooled urllib3 connection set to a URL that is either presigned by
    the boto3 ``client`` (so every credential source and addressing style keeps working), or, with
    no client (:meth:`open` for an anonymous :class:`S3Options`), unsigned: a public bucket's
    reader (``endpoint_url`` or AWS S3) never builds a boto3 client, which costs 0.2 s of CPU at
    start-up. A request either way costs about half the CPU of a boto3 ``get_object`` call, which
    matters once thousands of small objects per second are in flight. Retries cover 503 SlowDown
    and other 5xx answers, refused or dropped connections, timeouts and bodies that end early; a
    missing object or a refused request fails at once.

    Presigned URLs carry signatures: they are never logged or put into error messages.
    """

    def __init__(
        self,
        client,
        bucket: str,
        max_connections: int = 32,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        endpoint_url: str | None = None,
    ):
        self.client, self.bucket = client, bucket
        self.retry = retry or RetryPolicy()
        self.retries = 0  # retried requests, for reports
        self._lock = threading.Lock()
        self._plain_prefix = self._bucket_url = None
        if client is None:
            self._bucket_url = unsigned_bucket_url(endpoint_url, bucket)
            self._plain_prefix = self._bucket_url.rstrip("/") + "/"
        else:
            import botocore

            if client.meta.config.signature_version is botocore.UNSIGNED:
                probe = self._url("get_object", {"Key": "probe"})
                if probe.endswith("/probe"):
                    self._plain_prefix = probe[: -len("probe")]
        endpoint = self._plain_prefix or client.meta.endpoint_url
        options = {
            "maxsize": max_connections,
            "block": False,
            "retries": False,  # retries are ours, with backoff that S3 asks for
            "timeout": urllib3.Timeout(connect=10.0, read=timeout),
        }
        if endpoint.startswith("https:"):
            from botocore.httpsession import get_cert_path

            options["ca_certs"] = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
        proxy = _proxy_for(endpoint)
        self.http = (
            urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
        )

    @classmethod
    def open(
        cls, s3: S3Options, bucket: str, max_connections: int = 32, retry: RetryPolicy | None = None
    ) -> ObjectReader:
        """A reader of ``bucket`` as ``s3`` says: unsigned without a boto3 client when anonymous,
        else presigned by a boto3 client from the standard credential chain."""
        if s3.anonymous:
            return cls(None, bucket, max_connections, retry, endpoint_url=s3.endpoint_url)
        client = make_client(s3.endpoint_url, max_connections=max_connections)
        return cls(client, bucket, max_connections, retry)

    def _url(self, operation: str, params: dict) -> str:
        if self._plain_prefix is not None:
            if operation in ("get_object", "head_object"):
                # Unsigned URLs differ only in the quoted key: skip botocore's 70 us per request.
                return self._plain_prefix + quote(params["Key"], safe="/~")
            if self._bucket_url is not None and operation == "list_objects_v2":
                query = [("list-type", "2")]
                query += [(_LIST_QUERY[name], value) for name, value in params.items()]
                return self._bucket_url + "?" + urlencode(query, quote_via=quote)
        return self.client.generate_presigned_url(
            operation, Params={"Bucket": self.bucket, **params}, ExpiresIn=3600
        )

    def get(self, key: str) -> bytes:
        """Return the whole body of ``key``; raise S3ObjectError when it cannot be had."""
        return self._request("GET", "get_object", {"Key": key}, key).data

    def head(self, key: str) -> ObjectInfo:
        """Return the size and ETag of ``key``; raise S3ObjectError when it cannot be had."""
        response = self._request("HEAD", "head_object", {"Key": key}, key)
        return ObjectInfo(int(response.headers["Content-Length"]), response.headers["ETag"])

    def list(
        self, prefix: str, start_after: str = "", first_page: int | None = None
    ) -> Iterator[ListedObject]:
        """The objects under ``prefix`` (after ``start_after``) in key order, page by page.

        ``first_page`` asks for at most that many keys in the first page only (S3's pages hold
        1,000): the first page is what a copy waits for before its first GET, and S3 answers a
        short page sooner; the pages after it are fetched while objects are copied.

        The XML is read with ElementTree: botocore's parser costs about 90 us of CPU per key,
        which for a million keys is minutes. Keys are requested URL-encoded (as boto3 does), so
        that any key survives XML.
        """
        params = {"Prefix": prefix, "EncodingType": "url"}
        if start_after:
            params["StartAfter"] = start_after
        page = {**params, "MaxKeys": first_page} if first_page else params
        while True:
            response = self._request("GET", "list_objects_v2", page, f"listing of {prefix!r}")
            root = ElementTree.fromstring(response.data)
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for item in root.iter(f"{ns}Contents"):
                yield ListedObject(
                    unquote(item.findtext(f"{ns}Key", "")),
                    int(item.findtext(f"{ns}Size", "0")),
                    item.findtext(f"{ns}ETag", ""),
                )
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return
            page = {**params, "ContinuationToken": token}

    def _request(
        self, method: str, operation: str, params: dict, what: str
    ) -> urllib3.BaseHTTPResponse:
        for attempt in range(1, self.retry.attempts + 1):
            slowdown = False
            try:
                response = self.http.request(method, self._url(operation, params))
            except urllib3.exceptions.HTTPError as err:
                # Refused, reset or dropped connections, timeouts, and bodies shorter than their
                # Content-Length (urllib3 enforces it) all land here.
                reason = f"{type(err).__name__}: {_without_url(str(err))}"
            else:
                if response.status < 300:
                    return response
                code = _error_code(response.data)
                reason = f"HTTP {response.status}" + (f" {code}" if code else "")
                if response.status not in _RETRYABLE_STATUS:
                    raise S3ObjectError(what, reason)
                slowdown = response.status == 503
            if attempt == self.retry.attempts:
                break
            with self._lock:
                self.retries += 1
            log.debug("retrying %s %s after %s", operation, what, reason)
            time.sleep(self.retry.wait(attempt, slowdown))
        raise S3ObjectError(what, f"{reason} (gave up after {self.retry.attempts} attempts)")


def _error_code(body: bytes) -> str:
    match = _CODE.search(body[:2048])
    return match.group(1).decode("ascii", "replace") if match else ""


def _without_url(text: str) -> str:
    # urllib3 messages can quote the request URL, whose query holds the signature.
    return re.sub(r"https?://\S+", "<url>", text)


def make_public_bucket(client, bucket: str) -> None:
    """Create ``bucket`` readable by anonymous clients, like the public ABID bucket.

    Used on loopback test and demo servers only. moto checks HEAD requests as ``s3:HeadObject``,
    which real AWS policies do not name.
    """
    client.create_bucket(Bucket=bucket)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def embedded_s3_server(port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 (a free port unless given) and yield its URL.

    It is a real HTTP server: pipeline components in other processes reach it through its URL.
    moto accepts unsigned requests, so no credentials are needed anywhere. It runs in a process
    of its own: moto keeps its buckets per process, so two servers in one process shared them
    (a second run found the first one's demo bucket and policy), and the server's work does not
    compete with the caller's for one GIL.
    """
    port = port or _free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, child, timeout)
        url = f"http://127.0.0.1:{port}"
        log.info("embedded S3 server listening on %s", url)
        yield url
    finally:
        child.terminate()
        child.wait(10)


def _wait_for_port(port: int, child: subprocess.Popen, timeout: float) -> None:
    """Return once ``child`` accepts connections on ``port``; RuntimeError if it exits or does
    not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the embedded S3 server exited with code {child.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the embedded S3 server did not listen on port {port} in {timeout:g}s")
