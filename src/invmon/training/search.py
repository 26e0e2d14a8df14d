"""Tune: a Katib-style hyperparameter search over the training loop.

The search is described once, as a :class:`SearchSpec` shaped like a Katib v1beta1 Experiment
(objective, algorithm, parameters with feasible spaces, trial budget, early stopping). Two
backends run it:

- ``local``: Optuna in this process; every trial calls :func:`invmon.training.loop.fit`, reporting
each
  epoch's objective through ``fit``'s ``on_epoch`` hook so that unpromising trials are pruned
  (median stopping, as Katib's ``medianstop``, or Hyperband);
- ``katib``: :mod:`invmon.cluster.katib` renders the same spec as a Katib Experiment whose trials
run
  ``invmon train`` in the train image, creates it on the cluster and waits for it.

Both write the best parameters in the same JSON shape (``best.json``), which
``invmon train --params`` reads, plus ``trials.csv`` and ``search_space.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from invmon.training.config import TUNABLE, TrainConfig, coerce_param
from invmon.training.metrics import EpochResult

log = logging.getLogger(__name__)

ALGORITHMS = ("random", "grid", "tpe", "bayesianoptimization", "cmaes")
BACKENDS = ("local", "katib")
EARLY_STOPPING = ("none", "median", "hyperband")
# Objective metric -> direction. ``val_loss`` is the validation loss ("loss" printed per epoch is
# the training loss, which a search must not optimise).
OBJECTIVES = {"accuracy": "maximize", "val_loss": "minimize"}
BEST_FILE = "best.json"
TRIALS_FILE = "trials.csv"
SPEC_FILE = "search_space.json"


@dataclass(frozen=True)
class Parameter:
    """One searched hyperparameter, in Katib's terms (double, int or categorical)."""

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    values: tuple = ()
    log_scale: bool = False
    grid_points: int = 3

    def __post_init__(self):
        if self.name not in TUNABLE:
            raise ValueError(
                f"parameter {self.name!r} is not a training setting a search can choose "
                f"(allowed: {', '.join(TUNABLE)})"
            )
        if self.type not in ("double", "int", "categorical"):
            raise ValueError(f"parameter {self.name}: type must be double, int or categorical")
        if self.type == "categorical" and not self.values:
            raise ValueError(f"parameter {self.name}: a categorical parameter needs values")
        if self.type != "categorical" and (
            self.min is None or self.max is None or self.min > self.max
        ):
            raise ValueError(f"parameter {self.name}: needs min <= max, got {self.min}..{self.max}")
        if self.log_scale and self.type != "categorical" and self.min <= 0:
            raise ValueError(f"parameter {self.name}: a log scale needs min > 0, got {self.min}")

    def grid(self) -> list:
        """The values a grid search tries (the same on both backends)."""
        if self.type == "categorical":
            return list(self.values)
        if self.type == "int":
            # Evenly spread over the range, both ends included.
            points = max(1, self.grid_points - 1)
            spread = (self.max - self.min) / points
            return sorted({math.floor(self.min + spread * i + 0.5) for i in range(points + 1)})
        if self.grid_points == 1:
            return [self.min]
        if self.log_scale:
            ratio = (self.max / self.min) ** (1 / (self.grid_points - 1))
            return [self.min * ratio**i for i in range(self.grid_points)]
        step = (self.max - self.min) / (self.grid_points - 1)
        return [self.min + step * i for i in range(self.grid_points)]

    def parse(self, text) -> int | float:
        """A value as Katib reports it (a string) in the type the training run takes."""
        return coerce_param(self.name, text)

    def katib_spec(self, algorithm: str):
        """The parameter as a typed Katib ParameterSpec.

        For the grid algorithm, every parameter becomes a ``discrete`` list of exactly the values
        :meth:`grid` gives, so that Katib's grid tries the points the local grid tries (Katib's own
        grid over a double is linear and needs a step).
        """
        from kubeflow_katib_api import models

        if algorithm == "grid" or self.type == "categorical":
            values = self.grid() if algorithm == "grid" else list(self.values)
            kind = "categorical" if self.type == "categorical" else "discrete"
            space = models.V1beta1FeasibleSpace(list=[_katib_value(v) for v in values])
        else:
            space = models.V1beta1FeasibleSpace(
                min=_katib_value(self.min if self.type == "double" else int(self.min)),
                max=_katib_value(self.max if self.type == "double" else int(self.max)),
                distribution="logUniform" if self.log_scale else "uniform",
            )
            kind = self.type
        return models.V1beta1ParameterSpec(name=self.name, parameterType=kind, feasibleSpace=space)

    def to_katib(self, algorithm: str = "random") -> dict:
        """The parameter as a Katib ParameterSpec, in the API's JSON form."""
        return self.katib_spec(algorithm).to_dict()


