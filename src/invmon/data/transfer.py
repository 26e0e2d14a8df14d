"""Datasets in and model folders out, for training pods that only see S3.

On a cluster, a TrainJob's nodes and Katib's trial pods are not KFP tasks: no artifact is mounted
for them. They read the preprocessed dataset from an ``s3://`` prefix (copied once per node into a
local cache, resumably) and write the model folder to an ``s3://`` prefix. Local paths pass through
unchanged, so the same train command runs on a laptop and in a pod.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from invmon.data.s3 import S3Uri, is_s3_uri, make_client

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
CACHE_VARIABLE = "INVMON_CACHE_DIR"


def cache_dir(uri: str) -> Path:
    """The local folder that caches ``uri`` (under ``$INVMON_CACHE_DIR`` or the temp folder)."""
    root = Path(os.environ.get(CACHE_VARIABLE) or Path(tempfile.gettempdir()) / "invmon-cache")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return root / digest


def fetch_dataset(
    data: str | Path,
    endpoint_url: str | None = None,
    local_rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Return a local folder holding ``data``: the path itself, or a copy of an ``s3://`` prefix.

    One process per node copies (``local_rank`` 0) while the others wait at ``barrier`` (the
    training processes' own); files already copied are not fetched again, so a restarted pod
    continues the copy. Every start lists the prefix again (one request per 1,000 files): a file
    whose ETag changed since the last complete copy is fetched again and one no longer under the
    prefix is removed, so a dataset made again under the same prefix never trains from stale files.
    """
    if not is_s3_uri(str(data)):
        return Path(data)
    target = cache_dir(str(data))
    if local_rank == 0:
        download_prefix(S3Uri.parse(str(data)), target, endpoint_url, record=True)
    barrier()
    return target


def download_prefix(
    uri: S3Uri,
    target: Path,
    endpoint_url: str | None,
    workers: int = 16,
    expected: str = "a preprocessed dataset",
    record: bool = False,
) -> int:
    """Copy every object under ``uri`` into ``target``; return the number of files fetched.
    An empty prefix is a ValueError that says what was ``expected`` there.

    A file already in ``target`` with the object's size is kept. With ``record``, the ETags of a
    complete copy are written to ``target``/:data:`COMPLETE_MARKER`, and a later copy also fetches
    a file whose ETag differs from the recorded one and removes recorded files no longer listed.
    """
    client = make_client(endpoint_url, max_connections=workers)
    listed = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=uri.bucket, Prefix=uri.key("")
    ):
        listed.update(
            {item["Key"]: (item["Size"], item["ETag"]) for item in page.get("Contents", [])}
        )
    if not listed:
        raise ValueError(f"{uri} holds no objects (expected {expected})")
    recorded = _recorded_etags(target) if record else {}
    todo, etags = [], {}
    for key, (size, etag) in listed.items():
        relative = uri.relative(key)
        path = _inside(target, relative, key)
        etags[relative] = etag
        same = path.is_file() and path.stat().st_size == size
        if not (same and recorded.get(relative, etag) == etag):
            todo.append((key, path))
    for relative in recorded.keys() - etags.keys():  # gone from the prefix since the last copy
        _inside(target, relative, relative).unlink(missing_ok=True)

    def fetch(item):
        key, path = item
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        client.download_file(uri.bucket, key, str(partial))
        os.replace(partial, path)

    (target / COMPLETE_MARKER).unlink(missing_ok=True)  # not complete until this copy is
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fetch, todo))
    if record:
        marker = {"uri": str(uri), "etags": etags}
        (target / COMPLETE_MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n")
    log.info("fetched %d of %d files of %s into %s", len(todo), len(listed), uri, target)
    return len(todo)


def _recorded_etags(target: Path) -> dict[str, str]:
    """The ETags a complete copy into ``target`` recorded; none before one (or from a version
    that recorded only the URI), which leaves the size check alone to decide."""
    try:
        return dict(json.loads((target / COMPLETE_MARKER).read_text())["etags"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _inside(root: Path, relative: str, key: str) -> Path:
    """``root / relative``, refusing keys that would land outside ``root``."""
    path = (root / relative).resolve()
    if not relative or root.resolve() not in path.parents:
        raise ValueError(f"object key {key!r} does not name a file inside the dataset prefix")
    return path


@contextlib.contextmanager
def publish_folder(out: str | Path, endpoint_url: str | None = None) -> Iterator[Path]:
    """Yield a local folder to write into; for an ``s3://`` ``out``, upload it afterwards.

    Files are uploaded only when the block finishes without error, so a failed run does not leave
    a half-written model folder in the bucket.
    """
    if not is_s3_uri(str(out)):
        Path(out).mkdir(parents=True, exist_ok=True)
        yield Path(out)
        return
    uri = S3Uri.parse(str(out))
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
        upload_folder(Path(tmp), uri, endpoint_url)


def upload_folder(folder: Path, uri: S3Uri, endpoint_url: str | None = None) -> list[str]:
    """Upload every file under ``folder`` to ``uri``; return the keys written."""
    client = make_client(endpoint_url)
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = uri.key(path.relative_to(folder).as_posix())
        client.upload_file(str(path), uri.bucket, key)
        keys.append(key)
    return keys
