"""Tune: a Katib-style hyperparameter search whose every trial runs the training loop.

The settings below are the tune stage's one definition: ``invmon tune`` derives its options from
them, and the tune component builds them from its inputs. :func:`run` builds the search (a
:class:`~invmon.training.search.SearchSpec`) and the trials' training config (the same recipe
resolution as train: :meth:`TuneSettings.base`), then dispatches to the backend: Optuna in this
process (``local``) or a Katib Experiment on the cluster (``katib``). Both write ``best.json``,
``trials.csv`` and ``search_space.json`` in the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from invmon.cluster.gpu_pool import GpuPool
from invmon.cluster.placement import PodOptions
from invmon.core.command import Command
from invmon.core.settings import Settings, inherit, setting
from invmon.training.config import RecipeChoice, TrainConfig, TrainOverrides, recipe_config
from invmon.training.search import (
    ALGORITHMS,
    EARLY_STOPPING,
    OBJECTIVES,
    SearchSpec,
    parse_batch_sizes,
)


@dataclass(frozen=True)
class KatibOptions(Settings):
    """The katib backend: the Experiment's name, its trial pods, and how long to wait."""

    name: str = setting(
        "invmon-tune",
        help="Experiment name (empty: named after --out and --data, so that a retried task "
        "follows the Experiment it started)",
    )
    pods: PodOptions = setting(default_factory=PodOptions, help="katib trial pods")
    timeout: float = setting(24 * 3600.0, help="seconds to wait for the Experiment", above=0)
    dry_run: bool = setting(False, help="print the Experiment YAML, apply nothing")


@dataclass(frozen=True)
class TuneSettings(Settings):
    """Settings of a search: data, budget, algorithm, the trials' recipe and the backend."""

    data: str = setting(
        help="preprocessed folder (katib: its s3:// location, or its path in --workspace-claim)"
    )
    out: str = setting(help="output folder for best.json and trials.csv")
    trials: int = setting(4, help="number of trials", minimum=1)
    algorithm: str = setting("tpe", help="search algorithm", choices=ALGORITHMS)
    backend: str = inherit(
        GpuPool,
        "tune_backend",
        help="local: Optuna in this process; katib: a Katib Experiment on the cluster",
    )
    objective: str = setting(
        "accuracy",
        help="accuracy (validation, maximised) or val_loss (minimised)",
        choices=tuple(OBJECTIVES),
    )
    early_stopping: str = setting(
        "none",
        help="stop unpromising trials: median (Katib medianstop) or hyperband (local only)",
        choices=EARLY_STOPPING,
    )
    max_epochs: int = setting(10, help="most epochs a trial trains", minimum=1)
    batch_sizes: str = setting(
        "16,32,64",
        help="batch sizes the trials try, comma-separated (one size: every trial, and so the "
        "final training, uses it)",
    )
    parallel_trials: int = setting(2, help="trials at once (katib)", minimum=1)
    max_failed_trials: int = setting(1, help="failed trials before the search fails", minimum=0)
    recipe: str = inherit(
        RecipeChoice,
        "recipe",
        help="the trials' recipe, and so the final training's: default (warmup + cosine decay) "
        "or original (the original project's Adam at a constant rate)",
    )
    training: TrainOverrides = setting(
        default_factory=TrainOverrides,
        help="training recipe of every trial (explicit options override --recipe; searched "
        "ones are the search's)",
    )
    endpoint_url: str | None = setting(
        None, help="S3-compatible endpoint the katib trials read the data from"
    )
    katib: KatibOptions = setting(default_factory=KatibOptions, help="katib backend")
    # Where trial pods find the data (a KFP artifact's URI, when this process sees it as a
    # mounted path). Empty: --data itself.
    data_uri: str = setting("", help="the data's location for trial pods", cli=False)

    def __post_init__(self):
        super().__post_init__()
        parse_batch_sizes(self.batch_sizes)

    def spec(self) -> SearchSpec:
        """The search: the original project's space (lr, batch size, epochs) and the budget."""
        from invmon.training.search import default_parameters

        return SearchSpec(
            parameters=default_parameters(self.max_epochs, parse_batch_sizes(self.batch_sizes)),
            objective_metric=self.objective,
            algorithm=self.algorithm,
            max_trials=self.trials,
            parallel_trials=self.parallel_trials,
            max_failed_trials=self.max_failed_trials,
            early_stopping=self.early_stopping,
        )

    def base(self) -> TrainConfig:
        """What every trial trains with, but for the searched parameters: the recipe, then the
        explicit options (train resolves its config the same way)."""
        return recipe_config(self.recipe, self.training.given())


def run(settings: TuneSettings):
    """Run the search as ``settings`` say; return the :class:`~invmon.training.search.TuneResult`
    (or, for a katib dry run, the Experiment manifest)."""
    spec, base = settings.spec(), settings.base()
    if settings.backend == "local":
        from invmon.training.search import tune

        return tune(settings.data, settings.out, spec=spec, base=base, seed=base.seed)
    from invmon.cluster import katib

    options = settings.katib
    manifest = katib.experiment_manifest(
        settings.data_uri or settings.data,
        settings.out,
        spec,
        base,
        image=options.pods.image,
        namespace=options.pods.namespace,
        placement=options.pods.placement(settings.data_uri or settings.data),
        endpoint_url=settings.endpoint_url,
        name=options.name,
        volumes=options.pods.volumes(),
    )
    if options.dry_run:
        return manifest
    return katib.run_experiment(
        manifest,
        settings.out,
        spec,
        base,
        timeout=options.timeout,
        unschedulable_timeout=options.pods.unschedulable_timeout,
    )


def result_metadata(result) -> dict:
    """The search's result as the metadata of a pipeline's search artifact."""
    return {
        "best": result.best_parameters,
        "best_value": result.best_value,
        "trial_epochs": result.trial_epochs,
        "pruned_trials": result.pruned,
    }


def _show(result, settings: TuneSettings) -> str:
    if isinstance(result, dict):  # a dry run's manifest
        import yaml

        return yaml.safe_dump(result, sort_keys=False).rstrip("\n")
    line = f"best {settings.objective}={result.best_value:.4f} with {result.best_parameters}"
    if settings.backend == "local":
        line += f" ({result.trial_epochs} trial-epochs, {result.pruned} trials pruned)"
    return line


TUNE = Command(
    TuneSettings,
    run,
    description="Katib-style hyperparameter search; each trial runs the training loop "
    "(locally with Optuna and pruning, or as a Katib Experiment on a cluster). Writes best.json "
    "and trials.csv.",
    show=_show,
)