def _katib_value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


DEFAULT_BATCH_SIZES = (16, 32, 64)
# The original project's learning rates, for its smallest batch size.
LR_RANGE = (3e-4, 3e-3)


def default_parameters(
    max_epochs: int = 10, batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
) -> list[Parameter]:
    """The original project's search space: learning rate, batch size and epochs.

    ``batch_sizes`` are the sizes worth trying. Trials of one or two epochs favour the smallest,
    which takes the most optimizer steps per epoch, whatever it costs per image and whether or not
    it stays ahead over a longer final training: on a CPU, batch 16 costs about 1.5x more per
    image than 64 (docs/benchmarks.md, "The main job"). With one size, every trial, and so the
    final training, uses it.

    The learning-rate range is the original one when the smallest size is 16; for larger sizes
    it moves up in proportion (the linear-scaling rule: k times the batch, k times the rate), so
    that batch 64 alone searches 1.2e-3 to 1.2e-2 rather than rates made for 16 images a step.
    """
    scale = min(batch_sizes) / DEFAULT_BATCH_SIZES[0]
    low, high = LR_RANGE
    return [
        Parameter("lr", "double", low * scale, high * scale, log_scale=True),
        Parameter("batch_size", "categorical", values=tuple(batch_sizes)),
        Parameter("epochs", "int", max(1, max_epochs // 2), max_epochs),
    ]


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> tuple[int, ...]:
    """``"32,64"`` -> ``(32, 64)``; ValueError naming ``option`` for anything but distinct
    positive integers."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise ValueError(
            f"{option} must be distinct positive integers separated by commas (e.g. 16,32,64), "
            f"got {text!r}"
        )
    return sizes


@dataclass(frozen=True)
class SearchSpec:
    """A search: parameters, objective and budget, as a Katib Experiment describes them."""

    parameters: list[Parameter] = field(default_factory=default_parameters)
    objective_metric: str = "accuracy"
    algorithm: str = "tpe"
    max_trials: int = 4
    parallel_trials: int = 1
    max_failed_trials: int = 1
    early_stopping: str = "none"
    # Median stopping starts once this many trials have finished, at this epoch (Katib's
    # medianstop min_trials_required and start_step).
    min_trials: int = 2
    start_epoch: int = 1

    def __post_init__(self):
        checks = [
            (
                self.algorithm in ALGORITHMS,
                f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}",
            ),
            (self.max_trials >= 1, f"--trials must be >= 1, got {self.max_trials}"),
            (
                self.parallel_trials >= 1,
                f"--parallel-trials must be >= 1, got {self.parallel_trials}",
            ),
            (
                self.max_failed_trials >= 0,
                f"--max-failed-trials must be >= 0, got {self.max_failed_trials}",
            ),
            (
                self.objective_metric in OBJECTIVES,
                f"--objective must be one of {', '.join(OBJECTIVES)}, "
                f"got {self.objective_metric!r}",
            ),
            (
                self.early_stopping in EARLY_STOPPING,
                f"--early-stopping must be one of {', '.join(EARLY_STOPPING)}, "
                f"got {self.early_stopping!r}",
            ),
            (self.min_trials >= 1, f"min trials must be >= 1, got {self.min_trials}"),
            (self.start_epoch >= 1, f"start epoch must be >= 1, got {self.start_epoch}"),
            (bool(self.parameters), "a search needs at least one parameter"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"parameters must have distinct names, got {names}")

    @property
    def objective_type(self) -> str:
        """``maximize`` for accuracy, ``minimize`` for val_loss."""
        return OBJECTIVES[self.objective_metric]

    def parameter(self, name: str) -> Parameter:
        """The searched parameter called ``name``."""
        for p in self.parameters:
            if p.name == name:
                return p
        searched = [p.name for p in self.parameters]
        raise ValueError(f"{name!r} is not a searched parameter (searched: {searched})")

    def to_dict(self) -> dict:
        """The spec in Katib's vocabulary (objective, algorithm, parameters, budget)."""
        data = {
            "objective": {
                "type": self.objective_type,
                "objectiveMetricName": self.objective_metric,
            },
            "algorithm": {"algorithmName": self.algorithm},
            "parallelTrialCount": self.parallel_trials,
            "maxTrialCount": self.max_trials,
            "maxFailedTrialCount": self.max_failed_trials,
            "parameters": [p.to_katib(self.algorithm) for p in self.parameters],
        }
        if self.early_stopping != "none":
            data["earlyStopping"] = {
                "algorithmName": self.early_stopping,
                "minTrials": self.min_trials,
                "startEpoch": self.start_epoch,
            }
        return data


@dataclass
class TuneResult:
    """The best trial and every trial's outcome."""

    best_parameters: dict
    best_value: float
    trials: list[dict]

    @property
    def trial_epochs(self) -> int:
        """Epochs trained over all trials (what a search costs)."""
        return sum(int(t.get("trained_epochs") or 0) for t in self.trials)

    @property
    def pruned(self) -> int:
        """Trials stopped early."""
        return sum(1 for t in self.trials if t.get("state") in ("PRUNED", "EarlyStopped"))

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return {**asdict(self), "trial_epochs": self.trial_epochs, "pruned": self.pruned}


# -- local backend ---------------------------------------------------------------------------


def _sampler(spec: SearchSpec, seed: int):
    import optuna

    if spec.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.algorithm == "grid":
        return optuna.samplers.GridSampler({p.name: p.grid() for p in spec.parameters}, seed=seed)
    if spec.algorithm == "cmaes":
        # CMA-ES samples numbers; categorical parameters fall back to random sampling.
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            n_startup_trials=min(2, spec.max_trials),
            warn_independent_sampling=False,
        )
    if spec.algorithm == "bayesianoptimization":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(4, spec.max_trials))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, spec.max_trials))


