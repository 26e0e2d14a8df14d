"""The Kubeflow Model Registry: register, deploy --from-registry, and their failures.

The registry server (Go, with MySQL or Postgres) cannot run here: these tests run the registry's
REAL Python client (``model-registry``) over HTTP against a FAKE registry server on loopback
(``tests/support/fake_registry.py``) that answers the REST API as the registry's OpenAPI document
specifies. The model is a real one: trained, then evaluated, by the stages' own functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import yaml
from kserve import V1beta1InferenceService
from support.datasets import tiny_run
from support.fake_registry import PREFIX, fake_registry

from invmon.cli import main
from invmon.cluster.inference_service import update_patch
from invmon.cluster.registry import (
    MODEL_ID_LABEL,
    TOKEN_ENV,
    VERSION_ID_LABEL,
    RegistryError,
    RegistryOptions,
    parse_reference,
    resolve,
)
from invmon.cluster.typed import check
from invmon.stages import evaluate, register
from invmon.stages.deploy import DeploySettings
from invmon.stages.deploy import run as deploy

TOKEN = "s3cr3t-registry-token"


@pytest.fixture(scope="module")
def evaluated(model_dir, shards_dir, tmp_path_factory) -> Path:
    """Evaluate's output folder for the tiny trained model (its metrics.json)."""
    out = tmp_path_factory.mktemp("evaluation")
    evaluate.run(
        evaluate.EvaluateSettings(
            model=str(model_dir),
            data=str(shards_dir),
            out=str(out),
            device="cpu",
            reference_in_model=False,
        )
    )
    return out


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def _settings(url, model_dir, evaluated, token_file=None, **kwargs):
    options = RegistryOptions(url=url, token_file=str(token_file) if token_file else "")
    given = {
        "model_uri": "minio://mlpipeline/v2/artifacts/run-1/train/model",
        "model": str(model_dir),
        "evaluation": str(evaluated),
        "registry": options,
        "namespace": "team-a",
        "run_id": "4f6c2a7e-run-id",
        "run_name": "inventory-monitoring-x7k2p",
        **kwargs,
    }
    return register.RegisterSettings(**given)


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).iterdir())
        if p.is_file()
    }


def _properties(version: dict) -> dict:
    def value(meta):
        kind = meta["metadataType"][len("Metadata") : -len("Value")].lower()
        raw = meta[f"{kind}_value"]
        return int(raw) if kind == "int" else raw

    return {k: value(v) for k, v in version["customProperties"].items()}


def test_fake_registry_records_uri_format_metrics_hyperparameters_and_lineage(
    model_dir, evaluated, token_file, caplog
):
    caplog.set_level(logging.DEBUG)
    with fake_registry(token=TOKEN) as (url, state):
        result = register.run(_settings(url, model_dir, evaluated, token_file))
        (model,) = state.models.values()
        (version,) = state.versions.values()
        (artifact,) = state.artifacts.values()
        headers = {auth for _, _, auth in state.requests}
    assert headers == {f"Bearer {TOKEN}"}, "every call carries the token"
    assert model["name"] == "bin-counter" and version["registeredModelId"] == model["id"]
    assert version["name"] == "inventory-monitoring-x7k2p", "named from the run"
    assert (result.model_id, result.version_id) == (model["id"], version["id"])
    # KServe's form of the KFP artifact URI, format pytorch, lineage as the registry models it.
    assert artifact["uri"] == "s3://mlpipeline/v2/artifacts/run-1/train/model"
    assert artifact["modelFormatName"] == "pytorch" and artifact["modelFormatVersion"]
    assert artifact["parent"] == version["id"]
    assert {k: artifact[k] for k in artifact if k.startswith("modelSource")} == {
        "modelSourceKind": "pipelines",
        "modelSourceClass": "pipelinerun",
        "modelSourceGroup": "team-a",
        "modelSourceId": "4f6c2a7e-run-id",
        "modelSourceName": "inventory-monitoring-x7k2p",
    }
    props = _properties(version)
    metrics = json.loads((evaluated / "metrics.json").read_text())
    for name in ("accuracy", "rmse", "mae", "off_by_one_accuracy", "baseline_accuracy"):
        assert props[f"metrics.{name}"] == pytest.approx(metrics[name])
    for count, scores in metrics["per_class"].items():
        assert props[f"metrics.per_class.{count}.recall"] == pytest.approx(scores["recall"])
        assert props[f"metrics.per_class.{count}.support"] == scores["support"]
    trained = json.loads((model_dir / "config.json").read_text())["training"]["hyperparameters"]
    assert props["hyperparameters.lr"] == pytest.approx(trained["lr"])
    assert props["hyperparameters.batch_size"] == trained["batch_size"]
    assert props["hyperparameters.epochs"] == trained["epochs"]
    assert props["hyperparameters.architecture"] == "resnet50"
    assert TOKEN not in json.dumps([model, version, artifact])
    assert TOKEN not in caplog.text, "the token is in no log line, even at DEBUG"


