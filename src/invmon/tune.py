"""Tune: a Katib-style hyperparameter search over the training loop.

The search is described once, as a :class:`SearchSpec` shaped like a Katib v1beta1 Experiment
(objective, algorithm, parameters with feasible spaces, trial budget). The local backend runs it
with Optuna, each trial calling :func:`invmon.train.fit`; a Katib backend renders the same spec as
an Experiment for a cluster. Both write the best parameters in the same JSON shape (``best.json``),
which ``invmon train --params`` reads.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from invmon.train import TrainConfig, fit

log = logging.getLogger(__name__)

ALGORITHMS = ("random", "tpe", "grid")
BACKENDS = ("local",)
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
        if self.type not in ("double", "int", "categorical"):
            raise ValueError(f"parameter {self.name}: type must be double, int or categorical")
        if self.type == "categorical" and not self.values:
            raise ValueError(f"parameter {self.name}: a categorical parameter needs values")
        if self.type != "categorical" and (
            self.min is None or self.max is None or self.min > self.max
        ):
            raise ValueError(f"parameter {self.name}: needs min <= max, got {self.min}..{self.max}")

    def grid(self) -> list:
        """The values a grid search tries."""
        if self.type == "categorical":
            return list(self.values)
        if self.type == "int":
            step = max(1, math.ceil((self.max - self.min) / max(1, self.grid_points - 1)))
            return list(range(int(self.min), int(self.max) + 1, step))
        if self.grid_points == 1:
            return [self.min]
        if self.log_scale:
            ratio = (self.max / self.min) ** (1 / (self.grid_points - 1))
            return [self.min * ratio**i for i in range(self.grid_points)]
        step = (self.max - self.min) / (self.grid_points - 1)
        return [self.min + step * i for i in range(self.grid_points)]

    def to_katib(self) -> dict:
        """The parameter as a Katib ParameterSpec."""
        if self.type == "categorical":
            space = {"list": [str(v) for v in self.values]}
        else:
            space = {
                "min": str(self.min if self.type == "double" else int(self.min)),
                "max": str(self.max if self.type == "double" else int(self.max)),
            }
            if self.log_scale:
                space["distribution"] = "logUniform"
        kind = "categorical" if self.type == "categorical" else self.type
        return {"name": self.name, "parameterType": kind, "feasibleSpace": space}


def default_parameters(max_epochs: int = 10) -> list[Parameter]:
    """The original project's search space: learning rate, batch size and epochs."""
    return [
        Parameter("lr", "double", 3e-4, 3e-3, log_scale=True),
        Parameter("batch_size", "categorical", values=(16, 32, 64)),
        Parameter("epochs", "int", max(1, max_epochs // 2), max_epochs),
    ]


@dataclass(frozen=True)
class SearchSpec:
    """A search: parameters, objective and budget, as a Katib Experiment describes them."""

    parameters: list[Parameter] = field(default_factory=default_parameters)
    objective_metric: str = "accuracy"
    objective_type: str = "maximize"
    algorithm: str = "tpe"
    max_trials: int = 4
    parallel_trials: int = 1
    max_failed_trials: int = 1

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}"
            )
        if self.max_trials < 1:
            raise ValueError(f"--trials must be >= 1, got {self.max_trials}")
        if self.objective_type not in ("maximize", "minimize"):
            raise ValueError(
                f"objective type must be maximize or minimize, got {self.objective_type!r}"
            )

    def to_dict(self) -> dict:
        """The spec in Katib's vocabulary (objective, algorithm, parameters, budget)."""
        return {
            "objective": {
                "type": self.objective_type,
                "objectiveMetricName": self.objective_metric,
            },
            "algorithm": {"algorithmName": self.algorithm},
            "parallelTrialCount": self.parallel_trials,
            "maxTrialCount": self.max_trials,
            "maxFailedTrialCount": self.max_failed_trials,
            "parameters": [p.to_katib() for p in self.parameters],
        }


@dataclass
class TuneResult:
    """The best trial and every trial's outcome."""

    best_parameters: dict
    best_value: float
    trials: list[dict]

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


def _sampler(spec: SearchSpec, seed: int):
    import optuna

    if spec.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.algorithm == "grid":
        return optuna.samplers.GridSampler({p.name: p.grid() for p in spec.parameters}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, spec.max_trials))


def _suggest(trial, parameter: Parameter):
    if parameter.type == "categorical":
        return trial.suggest_categorical(parameter.name, list(parameter.values))
    if parameter.type == "int":
        return trial.suggest_int(parameter.name, int(parameter.min), int(parameter.max))
    return trial.suggest_float(
        parameter.name, parameter.min, parameter.max, log=parameter.log_scale
    )


def run_local(data: str | Path, spec: SearchSpec, base: TrainConfig, seed: int = 0) -> TuneResult:
    """Run the search here with Optuna; every trial is a call of the training loop."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if spec.objective_type == "maximize" else "minimize"
    study = optuna.create_study(direction=direction, sampler=_sampler(spec, seed))
    metric = spec.objective_metric

    def objective(trial) -> float:
        params = {p.name: _suggest(trial, p) for p in spec.parameters}
        config = base.replace(**params)
        print(f"trial {trial.number}: {params}", flush=True)
        result = fit(data, config, out=None)
        values = [getattr(e, metric) for e in result.history]
        return max(values) if direction == "maximize" else min(values)

    study.optimize(objective, n_trials=spec.max_trials, catch=(RuntimeError,))
    trials = [
        {"number": t.number, "state": t.state.name, "value": t.value, **t.params}
        for t in study.trials
    ]
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"no trial of {len(study.trials)} completed")
    return TuneResult(study.best_params, float(study.best_value), trials)


def tune(
    data: str | Path,
    out: str | Path,
    spec: SearchSpec | None = None,
    base: TrainConfig | None = None,
    backend: str = "local",
    seed: int = 0,
) -> TuneResult:
    """Search hyperparameters for training on ``data``; write best.json and trials.csv."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    spec = spec or SearchSpec()
    base = base or TrainConfig()
    result = run_local(data, spec, base, seed)
    write_outputs(Path(out), spec, result)
    return result


def write_outputs(out: Path, spec: SearchSpec, result: TuneResult) -> None:
    """Write best.json (read by ``train --params``), trials.csv and the spec."""
    out.mkdir(parents=True, exist_ok=True)
    best = {
        "parameters": result.best_parameters,
        "objective": {"metric": spec.objective_metric, "value": result.best_value},
    }
    (out / BEST_FILE).write_text(json.dumps(best, indent=2) + "\n")
    (out / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    columns = ["number", "state", "value", *[p.name for p in spec.parameters]]
    with open(out / TRIALS_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.trials)
