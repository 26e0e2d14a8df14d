"""A retrain round: training starts from a given model, a mismatched one is refused, and the gate
keeps a round that made the model worse from being deployed."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from invmon.data.s3 import make_client
from invmon.data.shards import DatasetIndex
from invmon.data.transforms import Preprocessing
from invmon.pipelines.local_run import RunSettings, format_summary, summarize_run
from invmon.stages import evaluate
from invmon.training import distributed
from invmon.training.config import TrainConfig
from invmon.training.loop import build_run
from invmon.training.model import ModelConfig, build_model, load_model, save_model

COMPILED = Path(__file__).parents[1] / "pipelines" / "inventory_pipeline.yaml"


def _run_for(shards_dir, endpoint_url=None, **config):
    index = DatasetIndex.read(shards_dir)
    config = TrainConfig(batch_size=16, device="cpu", **config)
    place = distributed.Distributed()
    return build_run(config, index, index.split("train"), torch.device("cpu"), place, endpoint_url)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    theirs = b.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in a.state_dict().items())


def test_training_from_an_init_model_starts_from_its_weights(model_dir, shards_dir):
    trained, _ = load_model(model_dir)
    assert _same_weights(_run_for(shards_dir, init_model=str(model_dir)).plain_model, trained)
    assert not _same_weights(_run_for(shards_dir).plain_model, trained), "from scratch differs"


def test_a_retrain_round_fine_tunes_at_a_tenth_of_the_rate(model_dir, shards_dir):
    """Two epochs at the searched from-scratch rate took a converged model 8.6 points down; at a
    tenth of it, 1.4-1.7 (docs/recount.md). The rate of a round with a starting model is scaled."""

    def start_lr(run) -> float:
        return run.optimizer.param_groups[0]["initial_lr"]

    assert start_lr(_run_for(shards_dir, lr=4e-3)) == pytest.approx(4e-3)
    assert start_lr(_run_for(shards_dir, lr=4e-3, init_model=str(model_dir))) == pytest.approx(4e-4)
    kept = _run_for(shards_dir, lr=4e-3, init_model=str(model_dir), fine_tune_lr_scale=1.0)
    assert start_lr(kept) == pytest.approx(4e-3)
    with pytest.raises(ValueError, match=r"--fine-tune-lr-scale must be > 0, got 0\.0"):
        TrainConfig(fine_tune_lr_scale=0.0)


def test_an_init_model_on_s3_is_fetched(model_dir, shards_dir, s3_url, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")  # moto accepts any signature
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    client = make_client(s3_url)
    client.create_bucket(Bucket="production")
    for path in Path(model_dir).iterdir():
        client.upload_file(str(path), "production", f"models/counter/{path.name}")
    run = _run_for(shards_dir, s3_url, init_model="s3://production/models/counter")
    assert _same_weights(run.plain_model, load_model(model_dir)[0])
    # An empty prefix is named as the model it was meant to be, not as a dataset.
    with pytest.raises(ValueError, match=r"models/none holds no objects \(expected the --init"):
        _run_for(shards_dir, s3_url, init_model="s3://production/models/none")


def test_a_starting_model_of_other_classes_or_image_size_is_refused(shards_dir, tmp_path):
    other = ModelConfig(classes=(0, 1, 2), preprocessing=Preprocessing(image_size=48))
    save_model(build_model(other), other, tmp_path / "other")
    with pytest.raises(ValueError) as error:
        _run_for(shards_dir, init_model=str(tmp_path / "other"))
    message = str(error.value)
    assert "classes [0, 1, 2] at 48px" in message
    assert "classes [0, 1, 2, 3, 4, 5] at 32px" in message
    with pytest.raises(ValueError, match=r"nowhere.*is not a folder"):
        _run_for(shards_dir, init_model=str(tmp_path / "nowhere"))


def _always(model_dir, count: int, out: Path) -> Path:
    """A copy of the model that always answers ``count`` (its head's last layer says so)."""
    model, config = load_model(model_dir)
    last = model.fc[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-10.0)
        last.bias[list(config.classes).index(count)] = 10.0
    save_model(model, config, out)
    return out


@pytest.fixture(scope="module")
def better_and_worse(model_dir, shards_dir, tmp_path_factory):
    """Two models on the test split: one always answers its most frequent count, one its least."""
    counts = DatasetIndex.read(shards_dir).split("test").counts
    values, frequency = np.unique(counts, return_counts=True)
    assert frequency.max() > frequency.min(), "the test split needs unequal classes"
    root = tmp_path_factory.mktemp("constant")
    best, worst = int(values[frequency.argmax()]), int(values[frequency.argmin()])
    return _always(model_dir, best, root / "better"), _always(model_dir, worst, root / "worse")


def test_evaluate_measures_the_starting_model_on_the_same_split(
    better_and_worse, shards_dir, tmp_path
):
    better, worse = better_and_worse
    result = evaluate.evaluate(worse, shards_dir, tmp_path, init_model=str(better))
    assert result.init_accuracy > result.accuracy
    assert "below the starting model's" in evaluate.gate_line(result, 0.0)
    back = evaluate.evaluate(better, shards_dir, tmp_path / "b", init_model=str(worse))
    assert back.init_accuracy == pytest.approx(result.accuracy)
    assert evaluate.gate_line(back, 0.0).endswith("passes")


def test_the_pipeline_gate_takes_the_starting_models_accuracy():
    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    root = spec["root"]["dag"]["tasks"]
    bound = root["release"]["inputs"]["parameters"]["min_accuracy"]["taskOutputParameter"]
    assert bound == {"producerTask": "evaluate", "outputParameterKey": "required_accuracy"}
    for task, name in (("evaluate", "init_model"), ("train", "init_model")):
        given = root[task]["inputs"]["parameters"][name]["componentInputParameter"]
        assert given == name
    assert root["arrange"]["inputs"]["parameters"]["recounts"]["componentInputParameter"] == (
        "recounts"
    )
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["recounts"]["defaultValue"] == "" == parameters["init_model"]["defaultValue"]


@pytest.mark.slow
def test_a_round_worse_than_its_starting_model_is_not_deployed(
    better_and_worse, shards_dir, arranged_dir, raw_dir, tmp_path
):
    """The gate of the compiled pipeline (evaluate, then the release sub-pipeline), run through
    kfp.local: the new model always answers the rarest count, the starting model the commonest."""
    from kfp import dsl, local
    from kfp.dsl import Dataset, Model

    from invmon.components import evaluate as evaluate_component
    from invmon.pipelines.cluster_settings import ClusterSettings
    from invmon.pipelines.inventory_pipeline import _release

    better, worse = better_and_worse
    release = _release(ClusterSettings(retries=0), "")

    @dsl.pipeline(name="retrain-gate")
    def gate(init_model: str):
        model = dsl.importer(artifact_uri=str(worse), artifact_class=Model)
        shards = dsl.importer(artifact_uri=str(shards_dir), artifact_class=Dataset)
        arranged = dsl.importer(artifact_uri=str(arranged_dir), artifact_class=Dataset)
        raw = dsl.importer(artifact_uri=str(raw_dir), artifact_class=Dataset)
        evaluated = evaluate_component(
            model=model.output, shards=shards.output, init_model=init_model, min_accuracy=0.0
        )
        release(
            model=model.output,
            arranged=arranged.output,
            raw=raw.output,
            evaluation=evaluated.outputs["reference"],
            accuracy=evaluated.outputs["accuracy"],
            min_accuracy=evaluated.outputs["required_accuracy"],
            deploy_target="local",
            model_name="counter",
            namespace="",
            deployment_mode="Standard",
            canary_traffic_percent=-1,
            monitor="",
            artifact_endpoint_url="",
            audit_threshold=0.05,
            registry_url="",
            audit_parts=1,
        )

    root = tmp_path / "root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        raise_on_error=True,
        workspace_root=str(tmp_path / "workspace"),
    )
    start = time.time()
    gate(init_model=str(better))
    (run,) = root.iterdir()
    assert (run / "evaluate").is_dir()
    assert not (run / "deploy").exists() and not (run / "audit").exists()
    assert not (run / "plan-audit").exists() and not (run / "merge-audit").exists()
    output = json.loads((run / "evaluate" / "executor_output.json").read_text())
    values = output["parameterValues"]
    assert values["required_accuracy"] == values["init_accuracy"] > values["accuracy"]
    summary = summarize_run(run, 1.0, start)
    summary.min_accuracy = 0.0
    assert "below the starting model's" in format_summary(summary)


def test_invmon_run_hands_recounts_and_the_starting_model_to_the_pipeline(tmp_path):
    arguments = RunSettings(
        recounts=f"s3://b/recounts,{tmp_path / 'r.csv'}", init_model="models/prod"
    ).pipeline_arguments()
    assert arguments["recounts"] == f"s3://b/recounts,{tmp_path / 'r.csv'}"
    assert arguments["init_model"] == str(Path("models/prod").resolve())
    plain = RunSettings().pipeline_arguments()
    assert plain["recounts"] == "" == plain["init_model"]
