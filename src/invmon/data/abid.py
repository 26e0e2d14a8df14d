"""Facts about the Amazon Bin Image Dataset (ABID) layout and metadata, in one place.

The public bucket ``aft-vbi-pds`` holds ``bin-images/<id>.jpg`` and ``metadata/<id>.json``.
Ids are zero-padded to five digits up to 99999 and plain above; about 1,200 extra *un-padded*
keys (``121.jpg``) are different bins from their padded look-alikes (``00121.jpg``). A bin id is
therefore the key's stem, exactly as written: never parse it as a number and never re-pad it.
"""

from __future__ import annotations

import json
import re
from itertools import zip_longest
from pathlib import Path, PurePosixPath

from invmon.data.s3 import ObjectReader, S3Options, S3Uri, is_s3_uri

IMAGE_DIR = "bin-images"
METADATA_DIR = "metadata"
IMAGE_SUFFIX = ".jpg"
METADATA_SUFFIX = ".json"
PUBLIC_BUCKET = "aft-vbi-pds"

_BIN_ID = re.compile(r"^[0-9A-Za-z_-]+$")


class MetadataError(ValueError):
    """A metadata document that cannot give a bin's item count."""


def format_bin_id(number: int) -> str:
    """Return the id ABID uses for the ``number``-th bin: zero-padded to 5 digits, plain above."""
    if number < 1:
        raise ValueError(f"bin number must be >= 1, got {number}")
    return f"{number:05d}"


def image_key(bin_id: str) -> str:
    """Return the key (relative to the dataset root) of a bin's image."""
    return f"{IMAGE_DIR}/{bin_id}{IMAGE_SUFFIX}"


def metadata_key(bin_id: str) -> str:
    """Return the key (relative to the dataset root) of a bin's metadata document."""
    return f"{METADATA_DIR}/{bin_id}{METADATA_SUFFIX}"


def is_valid_bin_id(bin_id: str) -> bool:
    """True when ``bin_id`` is a plain file stem (letters, digits, ``_`` or ``-``)."""
    return bool(_BIN_ID.match(bin_id))


def split_key(relative_key: str) -> tuple[str, str] | None:
    """Return ``(kind, bin_id)`` for a dataset key, kind being ``"image"`` or ``"metadata"``.

    Returns None for keys that are not bin images or metadata (other folders, other suffixes,
    nested paths), so that a listing can skip them.
    """
    path = PurePosixPath(relative_key)
    if len(path.parts) != 2:
        return None
    folder, name = path.parts
    if folder == IMAGE_DIR and name.endswith(IMAGE_SUFFIX):
        kind, stem = "image", name[: -len(IMAGE_SUFFIX)]
    elif folder == METADATA_DIR and name.endswith(METADATA_SUFFIX):
        kind, stem = "metadata", name[: -len(METADATA_SUFFIX)]
    else:
        return None
    if not is_valid_bin_id(stem):
        return None
    return kind, stem


def expected_quantity(document: bytes | str) -> int:
    """Return a bin's item count (``EXPECTED_QUANTITY``) from its metadata JSON.

    The label comes from EXPECTED_QUANTITY alone: item entries may have null dimensions or weights
    and SKU keys that differ from the ASIN, and none of that matters for the count.
    """
    try:
        data = json.loads(document)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MetadataError(f"invalid JSON: {err}") from err
    if not isinstance(data, dict) or "EXPECTED_QUANTITY" not in data:
        raise MetadataError("no EXPECTED_QUANTITY field")
    value = data["EXPECTED_QUANTITY"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MetadataError(f"EXPECTED_QUANTITY must be a non-negative integer, got {value!r}")
    return value


def read_file_list(
    path: str | Path, limit: int | None = None, s3: S3Options | None = None
) -> list[str]:
    """Return the bin ids named by the original project's ``file_list.json`` (a path or s3:// URI).

    The file maps a count to metadata paths (``{"1": ["data/metadata/100313.json", ...]}``). With
    ``limit``, ids are taken in turn from each count so that a small subset keeps every class.
    """
    try:
        if is_s3_uri(str(path)):
            uri = S3Uri.parse(str(path))
            s3 = s3 or S3Options()
            text = ObjectReader.open(s3, uri.bucket).get(uri.prefix)  # S3ObjectError is an OSError
        else:
            text = Path(path).read_text()
        groups = json.loads(text)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--file-list {str(path)!r} is not a readable JSON file: {err}") from err
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise ValueError(f"--file-list {str(path)!r} must map counts to lists of metadata paths")
    ids: list[str] = []
    seen: set[str] = set()
    for row in zip_longest(*(groups[k] for k in sorted(groups))):
        for entry in row:
            if entry is None:
                continue
            bin_id = PurePosixPath(str(entry)).stem
            if not is_valid_bin_id(bin_id):
                raise ValueError(f"--file-list {str(path)!r}: entry {entry!r} is not a bin path")
            if bin_id not in seen:
                seen.add(bin_id)
                ids.append(bin_id)
    return ids[:limit] if limit else ids