def _pruner(spec: SearchSpec, max_epochs: int):
    import optuna

    if spec.early_stopping == "median":
        # Katib's medianstop: from start_epoch on, stop a trial whose best value so far is worse
        # than the median of the earlier trials' values at the same epoch. Epochs are reported
        # as steps 1, 2, ...; Optuna prunes no step below n_warmup_steps.
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.min_trials, n_warmup_steps=spec.start_epoch
        )
    if spec.early_stopping == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=spec.start_epoch, max_resource=max(spec.start_epoch, max_epochs)
        )
    return optuna.pruners.NopPruner()


def _max_epochs(spec: SearchSpec, base: TrainConfig) -> int:
    searched = [p for p in spec.parameters if p.name == "epochs"]
    if not searched:
        return base.epochs
    p = searched[0]
    return int(max(p.values) if p.type == "categorical" else p.max)


def _suggest(trial, parameter: Parameter):
    if parameter.type == "categorical":
        return trial.suggest_categorical(parameter.name, list(parameter.values))
    if parameter.type == "int":
        return trial.suggest_int(
            parameter.name, int(parameter.min), int(parameter.max), log=parameter.log_scale
        )
    return trial.suggest_float(
        parameter.name, parameter.min, parameter.max, log=parameter.log_scale
    )


