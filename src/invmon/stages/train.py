"""Train: fit the ResNet50 counting model on preprocessed shards, here or as a TrainJob.

The settings below are the train stage's one definition: ``invmon train`` derives its options
from them, and the train component builds them from its inputs. :func:`run` resolves the training
config (recipe, then the search's ``best.json``, then explicit options) and dispatches to the
launcher: the loop in this process (under ``torchrun`` too: one process per GPU), or a
multi-node Kubeflow Trainer TrainJob that this process creates and waits for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from invmon.cluster.gpu_pool import GpuPool
from invmon.cluster.placement import PodOptions
from invmon.core.command import Command
from invmon.core.settings import Settings, inherit, setting
from invmon.training.config import (
    TUNABLE,
    RecipeChoice,
    TrainConfig,
    TrainOverrides,
    read_params,
    recipe_config,
)


@dataclass(frozen=True)
class TrainJobOptions(Settings):
    """The TrainJob launcher: nodes, where its pods run, and how long to wait."""

    num_nodes: int = setting(1, help="nodes of the TrainJob", minimum=1)
    pods: PodOptions = setting(default_factory=PodOptions, help="TrainJob pods")
    timeout: float = setting(7 * 24 * 3600.0, help="seconds to wait for the TrainJob", above=0)


@dataclass(frozen=True)
class TrainSettings(Settings):
    """Settings of a training run: data, outputs, recipe and where it runs."""

    data: str = setting(help="preprocessed folder or s3:// prefix (from preprocess)")
    out: str = setting(help="model folder or s3:// prefix to write")
    params: str | None = setting(None, help="best.json from tune; explicit options override it")
    recipe: str = inherit(RecipeChoice, "recipe")
    training: TrainOverrides = setting(
        default_factory=TrainOverrides,
        help="training recipe (explicit options override --params and --recipe)",
    )
    checkpoint: str | None = setting(
        None,
        help="folder or s3:// prefix for the per-epoch checkpoint (default: beside --out, "
        "PARENT/checkpoint-NAME, so it never becomes part of the model; none: no checkpoint)",
    )
    resume: bool = setting(True, help="start over even if a checkpoint exists")
    endpoint_url: str | None = setting(None, help="S3-compatible endpoint URL (MinIO, ...)")
    launcher: str = inherit(
        GpuPool,
        "train_launcher",
        help="local: train in this process (or under torchrun); trainjob: as a multi-node "
        "Kubeflow Trainer TrainJob (--out on S3, --data too or in --workspace-claim)",
    )
    trainjob: TrainJobOptions = setting(default_factory=TrainJobOptions, help="trainjob launcher")
    # Where pods outside this process find the data and put the model (a KFP artifact's URI,
    # when this process sees it as a mounted path). Empty: --data and --out themselves.
    data_uri: str = setting("", help="the data's location for TrainJob pods", cli=False)
    out_uri: str = setting("", help="the model's location for TrainJob pods", cli=False)

    def config(self) -> TrainConfig:
        """The run's config: the recipe, then the search's choice, then explicit options."""
        searched = read_params(self.params) if self.params else {}
        return recipe_config(self.recipe, searched, self.training.given())

    def hyperparameters(self) -> dict:
        """The tunable settings this run takes from the search or from explicit options."""
        searched = read_params(self.params) if self.params else {}
        given = {k: v for k, v in self.training.given().items() if k in TUNABLE}
        return {**searched, **given}

    def checkpoint_location(self) -> str | None:
        """Where the per-epoch checkpoint goes (None: nowhere)."""
        from invmon.training.checkpoint import beside

        if self.checkpoint == "none":
            return None
        return self.checkpoint or beside(self.out)


def run(settings: TrainSettings):
    """Train as ``settings`` say; return the :class:`~invmon.training.loop.TrainResult`
    (launcher local) or the finished TrainJob (launcher trainjob)."""
    config = settings.config()
    if settings.launcher == "trainjob":
        from invmon.cluster import trainjob

        job = settings.trainjob
        return trainjob.train_on_cluster(
            settings.data_uri or settings.data,
            settings.out_uri or settings.out,
            settings.out if settings.out_uri else None,
            config,
            image=job.pods.image,
            namespace=job.pods.namespace,
            num_nodes=job.num_nodes,
            placement=job.pods.placement(nodes_store(settings)),
            endpoint_url=settings.endpoint_url,
            timeout=job.timeout,
            volumes=job.pods.volumes(),
            unschedulable_timeout=job.pods.unschedulable_timeout,
        )
    from invmon.training.loop import fit

    return fit(
        settings.data,
        config,
        out=settings.out,
        checkpoint=settings.checkpoint_location(),
        resume=settings.resume,
        endpoint_url=settings.endpoint_url,
    )


@dataclass(frozen=True)
class TrainOutputs:
    """What a finished training hands a pipeline: its headline metrics, its HTML report and the
    model's metadata."""

    metrics: dict[str, float]
    report: Path
    metadata: dict


def outputs(settings: TrainSettings) -> TrainOutputs:
    """Read back what the run wrote to ``settings.out`` (a local folder): history and report."""
    import json

    from invmon.training.loop import HISTORY_FILE
    from invmon.training.report import REPORT_FILE, summary_metrics

    out = Path(settings.out)
    training = json.loads((out / HISTORY_FILE).read_text())
    metadata = {"framework": "pytorch", "architecture": "resnet50", **settings.hyperparameters()}
    return TrainOutputs(summary_metrics(training), out / REPORT_FILE, metadata)


def nodes_store(settings: TrainSettings) -> str:
    """The store whose S3 Secret TrainJob nodes get by default: the data's, or, when the data is
    a path in the mounted workspace, the model's (they still write it to S3)."""
    data = settings.data_uri or settings.data
    return data if "://" in data else settings.out_uri or settings.out


def _show(result, settings: TrainSettings) -> str | None:
    if settings.launcher == "trainjob":
        return f"TrainJob {result['metadata']['name']} complete -> {settings.out}"
    if result.model_dir is None:  # not rank 0 of a distributed run
        return None
    return (
        f"trained {len(result.history)} epochs; best val accuracy "
        f"{result.best_accuracy:.4f} -> {settings.out}"
    )


TRAIN = Command(
    TrainSettings,
    run,
    description="Train ResNet50 with the original two-layer head. Prints one timestamped line "
    "of Katib-style name=value metrics per epoch, checkpoints every epoch and resumes on its "
    "own. Runs the same under torchrun (one process per GPU), or as a Kubeflow TrainJob.",
    show=_show,
)
