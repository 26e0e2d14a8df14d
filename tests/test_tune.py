"""Tune: the Katib-shaped search space and the local Optuna backend reusing train's loop."""

import csv
import json

import pytest

from invmon.train import TrainConfig
from invmon.tune import Parameter, SearchSpec, default_parameters, tune


def test_search_space_maps_onto_katib_parameter_specs():
    spec = SearchSpec(parameters=default_parameters(6), algorithm="random", max_trials=3)
    katib = spec.to_dict()
    assert katib["objective"] == {"type": "maximize", "objectiveMetricName": "accuracy"}
    assert katib["algorithm"] == {"algorithmName": "random"}
    by_name = {p["name"]: p for p in katib["parameters"]}
    assert by_name["lr"]["parameterType"] == "double"
    assert by_name["lr"]["feasibleSpace"]["distribution"] == "logUniform"
    assert by_name["batch_size"]["feasibleSpace"] == {"list": ["16", "32", "64"]}
    assert by_name["epochs"]["feasibleSpace"] == {"min": "3", "max": "6"}


def test_grid_values():
    assert Parameter("e", "int", 1, 5, grid_points=3).grid() == [1, 3, 5]
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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"algorithm": "hyperband"}, "--algorithm"), ({"max_trials": 0}, "--trials")],
)
def test_bad_spec_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSpec(**kwargs)


def test_unknown_backend_is_named(shards_dir, tmp_path):
    with pytest.raises(ValueError, match="--backend"):
        tune(shards_dir, tmp_path, backend="slurm")
