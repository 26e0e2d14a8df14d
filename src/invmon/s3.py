"""S3 access shared by every stage: URI parsing, a pooled boto3 client, and an embedded S3 server.

Credentials always come from boto3's standard chain (environment, profile, instance or pod
identity); nothing here reads or writes them. ``anonymous=True`` sends unsigned requests, which is
how the public ABID bucket is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import botocore
from botocore.config import Config

log = logging.getLogger(__name__)


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
    config = Config(
        max_pool_connections=max_connections,
        retries={"mode": "adaptive", "max_attempts": 10},
        connect_timeout=10,
        read_timeout=60,
        signature_version=botocore.UNSIGNED if anonymous else None,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or session.region_name or "us-east-1",
        config=config,
    )


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
def embedded_s3_server(port: int | None = None) -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 (a free port unless given) and yield its URL.

    It is a real HTTP server: pipeline components in other processes reach it through its URL.
    moto accepts unsigned requests, so no credentials are needed anywhere.
    """
    from moto.server import ThreadedMotoServer

    port = port or _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    log.info("embedded S3 server listening on %s", url)
    try:
        yield url
    finally:
        server.stop()
