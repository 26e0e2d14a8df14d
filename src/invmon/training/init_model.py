"""The starting model of a retrain round: a trained model folder that training fine-tunes.

A retrain round (recounted labels in, a better model out) starts from the model in production
instead of from scratch. The folder is read with the project's one loader
(:func:`invmon.training.model.load_model`, ``weights_only``); an ``s3://`` URI is copied to a
temporary folder first, every time, since a production model's URI keeps its name when the model
behind it changes. A model that counts other classes, sees other images or has another head is
refused, naming both sides.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from invmon.data.s3 import S3Uri, is_s3_uri
from invmon.data.transfer import download_prefix
from invmon.training.model import ModelConfig, load_model

ALLOWED = "a model folder written by invmon train, or an s3:// URI of one"


@contextlib.contextmanager
def local_model(source: str, endpoint_url: str | None = None) -> Iterator[Path]:
    """A local folder holding the model folder ``source`` (for ``s3://``, a temporary copy)."""
    if not is_s3_uri(source):
        path = Path(source)
        if not path.is_dir():
            raise ValueError(f"--init-model {source!r} is not a folder (allowed: {ALLOWED})")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="init-model-") as tmp:
        expected = f"the --init-model folder: {ALLOWED}"
        download_prefix(S3Uri.parse(source), Path(tmp), endpoint_url, expected=expected)
        yield Path(tmp)


def describe(config: ModelConfig) -> str:
    """Classes, image size and head of a model, as the mismatch error names them."""
    return (
        f"classes {list(config.classes)} at {config.preprocessing.image_size}px, head "
        f"{config.head_hidden} units"
    )


def check_matches(source: str, found: ModelConfig, wanted: ModelConfig) -> None:
    """Refuse a starting model that is not the model this training builds."""
    if (
        tuple(found.classes) != tuple(wanted.classes)
        or found.preprocessing != wanted.preprocessing
        or found.head_hidden != wanted.head_hidden
    ):
        raise ValueError(
            f"--init-model {source!r} does not match this training: the model has "
            f"{describe(found)} (preprocessing {found.preprocessing.to_dict()}), the training "
            f"builds {describe(wanted)} (preprocessing {wanted.preprocessing.to_dict()}); "
            "start from a model trained on data arranged and preprocessed the same way"
        )


def start_from(
    model: nn.Module, source: str, wanted: ModelConfig, endpoint_url: str | None = None
) -> None:
    """Put the weights of the starting model ``source`` into ``model`` (built from ``wanted``)."""
    with local_model(source, endpoint_url) as folder:
        trained, found = load_model(folder)
    check_matches(source, found, wanted)
    model.load_state_dict(trained.state_dict())
