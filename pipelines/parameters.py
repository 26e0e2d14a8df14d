"""The pipeline's parameters: their types, defaults and descriptions, taken from the stages.

Each field of :class:`PipelineParameters` is one parameter of the compiled pipeline (what the
Kubeflow UI shows and ``kfp run create`` takes). Where a parameter is a stage's setting, the field
inherits it (:func:`invmon.core.settings.inherit`): the stage's default and help are the only
definition, and ``tests/test_pipeline.py`` checks the compiled YAML against them. The fields that
are the pipeline's own say why beside them. KFP has no None: a setting whose default is None
("not given") is the empty value of its type here ("" or 0).

``invmon run`` takes its defaults from here too (:mod:`invmon.pipelines.local_run`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from invmon.cluster.inference_service import ServiceSpec
from invmon.cluster.placement import PodOptions
from invmon.cluster.registry import RegistryOptions
from invmon.core.settings import Settings, inherit, setting, spec_of
from invmon.data.s3 import S3Options
from invmon.stages.arrange import ArrangeSettings
from invmon.stages.audit import AuditSettings
from invmon.stages.deploy import DeploySettings
from invmon.stages.ingest import BinSelection
from invmon.stages.preprocess import PreprocessSettings
from invmon.stages.train import TrainJobOptions, TrainSettings
from invmon.stages.tune import TuneSettings
from invmon.training.config import TrainConfig

# The quality gate: deploy and audit run only at this test accuracy or above (majority-class
# baselines: 0.17 for counts 0-5, 0.26 for 1-5).
MIN_ACCURACY = 0.4


@dataclass(frozen=True)
class PipelineParameters(Settings):
    """Every parameter of the inventory-monitoring pipeline, with its default."""

    # The pipeline's own default source is the public ABID bucket, which is read unsigned; a
    # stage run by hand names its source and signs by default.
    source: str = setting(
        "s3://aft-vbi-pds", help="s3://BUCKET[/PREFIX] with bin-images/ and metadata/"
    )
    endpoint_url: str = inherit(S3Options, "endpoint_url", default="")
    anonymous: bool = inherit(S3Options, "anonymous", default=True)
    file_list: str = inherit(BinSelection, "file_list", default="")
    limit: int = inherit(
        BinSelection, "limit", default=0, minimum=0, help="use at most this many bins (0: all)"
    )
    ingest_parts: int = setting(8, help="parallel ingest tasks, each copying one key range")
    classes: str = inherit(ArrangeSettings, "classes")
    split: str = inherit(ArrangeSettings, "split")
    seed: int = inherit(ArrangeSettings, "seed", help="seed of the split, the search and training")
    recounts: str = inherit(ArrangeSettings, "recounts")
    image_size: int = inherit(PreprocessSettings, "image_size")
    trials: int = inherit(TuneSettings, "trials")
    algorithm: str = inherit(TuneSettings, "algorithm")
    max_epochs: int = inherit(TuneSettings, "max_epochs")
    batch_sizes: str = inherit(TuneSettings, "batch_sizes")
    early_stopping: str = inherit(TuneSettings, "early_stopping")
    parallel_trials: int = inherit(TuneSettings, "parallel_trials")
    # 0 is "the number of epochs the search chose": train's --epochs has no such value.
    epochs: int = setting(0, help="epochs of the final training (0: the search's choice)")
    recipe: str = inherit(TrainSettings, "recipe")
    weights: str = inherit(TrainConfig, "weights")
    init_model: str = inherit(TrainConfig, "init_model")
    num_nodes: int = inherit(TrainJobOptions, "num_nodes")
    # "none" where the stage's default is a folder beside the model: a task's local folder does
    # not survive a retried pod.
    checkpoint: str = inherit(
        TrainSettings,
        "checkpoint",
        default="none",
        help="s3:// prefix for per-epoch checkpoints, so that a retried train task resumes "
        "(none: no checkpoint)",
    )
    artifact_endpoint_url: str = setting(
        "",
        help="S3 endpoint of the artifact store for Katib trials and TrainJob nodes (empty: AWS "
        "S3, or KFP's object store for minio:// artifacts)",
    )
    s3_secret: str = inherit(PodOptions, "s3_secret")
    min_accuracy: float = setting(
        MIN_ACCURACY,
        help="quality gate: deploy and audit run only when the test accuracy reaches this "
        "(majority baselines: 0.17 for counts 0-5, 0.26 for 1-5) and, with init_model, the "
        "starting model's accuracy on the same test split",
    )
    deploy_target: str = inherit(
        DeploySettings,
        "target",
        help="kserve (InferenceService) or local (ModelServer on loopback)",
    )
    model_name: str = inherit(ServiceSpec, "name")
    # Empty is "the pipeline's namespace": the deploy task's pod namespace.
    namespace: str = inherit(
        ServiceSpec, "namespace", help="namespace of the InferenceService (empty: the pipeline's)"
    )
    deployment_mode: str = inherit(ServiceSpec, "deployment_mode")
    # KFP has no optional integers: -1 stands for "not given" (0 is a share).
    canary_traffic_percent: int = inherit(
        ServiceSpec,
        "canary_traffic_percent",
        default=-1,
        help="Knative updates: traffic share of the new model (-1: all)",
    )
    monitor: str = inherit(ServiceSpec, "monitor")
    # Empty is off: only a run that names a registry registers its model.
    registry_url: str = inherit(
        RegistryOptions,
        "url",
        help="Kubeflow Model Registry REST address, http(s)://HOST[:PORT]: a model that passes "
        "the gate is registered there with its metrics and this run's lineage (empty: off)",
    )
    audit_threshold: float = inherit(AuditSettings, "threshold")
    # Runs all parts side by side: on the GPU pool (evaluate_on_gpu), one GPU pod each.
    audit_parts: int = setting(
        1, help="parallel audit tasks, each scoring one key range of the bins", minimum=1
    )


DEFAULTS = PipelineParameters()

# Inherited parameters whose default is not the stage's, and why (the test of the defaults
# accepts these and the KFP form of a None default, nothing else).
DIFFERENT_DEFAULTS = {
    "anonymous": "the default source, the public ABID bucket, is read with unsigned requests",
    "canary_traffic_percent": "KFP has no optional integers: -1 is the stage's None (all traffic)",
    "checkpoint": "a train task's local folder does not survive a retried pod",
}


def docstring(summary: str) -> str:
    """A Google-style docstring whose ``Args`` are the parameters' help texts, from which KFP
    takes the descriptions the Kubeflow UI shows."""
    lines = [summary, "", "Args:"]
    for field in fields(PipelineParameters):
        spec = spec_of(field)
        text = spec.help
        if spec.choices and not all(str(c) in text for c in spec.choices):
            text += f" (one of {', '.join(map(str, spec.choices))})"
        lines.append(f"    {field.name}: {text}.")
    return "\n".join(lines) + "\n"
