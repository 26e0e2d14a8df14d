"""Register: record a model that passed the quality gate in the Kubeflow Model Registry.

The version gets the model's storage URI (as KServe fetches it) and format ``pytorch``, the test
metrics evaluate wrote (``metrics.json``: accuracy, RMSE, MAE, off-by-one accuracy, per-class
scores, the majority baseline), the hyperparameters train saved in the model's ``config.json``,
and the run's lineage (:mod:`invmon.cluster.registry`). Nothing is written to the model folder:
a failed registration leaves the model as it was, and the error names the registry.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from invmon.cluster.registry import (
    Lineage,
    ModelRecord,
    RegisteredVersion,
    RegistryOptions,
    register,
)
from invmon.core.command import Command, as_json
from invmon.core.settings import Settings, setting
from invmon.serving.client import DEFAULT_MODEL_NAME

METRICS_FILE = "metrics.json"  # what evaluate writes (invmon.stages.evaluate.METRICS_FILE)
CONFIG_FILE = "config.json"  # what train writes into the model folder


@dataclass(frozen=True)
class RegisterSettings(Settings):
    """Settings of register: the model, its evaluation, the registry and the run's lineage."""

    model_uri: str = setting(
        help="storage URI of the model folder (s3://, minio://, gs://, pvc://; or a local folder)"
    )
    model: str = setting(help="local copy of the model folder (its config.json: hyperparameters)")
    evaluation: str = setting(help=f"evaluate's output folder or its {METRICS_FILE}")
    registry: RegistryOptions = setting(default_factory=RegistryOptions, group="Model Registry")
    name: str = setting(DEFAULT_MODEL_NAME, help="registered model name")
    version: str = setting(
        "", help="version name (empty: the run name, else manual-<UTC time>); never overwritten"
    )
    namespace: str = setting("", help="namespace of the run (empty: this pod's, else local)")
    run_id: str = setting("", help="id of the pipeline run that made the model (lineage)")
    run_name: str = setting("", help="name of the pipeline run that made the model (lineage)")
    description: str = setting("", help="description of the version")

    def __post_init__(self):
        if not self.registry.enabled:
            raise ValueError(
                "register needs --registry-url (the Kubeflow Model Registry's address)"
            )
        super().__post_init__()

    def version_name(self) -> str:
        """The version's name: given, else the run's, else one from the time."""
        return self.version or self.run_name or time.strftime("manual-%Y%m%d-%H%M%S", time.gmtime())


def read_metrics(evaluation: str | Path) -> dict:
    """The metrics evaluate wrote (``metrics.json``, or the folder holding it)."""
    path = Path(evaluation)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} at {str(evaluation)!r} (run invmon evaluate)")
    metrics = json.loads(path.read_text())
    missing = {"accuracy", "rmse", "off_by_one_accuracy", "per_class"} - set(metrics)
    if missing:
        raise ValueError(f"{path} is not evaluate's metrics: it lacks {sorted(missing)}")
    return metrics


def read_hyperparameters(model: str | Path) -> dict:
    """The training settings train saved with the model, with its architecture and classes."""
    path = Path(model) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in model folder {str(model)!r}")
    config = json.loads(path.read_text())
    return {
        "architecture": config.get("architecture"),
        "classes": config.get("classes"),
        **config.get("training", {}).get("hyperparameters", {}),
    }


def storage_uri(model_uri: str) -> str:
    """The URI KServe fetches for a cluster artifact; a local folder is kept as its path."""
    if "://" not in model_uri:
        return str(Path(model_uri).resolve())
    from invmon.cluster.inference_service import storage_uri as fetchable

    return fetchable(model_uri)


def record_of(settings: RegisterSettings) -> ModelRecord:
    """What :func:`run` records for ``settings`` (read before the registry is contacted)."""
    from invmon.cluster.objects import current_namespace

    return ModelRecord(
        name=settings.name,
        version=settings.version_name(),
        uri=storage_uri(settings.model_uri),
        lineage=Lineage(
            namespace=settings.namespace or current_namespace("local"),
            run_id=settings.run_id,
            run_name=settings.run_name,
        ),
        metrics=read_metrics(settings.evaluation),
        hyperparameters=read_hyperparameters(settings.model),
        description=settings.description,
    )


def run(settings: RegisterSettings) -> RegisteredVersion:
    """Register the model as ``settings`` say; raise RegistryError if the registry refuses."""
    return register(settings.registry, record_of(settings))


REGISTER = Command(
    RegisterSettings,
    run,
    description="Record a model version in the Kubeflow Model Registry: its storage URI and "
    "format, test metrics, hyperparameters and the pipeline run it came from. A version that "
    "exists is never overwritten.",
    show=lambda result, _: as_json(result),
)