def run_local(data: str | Path, spec: SearchSpec, base: TrainConfig, seed: int = 0) -> TuneResult:
    """Run the search here with Optuna; every trial is a call of the training loop."""
    import optuna

    from invmon.training.loop import fit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        # Hyperband assigns trials to brackets by a hash of the study name: a fixed name keeps a
        # seeded search repeatable (Optuna's default name is random).
        study_name=f"invmon-search-{seed}",
        direction=spec.objective_type,
        sampler=_sampler(spec, seed),
        pruner=_pruner(spec, _max_epochs(spec, base)),
    )
    metric = spec.objective_metric
    better = max if spec.objective_type == "maximize" else min

    def objective(trial) -> float:
        params = {p.name: _suggest(trial, p) for p in spec.parameters}
        print(f"trial {trial.number}: {params}", flush=True)
        values: list[float] = []

        def report(epoch: EpochResult) -> None:
            values.append(getattr(epoch, metric))
            trial.set_user_attr("epochs", len(values))
            trial.set_user_attr("best", better(values))
            trial.report(better(values), epoch.epoch)
            if trial.should_prune():
                print(f"trial {trial.number}: pruned after epoch {epoch.epoch}", flush=True)
                raise optuna.TrialPruned()

        fit(data, base.replace(**params), out=None, on_epoch=report)
        return better(values)

    study.optimize(objective, n_trials=spec.max_trials, catch=(RuntimeError,))
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"no trial of {len(study.trials)} completed")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    if len(failed) > spec.max_failed_trials:
        raise RuntimeError(
            f"{len(failed)} trials failed (at most {spec.max_failed_trials} allowed by "
            "--max-failed-trials)"
        )
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.value is not None else t.user_attrs.get("best"),
            "trained_epochs": t.user_attrs.get("epochs", 0),
            **t.params,
        }
        for t in study.trials
    ]
    return TuneResult(study.best_params, float(study.best_value), trials)


def tune(
    data: str | Path,
    out: str | Path,
    spec: SearchSpec | None = None,
    base: TrainConfig | None = None,
    backend: str = "local",
    seed: int = 0,
) -> TuneResult:
    """Search hyperparameters for training on ``data`` here; write best.json and trials.csv.

    The ``katib`` backend runs on a cluster: see :func:`invmon.cluster.katib.run_experiment`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "katib":
        raise ValueError(
            "--backend katib runs the search as a Katib Experiment on a cluster: use "
            "invmon.cluster.katib.run_experiment (invmon tune --backend katib)"
        )
    spec = spec or SearchSpec()
    base = base or TrainConfig()
    result = run_local(data, spec, base, seed)
    write_outputs(Path(out), spec, result, base)
    return result


def write_outputs(
    out: Path, spec: SearchSpec, result: TuneResult, base: TrainConfig | None = None
) -> None:
    """Write best.json (read by ``train --params``), trials.csv and the spec.

    best.json also records ``base``, what every trial trained with but for the searched
    parameters, so that a search's result says which recipe it holds for.
    """
    out.mkdir(parents=True, exist_ok=True)
    best = {
        "parameters": result.best_parameters,
        "objective": {"metric": spec.objective_metric, "value": result.best_value},
        "search": {"trials": len(result.trials), "trial_epochs": result.trial_epochs},
    }
    if base is not None:
        best["training"] = base.to_dict()
    (out / BEST_FILE).write_text(json.dumps(best, indent=2) + "\n")
    (out / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    columns = ["number", "state", "value", "trained_epochs", *[p.name for p in spec.parameters]]
    with open(out / TRIALS_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.trials)
