"""The monitor's log of closed windows: JSON lines in a folder or under an s3:// prefix.

Each closed window is one JSON line, appended as it closes, so a restart loses at most the open
window; on start the monitor reads the last lines back (:meth:`WindowLog.tail`). The lines go
into files of :data:`CHUNK` windows each (``windows-000000000.jsonl``, ...), so no file grows
without bound and a restart reads only the last file or two. An object in S3 cannot be appended
to, so under an s3:// prefix the current file is kept in memory (at most :data:`CHUNK` lines)
and written whole at each close.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from invmon.data.s3 import S3Options, S3Uri, is_s3_uri, make_client

log = logging.getLogger(__name__)

CHUNK = 1000  # windows per file
_PREFIX, _SUFFIX = "windows-", ".jsonl"


def chunk_name(window: int) -> str:
    """The file that holds window number ``window``."""
    return f"{_PREFIX}{window // CHUNK * CHUNK:09d}{_SUFFIX}"


def _parse_lines(text: str, where: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # A crash while appending can cut the last line short: skip it, say so.
            log.warning("%s line %d is not JSON; skipped", where, number)
    return records


class WindowLog:
    """Append closed windows to ``location`` (a folder or s3://bucket/prefix); read them back."""

    def __init__(self, location: str, s3: S3Options | None = None):
        self.location = location
        self._uri = S3Uri.parse(location) if is_s3_uri(location) else None
        self._client = None
        if self._uri is not None:
            s3 = s3 or S3Options()
            self._client = make_client(s3.endpoint_url, s3.anonymous, max_connections=2)
        else:
            Path(location).mkdir(parents=True, exist_ok=True)
        self._open_chunk: str | None = None  # S3: the file whose lines are in _lines
        self._lines: list[str] = []

    def append(self, record: dict) -> None:
        """Append one closed window (its ``window`` number picks the file)."""
        line = json.dumps(record, separators=(",", ":"))
        name = chunk_name(int(record["window"]))
        if self._uri is None:
            with open(Path(self.location) / name, "a") as out:
                out.write(line + "\n")
                out.flush()
                os.fsync(out.fileno())
            return
        if name != self._open_chunk:
            self._open_chunk, self._lines = name, self._read_s3(name).splitlines()
        self._lines.append(line)
        body = ("\n".join(self._lines) + "\n").encode()
        self._client.put_object(
            Bucket=self._uri.bucket, Key=self._uri.key(name), Body=body, ContentType="text/plain"
        )

    def tail(self, count: int) -> list[dict]:
        """The last ``count`` windows logged, oldest first (none when the log is empty)."""
        names = sorted(self._names())
        records: list[dict] = []
        while names and len(records) < count:
            name = names.pop()
            text = self._read_s3(name) if self._uri else (Path(self.location) / name).read_text()
            records = _parse_lines(text, f"{self.location}/{name}") + records
        return records[-count:] if count else []

    def _names(self) -> list[str]:
        if self._uri is None:
            return [p.name for p in Path(self.location).glob(f"{_PREFIX}*{_SUFFIX}")]
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._uri.bucket, Prefix=self._uri.key(_PREFIX)
        )
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return [self._uri.relative(k) for k in keys if k.endswith(_SUFFIX)]

    def _read_s3(self, name: str) -> str:
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self._uri.bucket, Key=self._uri.key(name))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return ""
            raise
        return response["Body"].read().decode()


def read_text(location: str, s3: S3Options | None = None) -> str:
    """The text of a local file or an s3:// object (the monitor's reference)."""
    if not is_s3_uri(location):
        return Path(location).read_text()
    uri = S3Uri.parse(location)
    s3 = s3 or S3Options()
    client = make_client(s3.endpoint_url, s3.anonymous, max_connections=1)
    return client.get_object(Bucket=uri.bucket, Key=uri.prefix)["Body"].read().decode()
