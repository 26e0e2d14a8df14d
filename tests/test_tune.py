"""Tune: the Katib-shaped search space and the local Optuna backend reusing train's loop."""

import csv
import json

import pytest

from invmon.stages.tune import TuneSettings
from invmon.stages.tune import run as run_tune
from invmon.training.config import TrainConfig, TrainOverrides
from invmon.training.search import ALGORITHMS, Parameter, SearchSpec, default_parameters, tune


def test_search_space_maps_onto_katib_parameter_specs():
    spec = SearchSpec(parameters=default_parameters(6), algorithm="random", max_trials=3)
    katib = spec.to_dict()
    assert katib["objective"] == {"type": "maximize", "objectiveMetricName": "accuracy"}
    assert katib["algorithm"] == {"algorithmName": "random"}
    by_name = {p["name"]: p for p in katib["parameters"]}
    assert by_name["lr"]["parameterType"] == "double"
    assert by_name["lr"]["feasibleSpace"]["distribution"] == "logUniform"
    assert by_name["batch_size"]["feasibleSpace"] == {"list": ["16", "32", "64"]}
    assert by_name["epochs"]["feasibleSpace"] == {
        "min": "3",
        "max": "6",
        "distribution": "uniform",
    }


def test_the_searched_batch_sizes_are_a_setting():
    default = {p.name: p for p in TuneSettings(data="d", out="o").spec().parameters}
    assert default["batch_size"].values == (16, 32, 64)
    one = TuneSettings(data="d", out="o", batch_sizes="64").spec()
    katib = {p["name"]: p for p in one.to_dict()["parameters"]}
    assert katib["batch_size"]["feasibleSpace"] == {"list": ["64"]}


@pytest.mark.parametrize("text", ["", "16,x", "0,32", "32,32", "16;32"])
def test_bad_batch_sizes_are_named(text):
    with pytest.raises(ValueError, match=f"--batch-sizes must be .* got {text!r}"):
        TuneSettings(data="d", out="o", batch_sizes=text)


def test_one_batch_size_is_what_the_search_hands_to_training(shards_dir, tmp_path):
    settings = TuneSettings(
        data=str(shards_dir),
        out=str(tmp_path),
        trials=1,
        max_epochs=1,
        batch_sizes="32",
        training=TrainOverrides(device="cpu"),
    )
    result = run_tune(settings)
    best = json.loads((tmp_path / "best.json").read_text())
    assert result.best_parameters["batch_size"] == best["parameters"]["batch_size"] == 32


def test_grid_values():
    assert Parameter("epochs", "int", 1, 5, grid_points=3).grid() == [1, 3, 5]
    assert Parameter("epochs", "int", 5, 10, grid_points=3).grid() == [5, 8, 10]
    values = Parameter("lr", "double", 1e-4, 1e-2, log_scale=True, grid_points=3).grid()
    assert values == pytest.approx([1e-4, 1e-3, 1e-2])


def test_local_search_writes_best_and_trials(shards_dir, tmp_path):
    spec = SearchSpec(
        parameters=[
            Parameter("lr", "double", 1e-4, 1e-3, log_scale=True),
            Parameter("batch_size", "categorical", values=(32, 64)),
            Parameter("epochs", "int", 1, 1),
        ],
        algorithm="random",
        max_trials=2,
    )
    result = tune(shards_dir, tmp_path, spec=spec, base=TrainConfig(device="cpu"))
    best = json.loads((tmp_path / "best.json").read_text())
    assert set(best["parameters"]) == {"lr", "batch_size", "epochs"}
    assert best["objective"]["value"] == result.best_value
    with open(tmp_path / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(r["state"] == "COMPLETE" for r in rows)
    assert max(float(r["value"]) for r in rows) == result.best_value
    assert [r["trained_epochs"] for r in rows] == ["1", "1"] and result.trial_epochs == 2
    assert best["search"] == {"trials": 2, "trial_epochs": 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithm": "hyperband"}, "--algorithm"),
        ({"max_trials": 0}, "--trials"),
        ({"objective_metric": "loss"}, "--objective must be one of accuracy, val_loss"),
        ({"early_stopping": "asha"}, "--early-stopping"),
    ],
)
def test_bad_spec_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSpec(**kwargs)


def test_a_parameter_train_cannot_take_is_named():
    with pytest.raises(ValueError, match="'momentum' is not a training setting"):
        Parameter("momentum", "double", 0.8, 0.99)


def test_unknown_backend_is_named(shards_dir, tmp_path):
    with pytest.raises(ValueError, match="--backend"):
        tune(shards_dir, tmp_path, backend="slurm")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_runs_locally(algorithm, shards_dir, tmp_path):
    """The five Katib algorithms also run here (Optuna's samplers of the same family)."""
    spec = SearchSpec(
        parameters=[
            Parameter("lr", "double", 1e-4, 1e-3, log_scale=True, grid_points=2),
            Parameter("batch_size", "categorical", values=(32, 64)),
        ],
        algorithm=algorithm,
        max_trials=2,
    )
    result = tune(shards_dir, tmp_path, spec=spec, base=TrainConfig(device="cpu", epochs=1))
    assert len(result.trials) == 2 and 1e-4 <= result.best_parameters["lr"] <= 1e-3