def test_fake_registry_deploy_from_registry_picks_latest_or_named_version_and_labels_it(
    model_dir, evaluated, token_file
):
    with fake_registry(token=TOKEN) as (url, _):
        first = register.run(_settings(url, model_dir, evaluated, token_file, run_name="run-1"))
        second = register.run(
            _settings(url, model_dir, evaluated, token_file, model_uri="s3://models/run-2").replace(
                run_name="run-2"
            )
        )
        options = RegistryOptions(url=url, token_file=str(token_file))
        latest = deploy(DeploySettings(from_registry="bin-counter", registry=options, dry_run=True))
        named = deploy(
            DeploySettings(from_registry="bin-counter:run-1", registry=options, dry_run=True)
        )
    for manifest, version in ((latest, second), (named, first)):
        typed = check(manifest, V1beta1InferenceService)
        assert typed.metadata.labels[MODEL_ID_LABEL] == version.model_id
        assert typed.metadata.labels[VERSION_ID_LABEL] == version.version_id
        assert typed.metadata.labels["app.kubernetes.io/part-of"] == "inventory-monitoring"
        env = manifest["spec"]["predictor"]["containers"][0]["env"]
        assert {"name": "STORAGE_URI", "value": version.uri} in env
    assert second.uri == "s3://models/run-2" and first.version_id != second.version_id
    # An update of a live service moves the labels to the new version too.
    patch = update_patch(named, latest, None)
    assert patch["metadata"]["labels"][VERSION_ID_LABEL] == first.version_id
    assert TOKEN not in yaml.safe_dump(latest)


def test_deploy_from_registry_dry_run_on_the_command_line_shows_the_labels(
    model_dir, evaluated, token_file, capsys, monkeypatch
):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with fake_registry(token=TOKEN) as (url, _):
        version = register.run(_settings(url, model_dir, evaluated))
        code = main(
            [
                *("deploy", "--from-registry", "bin-counter", "--registry-url", url),
                *("--dry-run", "--namespace", "team-a"),
            ]
        )
    out = capsys.readouterr().out
    assert code == 0
    manifest = yaml.safe_load(out)
    assert manifest["metadata"]["labels"][VERSION_ID_LABEL] == version.version_id
    assert TOKEN not in out


def test_register_on_the_command_line_prints_the_ids(model_dir, evaluated, token_file, capsys):
    with fake_registry(token=TOKEN) as (url, state):
        code = main(
            [
                *("register", "--model-uri", "s3://models/m", "--model", str(model_dir)),
                *("--evaluation", str(evaluated / "metrics.json"), "--registry-url", url),
                *("--registry-token-file", str(token_file), "--version", "v1"),
            ]
        )
        (version,) = state.versions.values()
    out = capsys.readouterr().out
    assert code == 0 and version["name"] == "v1"
    assert json.loads(out)["version_id"] == version["id"]
    assert TOKEN not in out


def test_a_taken_version_is_a_clear_error_and_nothing_is_overwritten(
    model_dir, evaluated, token_file
):
    with fake_registry(token=TOKEN) as (url, state):
        settings = _settings(url, model_dir, evaluated, token_file)
        register.run(settings)
        before = _digest(model_dir)
        with pytest.raises(RegistryError, match="already has bin-counter version") as err:
            register.run(settings.replace(model_uri="s3://models/other"))
        assert url in str(err.value)
        assert len(state.versions) == 1 and len(state.artifacts) == 1
        (artifact,) = state.artifacts.values()
    assert artifact["uri"] == "s3://mlpipeline/v2/artifacts/run-1/train/model"
    assert _digest(model_dir) == before, "the model artifact is left as it was"


def test_a_bad_token_is_a_401_naming_the_registry_and_the_token_option(
    model_dir, evaluated, tmp_path
):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    before = _digest(model_dir)
    with fake_registry(token=TOKEN) as (url, state):
        with pytest.raises(RegistryError) as err:
            register.run(_settings(url, model_dir, evaluated, wrong))
        assert not state.versions
    message = str(err.value)
    assert url in message and "401" in message and "--registry-token-file" in message
    assert "not-the-token" not in message
    assert _digest(model_dir) == before


def test_a_registry_that_is_down_is_named_and_the_model_is_untouched(model_dir, evaluated):
    with fake_registry() as (url, _):
        pass  # stopped: nothing listens at url any more
    before = _digest(model_dir)
    with pytest.raises(RegistryError, match="unreachable") as err:
        register.run(_settings(url, model_dir, evaluated))
    assert f"model registry {url}" in str(err.value)
    assert _digest(model_dir) == before
    with pytest.raises(RegistryError, match=f"model registry {url}"):
        resolve(RegistryOptions(url=url), "bin-counter")


