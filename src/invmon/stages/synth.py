"""Synth: write synthetic bins exactly in ABID's layout and schema, to a folder or an S3 prefix.

The photos and metadata are drawn by :mod:`invmon.data.synth`; this stage is its command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from invmon.core.command import Command
from invmon.core.settings import Settings, setting, share
from invmon.data.s3 import S3Options

if TYPE_CHECKING:
    from invmon.data.synth import SynthReport


@dataclass(frozen=True)
class SynthSettings(Settings):
    """Settings of synth."""

    out: str = setting(help="folder or s3://BUCKET/PREFIX")
    count: int = setting(help="number of bins", minimum=1)
    seed: int = setting(0, help="random seed")
    max_items: int = setting(5, help="most items in one bin", minimum=0, maximum=30)
    mislabel_rate: float = share(
        0.0, help="share of bins whose recorded count is wrong (one unit off; the photo is right)"
    )
    truth: str | None = setting(
        None,
        help="local file for every bin's true and recorded count (default with "
        "--mislabel-rate: OUT/truth.csv; needed for an s3:// OUT); no stage reads it",
    )
    s3: S3Options = setting(default_factory=S3Options, help="S3 access")
    workers: int | None = setting(
        None, help="processes drawing bins (all cores when not given)", minimum=1, cli=False
    )


def run(settings: SynthSettings) -> SynthReport:
    """Write ``settings.count`` synthetic bins (ids 00001..) to ``settings.out``."""
    from invmon.data.synth import synthesize  # NumPy and Pillow: not needed for --help

    return synthesize(
        settings.out,
        settings.count,
        seed=settings.seed,
        max_items=settings.max_items,
        endpoint_url=settings.s3.endpoint_url,
        anonymous=settings.s3.anonymous,
        workers=settings.workers,
        mislabel_rate=settings.mislabel_rate,
        truth=settings.truth,
    )


SYNTH = Command(
    SynthSettings,
    run,
    description="Write synthetic bin photos and metadata exactly in ABID's layout, to a folder "
    "or s3://BUCKET/PREFIX.",
    show=lambda report, settings: (
        f"wrote {report.bins} bins to {report.destination}; counts {report.counts}"
        + (
            f"; {report.mislabeled} recorded counts wrong, true counts in {report.truth}"
            if report.truth
            else ""
        )
    ),
)