def _median_spec(start_epoch: int) -> SearchSpec:
    """Median stopping between two learning rates whose curves differ from the first epoch."""
    return SearchSpec(
        parameters=[Parameter("lr", "categorical", values=(1.0, 1e-12))],
        algorithm="random",
        max_trials=6,
        early_stopping="median",
        min_trials=1,
        start_epoch=start_epoch,
    )


def test_median_pruning_stops_trials_behind_the_median(shards_dir, tmp_path):
    """Trials are pruned through train's on_epoch hook: the loop is fit's, not a copy.

    Two learning rates give two different curves: 1e-12 keeps (nearly) the initial model, 1 wrecks
    it in the first epoch (on this tiny set a sane rate is not reliably better than the initial
    model within 3 epochs). Seeded training repeats each curve exactly, so a repeat of the worse
    one falls behind the median."""
    result = tune(
        shards_dir, tmp_path, spec=_median_spec(1), base=TrainConfig(device="cpu", epochs=3)
    )
    assert {t["lr"] for t in result.trials} == {1.0, 1e-12}
    assert result.pruned >= 1
    assert result.best_parameters == {"lr": 1e-12}
    assert result.trial_epochs < 3 * len(result.trials)
    with open(tmp_path / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(int(r["trained_epochs"]) < 3 for r in rows if r["state"] == "PRUNED")
    assert all(int(r["trained_epochs"]) == 3 for r in rows if r["state"] == "COMPLETE")
    completed = [float(r["value"]) for r in rows if r["state"] == "COMPLETE"]
    assert result.best_value == max(completed)


def test_median_pruning_waits_for_the_start_epoch(shards_dir, tmp_path):
    """Katib's start_step: no trial is stopped before it has reported ``start_epoch`` epochs."""
    result = tune(
        shards_dir, tmp_path, spec=_median_spec(2), base=TrainConfig(device="cpu", epochs=3)
    )
    assert result.pruned >= 1
    with open(tmp_path / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(int(r["trained_epochs"]) == 2 for r in rows if r["state"] == "PRUNED")


def test_hyperband_pruner_runs(shards_dir, tmp_path):
    spec = SearchSpec(
        parameters=[Parameter("lr", "double", 1e-5, 1e-2, log_scale=True)],
        algorithm="random",
        max_trials=3,
        early_stopping="hyperband",
    )
    result = tune(shards_dir, tmp_path, spec=spec, base=TrainConfig(device="cpu", epochs=2))
    assert len(result.trials) == 3 and result.trial_epochs <= 6


def test_a_seeded_hyperband_search_repeats(shards_dir, tmp_path):
    """Hyperband's brackets depend on the study's name: a seeded search must not depend on a
    random one, so two runs stop the same trials at the same epochs."""
    spec = SearchSpec(
        parameters=[Parameter("lr", "double", 1e-5, 1e-2, log_scale=True)],
        algorithm="random",
        max_trials=5,
        early_stopping="hyperband",
    )
    tables = []
    for run in ("a", "b"):
        base = TrainConfig(device="cpu", epochs=9)
        tune(shards_dir, tmp_path / run, spec=spec, base=base, seed=3)
        with open(tmp_path / run / "trials.csv") as handle:
            tables.append([(r["state"], r["trained_epochs"]) for r in csv.DictReader(handle)])
    assert any(state == "PRUNED" for state, _ in tables[0]), tables[0]  # else nothing to repeat
    assert tables[0] == tables[1]


def test_the_tune_component_trains_its_trials_with_the_pipelines_recipe(shards_dir, tmp_path):
    """The search tunes the recipe the final training will use: its trials train with the
    pipeline's recipe and weights (they once trained with the default recipe, whatever
    recipe said), and best.json records what they trained with."""
    from kfp import dsl

    from invmon.components import tune

    search = dsl.Artifact(name="search", uri=str(tmp_path / "search"))
    tune.python_func(
        shards=dsl.Dataset(name="shards", uri=str(shards_dir)),
        search=search,
        trials=1,
        max_epochs=1,
        algorithm="random",
        device="cpu",
        seed=3,
        recipe="original",
        weights="none",
    )
    best = json.loads((tmp_path / "search" / "best.json").read_text())
    assert best["training"]["schedule"] == "constant"  # the original recipe, not the default
    assert best["training"]["warmup_fraction"] == 0.0
    assert best["training"]["seed"] == 3 and best["training"]["device"] == "cpu"
    assert search.metadata["best"] == best["parameters"]
