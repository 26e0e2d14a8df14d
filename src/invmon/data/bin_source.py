"""The bins of a folder or an S3 prefix in ABID's layout, read one by one (audit and its parts)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from invmon.data import abid
from invmon.data.s3 import S3Uri, is_s3_uri, make_client


class BinSource:
    """The bins of a folder or an S3 prefix in ABID's layout."""

    def __init__(self, source: str, endpoint_url: str | None, anonymous: bool, workers: int):
        self.text = source
        if is_s3_uri(source):
            self.uri = S3Uri.parse(source)
            self.client = make_client(endpoint_url, anonymous, max_connections=workers)
        else:
            self.uri, self.root = None, Path(source)
            if not (self.root / abid.METADATA_DIR).is_dir():
                raise FileNotFoundError(
                    f"--source {source!r} has no {abid.METADATA_DIR}/ folder (expected ABID's "
                    f"layout: {abid.IMAGE_DIR}/<id>.jpg and {abid.METADATA_DIR}/<id>.json)"
                )

    def bin_ids(self, start_after: str = "") -> Iterator[str]:
        """Every bin with a metadata document, in listing order (memory stays flat on S3); with
        ``start_after`` (a metadata file name), only those listed after it: an audit part starts
        its listing where its key range starts instead of at the first bin."""
        if self.uri is None:
            for path in sorted((self.root / abid.METADATA_DIR).iterdir()):
                parsed = abid.split_key(f"{abid.METADATA_DIR}/{path.name}")
                if parsed and path.name > start_after:
                    yield parsed[1]
            return
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self.uri.key(abid.METADATA_DIR) + "/"
        after = {"StartAfter": prefix + start_after} if start_after else {}
        for page in paginator.paginate(Bucket=self.uri.bucket, Prefix=prefix, **after):
            for item in page.get("Contents", []):
                parsed = abid.split_key(self.uri.relative(item["Key"]))
                if parsed:
                    yield parsed[1]

    def read(self, relative: str) -> bytes | None:
        """The bytes of a dataset key, or None when it does not exist."""
        if self.uri is None:
            path = self.root / relative
            return path.read_bytes() if path.is_file() else None
        try:
            body = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key(relative))
        except self.client.exceptions.NoSuchKey:
            return None
        return body["Body"].read()


@dataclass
class Bin:
    """A bin's id, recorded count and photo."""

    bin_id: str
    recorded: int
    image: bytes


def load_bin(source: BinSource, bin_id: str) -> Bin | tuple[str, str, str]:
    """The bin's record and photo, or (reason, bin_id, detail) when it cannot be scored."""
    document = source.read(abid.metadata_key(bin_id))
    if document is None:
        return ("metadata vanished", bin_id, "")
    try:
        recorded = abid.expected_quantity(document)
    except abid.MetadataError as err:
        return ("invalid metadata", bin_id, str(err))
    image = source.read(abid.image_key(bin_id))
    if image is None:
        return ("metadata without image", bin_id, "")
    return Bin(bin_id, recorded, image)
