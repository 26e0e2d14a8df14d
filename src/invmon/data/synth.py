"""Synthetic bins in ABID's exact layout and schema: the whole product runs without real data.

Each bin is a photo of a bin interior (floor, side walls, back wall) holding 0..K items of varied
size, colour, shape and texture that may overlap, with elastic bands across the front, saved as a
baseline JPEG of ABID-like size, plus a metadata document in ABID's schema whose EXPECTED_QUANTITY
is the number of items drawn. Units of one SKU look alike, as in a real bin. Everything derives
from ``(seed, bin number)``, so a bin's content does not depend on how many bins are made or in
what order.

With a mislabel rate R, each bin's record is wrong with probability R (one unit more or fewer
than the photo shows, as a misplaced item leaves it), the photo unchanged; the true counts go to
a truth file (``bin_id,true_count,recorded_count``) outside the bucket's layout, which no stage
reads: it stands in for the associates who would recount the bins.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import string
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from invmon.core.progress import Progress
from invmon.data import abid
from invmon.data.s3 import S3Uri, is_s3_uri, make_client

log = logging.getLogger(__name__)

TRUTH_FILE = "truth.csv"

_WORDS = [
    "Deluxe",
    "Compact",
    "Organic",
    "Classic",
    "Wireless",
    "Stainless",
    "Portable",
    "Kids",
    "Premium",
    "Mini",
    "Heavy-Duty",
    "Bamboo",
    "Ceramic",
    "Leather",
    "Cotton",
    "Vintage",
    "Magnetic",
    "Foldable",
    "Travel",
    "Garden",
    "Kitchen",
    "Office",
]
_THINGS = [
    "Notebook",
    "Mug",
    "Charger",
    "Wallet",
    "Blu-ray",
    "Candle",
    "Sponge",
    "Toy",
    "Brush",
    "Headphones",
    "Socks",
    "Lamp",
    "Bottle",
    "Puzzle",
    "Paperback",
    "Cable",
    "Hat",
    "Towel",
    "Spatula",
    "Speaker",
    "Frame",
    "Clock",
    "Backpack",
    "Scissors",
]


@dataclass(frozen=True)
class SynthReport:
    """What :func:`synthesize` wrote."""

    destination: str
    bins: int
    counts: dict[int, int]
    bytes_written: int
    mislabeled: int = 0
    truth: str | None = None


@dataclass(frozen=True)
class _Sku:
    asin: str
    sku_key: str
    name: str
    quantity: int
    shape: str
    colour: tuple[int, int, int]
    accent: tuple[int, int, int]
    texture: str
    size: float  # fraction of the floor width
    aspect: float


def _rng(seed: int, number: int) -> np.random.Generator:
    return np.random.default_rng([seed, number])


def _asin(rng: np.random.Generator) -> str:
    chars = np.array(list(string.ascii_uppercase + string.digits))
    return "B0" + "".join(rng.choice(chars, 8))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(15, 250, 3))


def _make_skus(rng: np.random.Generator, count: int) -> list[_Sku]:
    """Split ``count`` units over 1..count SKUs, the way bins hold one or several of a product."""
    skus: list[_Sku] = []
    remaining = count
    while remaining > 0:
        quantity = int(min(remaining, rng.choice([1, 1, 1, 2, 2, 3])))
        asin = _asin(rng)
        # Real SKU keys are usually the ASIN, sometimes a fulfilment SKU (read item["asin"]).
        sku_key = asin if rng.random() < 0.85 else "X00" + _asin(rng)[2:]
        name = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} {rng.choice(_THINGS)}"
        skus.append(
            _Sku(
                asin=asin,
                sku_key=sku_key,
                name=name,
                quantity=quantity,
                shape=str(rng.choice(["box", "box", "ellipse", "polygon", "pouch"])),
                colour=_colour(rng),
                accent=_colour(rng),
                texture=str(rng.choice(["solid", "stripes", "dots", "label", "noise"])),
                size=float(rng.uniform(0.11, 0.26)),
                aspect=float(rng.uniform(0.5, 1.6)),
            )
        )
        remaining -= quantity
    return skus


def _dimension(rng: np.random.Generator, low: float, high: float) -> dict:
    # About one value in twenty is null in the real metadata.
    value = None if rng.random() < 0.05 else float(rng.uniform(low, high))
    return {"unit": "IN", "value": value}


def metadata_document(rng: np.random.Generator, skus: list[_Sku]) -> dict:
    """Return the ABID metadata document for a bin holding ``skus``."""
    items = {}
    for sku in skus:
        weight = None if rng.random() < 0.05 else float(rng.uniform(0.05, 4.0))
        items[sku.sku_key] = {
            "asin": sku.asin,
            "height": _dimension(rng, 0.3, 8.0),
            "length": _dimension(rng, 2.0, 14.0),
            "name": sku.name,
            "normalizedName": sku.name,
            "quantity": sku.quantity,
            "weight": {"unit": "pounds", "value": weight},
            "width": _dimension(rng, 1.0, 10.0),
        }
    return {"BIN_FCSKU_DATA": items, "EXPECTED_QUANTITY": sum(s.quantity for s in skus)}


def _texture(rng: np.random.Generator, sku: _Sku, w: int, h: int) -> Image.Image:
    tile = Image.new("RGB", (w, h), sku.colour)
    draw = ImageDraw.Draw(tile)
    if sku.texture == "stripes":
        step = max(3, w // 6)
        for x in range(0, w + h, step):
            draw.line([(x, 0), (x - h, h)], fill=sku.accent, width=max(1, step // 3))
    elif sku.texture == "dots":
        step = max(4, w // 5)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                r = max(1, step // 4)
                draw.ellipse([x - r, y - r, x + r, y + r], fill=sku.accent)
    elif sku.texture == "label":
        draw.rectangle([w * 0.15, h * 0.3, w * 0.85, h * 0.7], fill=(235, 235, 225))
        for i in range(3):
            y = h * (0.38 + 0.1 * i)
            draw.line([(w * 0.22, y), (w * 0.78, y)], fill=sku.accent, width=max(1, h // 30))
    elif sku.texture == "noise":
        base = np.asarray(tile, dtype=np.int16)
        noise = rng.integers(-35, 36, (h, w, 1), dtype=np.int16)
        tile = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    return tile


def _item_sprite(rng: np.random.Generator, sku: _Sku, floor_w: int) -> Image.Image:
    """Return one unit of ``sku`` as an RGBA sprite, slightly varied and rotated."""
    scale = sku.size * float(rng.uniform(0.9, 1.1))
    w = max(8, int(floor_w * scale))
    h = max(8, int(w * sku.aspect))
    tile = _texture(rng, sku, w, h)
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    if sku.shape == "ellipse":
        mdraw.ellipse([0, 0, w - 1, h - 1], fill=255)
    elif sku.shape == "polygon":
        k = int(rng.integers(5, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        pts = [
            (w / 2 + 0.5 * w * np.cos(a) * rng.uniform(0.8, 1), h / 2 + 0.5 * h * np.sin(a))
            for a in angles
        ]
        mdraw.polygon(pts, fill=255)
    elif sku.shape == "pouch":
        mdraw.rounded_rectangle([0, 0, w - 1, h - 1], radius=min(w, h) // 3, fill=255)
    else:
        mdraw.rectangle([0, 0, w - 1, h - 1], fill=255)
    # A dark outline and a shaded edge make units separable where they touch, as in a photo.
    edge = ImageDraw.Draw(tile)
    edge.rectangle([0, 0, w - 1, h - 1], outline=tuple(c // 2 for c in sku.colour), width=2)
    sprite = tile.convert("RGBA")
    sprite.putalpha(mask)
    return sprite.rotate(float(rng.uniform(-35, 35)), expand=True, resample=Image.BILINEAR)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / max(1, smaller)


def _bin_background(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, tuple]:
    """Draw an empty fabric bin seen from the front and return it with its floor rectangle."""
    # Pod bins are yellow or tan fabric; vary the shade from bin to bin.
    floor = np.array([rng.integers(170, 235), rng.integers(150, 215), rng.integers(70, 160)])
    img = np.empty((h, w, 3), dtype=np.int16)
    img[:] = floor
    img += rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
    # Light falls off toward the back of the bin.
    img = (img * np.linspace(0.7, 1.05, h)[:, None, None]).astype(np.int16)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    wall = tuple(int(c * 0.75) for c in floor)
    inset_x, inset_y = int(w * rng.uniform(0.05, 0.09)), int(h * rng.uniform(0.08, 0.14))
    draw.polygon([(0, 0), (inset_x, inset_y), (inset_x, h), (0, h)], fill=wall)
    draw.polygon([(w, 0), (w - inset_x, inset_y), (w - inset_x, h), (w, h)], fill=wall)
    draw.polygon([(0, 0), (w, 0), (w - inset_x, inset_y), (inset_x, inset_y)], fill=wall)
    _draw_bin_label(rng, draw, w, h)
    return image, (inset_x, inset_y, w - inset_x, h - int(0.08 * h))


def _draw_bin_label(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    """The bin's location sticker (for example "1D" and a 2-D code) on its front lip."""
    lw, lh = int(w * 0.3), int(h * 0.07)
    x = int(rng.uniform(0.2, 0.5) * w)
    y = h - lh - 2 if rng.random() < 0.6 else 2
    draw.rectangle([x, y, x + lw, y + lh], fill=(236, 236, 230))
    draw.rectangle([x + lw // 10, y + lh // 4, x + lw // 2, y + 3 * lh // 4], fill=(40, 40, 60))
    cell = max(2, lh // 6)
    for cy in range(y + cell, y + lh - cell, cell):
        for cx in range(x + 2 * lw // 3, x + lw - cell, cell):
            if rng.random() < 0.5:
                draw.rectangle([cx, cy, cx + cell - 1, cy + cell - 1], fill=(20, 20, 20))


def _place(rng, sprite, area, placed) -> tuple[int, int, int, int]:
    """Find a spot for ``sprite`` in ``area`` that overlaps earlier items only a little."""
    x_lo, y_lo, x_hi, y_hi = area
    sw, sh = sprite.size
    box = (x_lo, y_lo, x_lo + sw, y_lo + sh)
    for _ in range(40):
        x = int(rng.integers(x_lo, max(x_lo + 1, x_hi - sw)))
        y = int(rng.integers(y_lo, max(y_lo + 1, y_hi - sh)))
        box = (x, y, x + sw, y + sh)
        if all(_overlap(box, other) < 0.3 for other in placed):
            break
    return box


def _draw_bands(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Elastic straps across the front of the bin: groups of thin, translucent lines."""
    w, h = image.size
    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(int(rng.integers(1, 3))):
        top = int(rng.uniform(0.15, 0.75) * h)
        lines = int(rng.integers(4, 14))
        gap = int(rng.integers(3, 6))
        for i in range(lines):
            tone = tuple(int(c) for c in rng.integers(150, 235, 3))
            y = top + i * gap
            draw.line([(0, y), (w, y + int(rng.integers(-2, 3)))], fill=(*tone, 165), width=1)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def render_bin(rng: np.random.Generator, skus: list[_Sku]) -> Image.Image:
    """Render the photo of a bin holding the units of ``skus``."""
    w, h = int(rng.integers(420, 560)), int(rng.integers(300, 420))
    image, floor = _bin_background(rng, w, h)
    canvas = image.convert("RGBA")
    placed: list[tuple[int, int, int, int]] = []
    units = [sku for sku in skus for _ in range(sku.quantity)]
    for index in rng.permutation(len(units)):
        sprite = _item_sprite(rng, units[index], floor[2] - floor[0])
        box = _place(rng, sprite, floor, placed)
        placed.append(box)
        canvas.alpha_composite(sprite, dest=(box[0], box[1]))
    image = _draw_bands(rng, canvas)
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.9))))


def make_bin(seed: int, number: int, max_items: int) -> tuple[str, bytes, bytes, int]:
    """Return ``(bin_id, jpeg_bytes, metadata_bytes, count)`` for bin ``number`` of a seed."""
    return make_noisy_bin(seed, number, max_items, 0.0)[:4]


def make_noisy_bin(
    seed: int, number: int, max_items: int, mislabel_rate: float
) -> tuple[str, bytes, bytes, int, int]:
    """Return ``(bin_id, jpeg_bytes, metadata_bytes, recorded_count, true_count)``: the bin of
    :func:`make_bin`, whose record is wrong with probability ``mislabel_rate``."""
    rng = _rng(seed, number)
    count = int(rng.integers(0, max_items + 1))
    skus = _make_skus(rng, count)
    buffer = io.BytesIO()
    render_bin(rng, skus).save(buffer, format="JPEG", quality=int(rng.integers(80, 92)))
    # Its own generator: whether a record is wrong changes neither the photo nor the other bins.
    noise = np.random.default_rng([seed, number, 1])
    if max_items > 0 and noise.random() < mislabel_rate:
        skus = _misrecorded(noise, skus, count, max_items)
    document = json.dumps(metadata_document(rng, skus), indent=4, sort_keys=True)
    recorded = sum(s.quantity for s in skus)
    return abid.format_bin_id(number), buffer.getvalue(), document.encode(), recorded, count


def _misrecorded(rng: np.random.Generator, skus: list[_Sku], count: int, top: int) -> list[_Sku]:
    """The SKUs as a wrong record has them: one unit more or fewer (within 0..top)."""
    step = int(rng.choice([-1, 1]))
    if not 0 <= count + step <= top:
        step = -step
    if step > 0:
        if not skus:
            return _make_skus(rng, 1)
        at = int(rng.integers(len(skus)))
        return [
            dataclasses.replace(s, quantity=s.quantity + 1) if i == at else s
            for i, s in enumerate(skus)
        ]
    at = int(rng.integers(len(skus)))
    fewer = [
        dataclasses.replace(s, quantity=s.quantity - 1) if i == at else s
        for i, s in enumerate(skus)
    ]
    return [s for s in fewer if s.quantity > 0]


def _make_bin_star(args: tuple[int, int, int, float]) -> tuple[str, bytes, bytes, int, int]:
    return make_noisy_bin(*args)


def _bins(count: int, seed: int, max_items: int, workers: int, rate: float) -> Iterator[tuple]:
    jobs = [(seed, number, max_items, rate) for number in range(1, count + 1)]
    if workers <= 1 or count < 64:
        yield from map(_make_bin_star, jobs)
        return
    with get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_make_bin_star, jobs, chunksize=16)


class _Writer:
    """Writes ABID keys into a local folder or an S3 prefix."""

    def __init__(self, destination: str, endpoint_url: str | None, anonymous: bool):
        self.destination = destination
        self.uploads: ThreadPoolExecutor | None = None
        if is_s3_uri(destination):
            self.uri = S3Uri.parse(destination)
            self.client = make_client(endpoint_url, anonymous=anonymous)
            self.uploads = ThreadPoolExecutor(16)
            self.pending: list = []
        else:
            self.root = Path(destination)
            for folder in (abid.IMAGE_DIR, abid.METADATA_DIR):
                (self.root / folder).mkdir(parents=True, exist_ok=True)

    def write(self, key: str, body: bytes) -> None:
        if self.uploads is None:
            (self.root / key).write_bytes(body)
            return
        self.pending.append(
            self.uploads.submit(
                self.client.put_object, Bucket=self.uri.bucket, Key=self.uri.key(key), Body=body
            )
        )
        if len(self.pending) > 256:
            self._drain()

    def _drain(self) -> None:
        for future in self.pending:
            future.result()
        self.pending = []

    def close(self) -> None:
        if self.uploads is not None:
            self._drain()
            self.uploads.shutdown()


def synthesize(
    out: str,
    count: int,
    seed: int = 0,
    max_items: int = 5,
    endpoint_url: str | None = None,
    workers: int | None = None,
    anonymous: bool = False,
    mislabel_rate: float = 0.0,
    truth: str | Path | None = None,
) -> SynthReport:
    """Write ``count`` synthetic bins (ids 00001..) to a folder or ``s3://BUCKET/PREFIX``.

    The bucket must exist; credentials come from boto3's standard chain unless ``anonymous``.
    With ``mislabel_rate``, that share of records is wrong, and ``truth`` (a local file; for a
    folder ``out``, ``out/truth.csv`` when not given) gets every bin's true and recorded count.
    """
    truth = _check(out, count, max_items, mislabel_rate, truth)
    workers = workers or os.cpu_count() or 1
    writer = _Writer(out, endpoint_url, anonymous)
    counts: dict[int, int] = {}
    written, rows = 0, []
    progress = Progress("synth", total=count, unit="bins")
    try:
        for bin_id, jpeg, document, label, true in _bins(
            count, seed, max_items, workers, mislabel_rate
        ):
            writer.write(abid.image_key(bin_id), jpeg)
            writer.write(abid.metadata_key(bin_id), document)
            counts[label] = counts.get(label, 0) + 1
            written += len(jpeg) + len(document)
            rows.append((bin_id, true, label))
            progress.advance()
    finally:
        writer.close()
        progress.close()
    wrong = sum(true != label for _, true, label in rows)
    if truth is not None:
        _write_truth(Path(truth), rows)
    return SynthReport(
        out, count, dict(sorted(counts.items())), written, wrong, str(truth) if truth else None
    )


def _check(out: str, count: int, max_items: int, rate: float, truth) -> str | Path | None:
    """Refuse bad arguments, naming them; return where the truth file goes (None: nowhere)."""
    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    if not 0 <= max_items <= 30:
        raise ValueError(f"--max-items must be between 0 and 30, got {max_items}")
    if not 0 <= rate < 1:
        raise ValueError(f"--mislabel-rate must be in [0, 1), got {rate}")
    if rate and truth is None:
        if is_s3_uri(out):
            raise ValueError("--mislabel-rate with an s3:// --out needs --truth FILE (local)")
        truth = Path(out) / TRUTH_FILE
    return truth


def _write_truth(path: Path, rows: list[tuple[str, int, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["bin_id", "true_count", "recorded_count"])
        writer.writerows(rows)
    temporary.replace(path)
