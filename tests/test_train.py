"""Training: the loop, its Katib-format metric lines, and the model folder it writes."""

import io
import json
import re

import pytest
import torch

from invmon.model import CONFIG_FILE, WEIGHTS_FILE, load_model
from invmon.train import EpochResult, TrainConfig, fit, print_metrics, read_params

# Katib's default StdOut metrics collector filter (BRIEF section 5).
KATIB_REGEX = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")


def test_model_folder_holds_weights_and_a_complete_config(model_dir):
    assert {p.name for p in model_dir.iterdir()} >= {WEIGHTS_FILE, CONFIG_FILE}
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    assert config["architecture"] == "resnet50"
    assert config["classes"] == [0, 1, 2, 3, 4, 5]
    assert config["preprocessing"]["image_size"] == 32
    assert config["training"]["hyperparameters"]["epochs"] == 1
    model, loaded = load_model(model_dir)
    assert not model.training
    assert model.fc[-1].out_features == 6 and loaded.head_hidden == 256


def test_weights_load_without_executing_code(model_dir):
    state = torch.load(model_dir / WEIGHTS_FILE, weights_only=True)
    assert "fc.0.weight" in state and "conv1.weight" in state


def test_metric_lines_parse_with_katibs_default_regex(shards_dir, capsys):
    fit(shards_dir, TrainConfig(epochs=1, batch_size=32, device="cpu"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "=" in line]
    parsed = {}
    for line in lines:
        match = KATIB_REGEX.fullmatch(line.strip())
        assert match, f"Katib cannot parse {line!r}"
        parsed[match.group(1)] = float(match.group(2))
    assert parsed["epoch"] == 1
    assert 0 <= parsed["accuracy"] <= 1 and parsed["loss"] > 0


def test_print_metrics_format():
    stream = io.StringIO()
    print_metrics(EpochResult(3, 0.52, 0.81, 0.6, 0.7, 100.0, 2.0), stream)
    assert stream.getvalue().splitlines()[:3] == ["epoch=3", "loss=0.5200", "accuracy=0.8100"]


def test_same_seed_same_result(shards_dir):
    config = TrainConfig(epochs=1, batch_size=32, device="cpu", precision="fp32", seed=5)
    first = fit(shards_dir, config, quiet=True).history[0]
    second = fit(shards_dir, config, quiet=True).history[0]
    assert first.loss == pytest.approx(second.loss, rel=1e-5)


def test_on_epoch_hook_sees_every_epoch(shards_dir):
    seen = []
    fit(
        shards_dir,
        TrainConfig(epochs=2, batch_size=64, device="cpu"),
        on_epoch=seen.append,
        quiet=True,
    )
    assert [e.epoch for e in seen] == [1, 2]


def test_bf16_autocast_path_runs_on_cpu(shards_dir):
    result = fit(
        shards_dir, TrainConfig(epochs=1, batch_size=64, device="cpu", precision="bf16"), quiet=True
    )
    assert result.history[0].loss > 0


def test_backbone_weights_from_a_local_file(shards_dir, tmp_path):
    import torchvision

    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    result = fit(
        shards_dir,
        TrainConfig(epochs=1, batch_size=64, device="cpu", weights=str(path)),
        quiet=True,
    )
    assert result.history


def test_read_params_accepts_tune_output_and_refuses_unknown_keys(tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"parameters": {"lr": "0.001", "batch_size": 16, "epochs": 3}}))
    assert read_params(best) == {"lr": 0.001, "batch_size": 16, "epochs": 3}
    best.write_text(json.dumps({"momentum": 0.9}))
    with pytest.raises(ValueError, match="momentum"):
        read_params(best)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 0}, "--lr"),
        ({"batch_size": 0}, "--batch-size"),
        ({"epochs": 0}, "--epochs"),
        ({"schedule": "linear"}, "--schedule"),
    ],
)
def test_bad_config_is_named(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig().replace(**change)


@pytest.mark.parametrize(("weights", "message"), [("/no/such/file.pth", "no such file")])
def test_bad_weights_source_is_named(shards_dir, weights, message):
    with pytest.raises(ValueError, match=message):
        fit(shards_dir, TrainConfig(epochs=1, device="cpu", weights=weights), quiet=True)
