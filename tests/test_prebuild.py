"""invmon prebuild: the serving engine built ahead of time into a copy of the model folder (the
pipeline's prebuild task), which a predictor then serves from its first request.

One real build (a minute or so of the C++ compiler) through the component's body; the other
checks need none.
"""

import json

import pytest

from invmon.serving import prebuilt
from invmon.serving.counter import Counter
from invmon.stages import prebuild as stage
from invmon.training.model import ModelNotFound

KEY = "test-only prebuild key"


@pytest.mark.slow
def test_the_component_builds_the_engine_into_a_copy_that_a_predictor_serves(
    model_dir, tmp_path, monkeypatch
):
    from kfp import dsl

    from invmon import components

    monkeypatch.setenv(prebuilt.KEY_ENV, KEY)
    out = tmp_path / "prebuilt"
    components.prebuild.python_func(
        model=dsl.Model(name="model", uri=str(model_dir)),
        prebuilt=dsl.Model(name="prebuilt", uri=str(out)),
        largest_batch=4,
    )
    assert not (model_dir / prebuilt.ENGINE_DIR).exists(), "the trained model is left as it was"
    manifest = json.loads((out / prebuilt.ENGINE_DIR / prebuilt.MANIFEST_FILE).read_text())
    assert manifest["largest_batch"] == 4 and manifest["signature"]
    precision = prebuilt.float_precision("auto")  # what the predictors on this node serve
    assert manifest["precision"] == precision
    assert manifest["model_sha256"] == prebuilt.model_sha256(model_dir)
    assert KEY not in json.dumps(manifest)
    counter, upgrade = Counter.staged(
        out, largest_batch=4, use_prebuilt=True, device="cpu", precision=precision, graph="auto"
    )
    assert upgrade is None and counter.engine.graph == "prebuilt"


def test_prebuild_needs_the_key_and_a_model_folder(model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(prebuilt.KEY_ENV, raising=False)
    with pytest.raises(ValueError, match="set INVMON_ENGINE_KEY"):
        stage.run(stage.PrebuildSettings(model=str(model_dir), out=str(tmp_path / "out")))
    monkeypatch.setenv(prebuilt.KEY_ENV, KEY)
    with pytest.raises(ModelNotFound, match=r"no config\.json in model folder"):
        stage.run(stage.PrebuildSettings(model=str(tmp_path / "nothing")))
    assert not (tmp_path / "out").exists(), "nothing is copied without the key"
    with pytest.raises(ValueError, match="--largest-batch must be >= 1, got 0"):
        stage.PrebuildSettings(model=str(model_dir), largest_batch=0)


def test_the_default_batch_range_is_what_the_default_predictor_forms():
    from invmon.serving.options import Limits, ServingOptions, largest_batch

    assert stage.PrebuildSettings(model="m").largest_batch == largest_batch(
        ServingOptions(), Limits()
    )


def test_the_predictor_gets_the_key_from_its_secret_never_as_a_value():
    from invmon.cluster.inference_service import ServiceSpec, render_inference_service

    spec = ServiceSpec(model_uri="s3://models/bin-counter", engine_key_secret="invmon-engine-key")
    (container,) = render_inference_service(spec)["spec"]["predictor"]["containers"]
    ref = {"secretKeyRef": {"name": "invmon-engine-key", "key": "INVMON_ENGINE_KEY"}}
    assert {"name": "INVMON_ENGINE_KEY", "valueFrom": ref} in container["env"]
    plain = render_inference_service(ServiceSpec(model_uri="s3://models/bin-counter"))
    assert all(
        e["name"] != "INVMON_ENGINE_KEY" for e in plain["spec"]["predictor"]["containers"][0]["env"]
    )
    with pytest.raises(ValueError, match="--engine-key-secret 'a_b' is not a Secret name"):
        ServiceSpec(engine_key_secret="a_b")