def test_a_failed_registration_fails_the_command_with_one_line(model_dir, evaluated, capsys):
    with fake_registry() as (url, _):
        pass
    code = main(
        [
            *("register", "--model-uri", "s3://models/m", "--model", str(model_dir)),
            *("--evaluation", str(evaluated), "--registry-url", url),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith(
        f"invmon register: failed: could not connect to model registry {url}"
    )


def test_unknown_model_or_version_is_named(token_file):
    with fake_registry() as (url, _):
        options = RegistryOptions(url=url)
        with pytest.raises(RegistryError, match="no registered model 'nothing'"):
            resolve(options, "nothing")


def test_bad_register_settings_are_named():
    given = {"model_uri": "s3://m", "model": "m", "evaluation": "e"}
    with pytest.raises(ValueError, match="register needs --registry-url"):
        register.RegisterSettings(**given)
    with pytest.raises(ValueError, match="'registry:8080' is not a registry address"):
        RegistryOptions(url="registry:8080")


def test_bad_inputs_are_named_before_the_registry_is_called(model_dir, tmp_path):
    with fake_registry() as (url, state):
        settings = register.RegisterSettings(
            model_uri="s3://m",
            model=str(model_dir),
            evaluation=str(tmp_path),
            registry=RegistryOptions(url=url),
        )
        with pytest.raises(FileNotFoundError, match=r"no metrics\.json"):
            register.run(settings)
        (tmp_path / "metrics.json").write_text('{"accuracy": 0.5}')
        with pytest.raises(ValueError, match="lacks"):
            register.run(settings)
        with pytest.raises(ValueError, match="not fetchable by KServe"):
            register.run(settings.replace(model_uri="ftp://x/y"))
        assert not state.requests


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "one of --model-uri URI or --from-registry"),
        ({"model_uri": "s3://m", "from_registry": "bin-counter"}, "one of --model-uri"),
        ({"from_registry": "bin-counter"}, "--from-registry needs --registry-url"),
    ],
)
def test_deploy_takes_exactly_one_model_source(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeploySettings(**kwargs)


@pytest.mark.parametrize("text", ["", ":v1", "name:"])
def test_a_bad_registry_reference_is_named(text):
    with pytest.raises(ValueError, match="is not NAME or NAME:VERSION"):
        parse_reference(text)


def test_the_register_component_registers_through_its_stage(model_dir, evaluated, monkeypatch):
    from kfp import dsl

    from invmon import components

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with fake_registry(token=TOKEN) as (url, state):
        components.register.python_func(
            model=dsl.Model(name="model", uri=str(model_dir)),
            evaluation=dsl.Artifact(name="reference", uri=str(evaluated)),
            registry_url=url,
            name="bin-counter",
            run_id="run-uuid",
            run_name="run-name",
        )
        (version,) = state.versions.values()
        (artifact,) = state.artifacts.values()
    assert version["name"] == "run-name" and artifact["modelSourceId"] == "run-uuid"
    assert artifact["uri"] == str(model_dir.resolve()), "a local run records its folder"
    assert all(path.startswith(PREFIX) for _, path, _ in state.requests)


def test_the_pipeline_registers_behind_the_gate_only_with_a_registry(tmp_path):
    from invmon.pipelines.compile import compile_pipeline
    from invmon.pipelines.local_run import RunSettings

    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    parameter = spec["root"]["inputDefinitions"]["parameters"]["registry_url"]
    assert parameter["defaultValue"] == "" and parameter["parameterType"] == "STRING"
    release = spec["root"]["dag"]["tasks"]["release"]
    assert release["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"] == {
        "producerTask": "evaluate",
        "outputArtifactKey": "reference",
    }
    (gate,) = spec["components"][release["componentRef"]["name"]]["dag"]["tasks"].values()
    inner = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    branch = inner["condition-2"]
    assert branch["taskInfo"]["name"] == "model-registry"
    assert branch["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--registry_url'] != ''"
    )
    tasks = spec["components"][branch["componentRef"]["name"]]["dag"]["tasks"]
    assert set(tasks) == {"register"}
    inputs = tasks["register"]["inputs"]["parameters"]
    assert inputs["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert inputs["run_name"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
    assert "token" not in json.dumps(spec).lower(), "no token in the YAML"
    assert RunSettings(registry_url="http://r:8080").pipeline_arguments()["registry_url"] == (
        "http://r:8080"
    )
    assert RunSettings().pipeline_arguments()["registry_url"] == ""


@pytest.mark.slow
def test_invmon_run_registers_the_gated_model_in_a_fake_registry(tmp_path, monkeypatch):
    """kfp.local runs the whole pipeline; its register task (a subprocess) uses the registry's
    client against the fake registry server, with the token from the environment."""
    from invmon.pipelines.local_run import run_pipeline

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with fake_registry(token=TOKEN) as (url, state):
        summary = run_pipeline(tiny_run(tmp_path, registry_url=url))
        (version,) = state.versions.values()
        (artifact,) = state.artifacts.values()
    run = Path(summary.run_dir)
    assert "register" in summary.stage_seconds
    assert version["name"] == run.name, "the version is named after the run"
    assert artifact["uri"] == str(run / "train" / "model")
    assert artifact["modelSourceKind"] == "pipelines" and artifact["modelSourceGroup"] == "local"
    accuracy = _properties(version)["metrics.accuracy"]
    assert accuracy == pytest.approx(summary.metrics["accuracy"], abs=1e-4)
