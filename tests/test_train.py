"""Training: the loop, its Katib-format metric lines, and the model folder it writes."""

import dataclasses
import datetime
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from invmon.cli import build_parser
from invmon.core.settings import to_flags
from invmon.training.checkpoint import Progress
from invmon.training.config import TrainConfig, original_recipe, read_params
from invmon.training.loop import fit
from invmon.training.metrics import EpochResult, print_metrics
from invmon.training.model import CONFIG_FILE, WEIGHTS_FILE, load_model
from invmon.training.optim import class_weights, schedule_factor
from invmon.training.quantize import CALIBRATION_FILE
from invmon.training.report import REPORT_FILE

# Katib's default StdOut metrics collector filter (BRIEF section 5).
KATIB_REGEX = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")


def _train_config(args):
    """The TrainConfig the real ``invmon train`` command builds from parsed ``args``."""
    return args.command_object.settings_from(args).config()


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
    assert len(lines) == 1
    stamp, _, pairs = lines[0].partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    parsed = {m.group(1): float(m.group(2)) for m in KATIB_REGEX.finditer(pairs)}
    assert len(parsed) == len(pairs.split())  # every pair parses
    assert parsed["epoch"] == 1
    assert 0 <= parsed["accuracy"] <= 1 and parsed["loss"] > 0 and parsed["val_loss"] > 0


def test_print_metrics_format():
    stream = io.StringIO()
    when = datetime.datetime(2026, 1, 5, 10, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    print_metrics(EpochResult(3, 0.52, 0.81, 0.6, 0.7, 100.0, 2.0), stream, now=when)
    assert stream.getvalue() == (
        "2026-01-05T10:00:00.123456Z epoch=3 loss=0.5200 accuracy=0.8100 val_loss=0.6000 "
        "train_accuracy=0.7000 images_per_second=100.0000 seconds=2.0000\n"
    )


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
        ({"schedule": "linear"}, "--schedule must be one of cosine, step, constant"),
        ({"optimizer": "lamb"}, "--optimizer must be one of adam, adamw, sgd"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"class_weights": "inverse"}, "--class-weights"),
        ({"early_stopping_patience": -1}, "--early-stopping-patience"),
        ({"head_dropout": 1.5}, "--head-dropout"),
    ],
)
def test_bad_config_is_named(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig().replace(**change)


@pytest.mark.parametrize(("weights", "message"), [("/no/such/file.pth", "no such file")])
def test_bad_weights_source_is_named(shards_dir, weights, message):
    with pytest.raises(ValueError, match=message):
        fit(shards_dir, TrainConfig(epochs=1, device="cpu", weights=weights), quiet=True)


# -- the recipe ------------------------------------------------------------------------------


def test_warmup_then_cosine_decay_to_zero():
    factor = schedule_factor(TrainConfig(epochs=10, warmup_fraction=0.1), steps_per_epoch=10)
    assert [round(factor(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert factor(10) == pytest.approx(1.0, abs=1e-3)
    assert factor(55) == pytest.approx(0.5, abs=0.02)
    assert factor(99) == pytest.approx(0.0, abs=1e-3)
    values = [factor(s) for s in range(10, 100)]
    assert values == sorted(values, reverse=True)


def test_step_schedule_and_the_original_constant_rate():
    step = schedule_factor(TrainConfig(epochs=4, schedule="step", warmup_fraction=0), 10)
    assert [step(s) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    original = schedule_factor(original_recipe(TrainConfig(epochs=4)), 10)
    assert {original(s) for s in range(40)} == {1.0}


def test_original_recipe_is_plain_adam():
    config = original_recipe(TrainConfig(lr=1e-3, batch_size=64, epochs=7, label_smoothing=0.1))
    assert (config.optimizer, config.schedule, config.warmup_fraction) == ("adam", "constant", 0)
    assert (config.label_smoothing, config.class_weights) == (0, "none")
    assert (config.lr, config.batch_size, config.epochs) == (1e-3, 64, 7)


def test_balanced_class_weights_equalise_the_classes():
    targets = np.array([0] * 60 + [1] * 30 + [2] * 10)
    weights = class_weights(targets, 4)
    assert weights.tolist() == pytest.approx([100 / 180, 100 / 90, 100 / 30, 0.0])
    per_class_total = [weights[c].item() * (targets == c).sum() for c in range(3)]
    assert per_class_total == pytest.approx([per_class_total[0]] * 3)


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    progress = Progress()
    model = torch.nn.Linear(2, 2)
    for epoch, accuracy in enumerate([0.5, 0.6, 0.6, 0.55], start=1):
        progress.record(EpochResult(epoch, 1.0, accuracy, 1.0, 0.5, 1.0, 1.0), model, True)
        if progress.should_stop(patience=2):
            break
    assert progress.epoch == 4 and progress.best_epoch == 2 and progress.best_state is not None
    assert not Progress().should_stop(patience=0)


def test_early_stopping_in_a_run_keeps_the_best_epoch(shards_dir, tmp_path):
    # A learning rate this small leaves validation accuracy where it started: no improvement.
    config = TrainConfig(
        epochs=5, batch_size=32, lr=1e-12, device="cpu", early_stopping_patience=1, seed=2
    )
    result = fit(shards_dir, config, out=tmp_path, quiet=True)
    assert len(result.history) == 2
    assert result.info["stopped_early"] and result.info["best_epoch"] == 1
    training = json.loads((tmp_path / "history.json").read_text())
    assert training["run"]["best_epoch"] == 1
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["training"]["epochs_run"] == 2


def test_label_smoothing_and_class_weights_train(shards_dir):
    config = TrainConfig(
        epochs=1,
        batch_size=32,
        device="cpu",
        label_smoothing=0.1,
        class_weights="balanced",
        optimizer="adamw",
        weight_decay=1e-4,
    )
    result = fit(shards_dir, config, quiet=True)
    assert np.isfinite(result.history[0].loss) and result.history[0].loss > 0


def test_fp16_path_scales_the_loss_on_cpu(shards_dir):
    config = TrainConfig(epochs=1, batch_size=32, device="cpu", precision="fp16")
    result = fit(shards_dir, config, quiet=True)
    assert result.info["precision"] == "float16" and np.isfinite(result.history[0].loss)


def test_nchw_layout_path(shards_dir):
    config = TrainConfig(epochs=1, batch_size=32, device="cpu", channels_last=False)
    assert np.isfinite(fit(shards_dir, config, quiet=True).history[0].loss)


@pytest.mark.slow
def test_torch_compile_path_runs_on_cpu(shards_dir):
    config = TrainConfig(epochs=1, batch_size=32, device="cpu", precision="fp32", compile=True)
    result = fit(shards_dir, config, quiet=True)
    assert np.isfinite(result.history[0].loss)


def test_every_setting_round_trips_through_the_train_commands_flags():
    config = TrainConfig(
        lr=3e-4,
        batch_size=48,
        epochs=12,
        optimizer="sgd",
        weight_decay=5e-5,
        schedule="step",
        warmup_fraction=0.05,
        label_smoothing=0.1,
        class_weights="balanced",
        early_stopping_patience=3,
        head_hidden=128,
        head_dropout=0.2,
        weights="s3://weights/resnet50.pth",
        init_model="s3://models/counter/production",
        fine_tune_lr_scale=0.2,
        device="cuda",
        precision="bf16",
        channels_last=False,
        compile=True,
        sync_batchnorm=False,
        seed=9,
    )
    assert {f.name for f in dataclasses.fields(TrainConfig)} == {
        name
        for name, value in dataclasses.asdict(config).items()
        if value != getattr(TrainConfig(), name)
    }, "every setting differs from its default, so every flag is exercised"
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", *to_flags(config)])
    assert _train_config(args) == config
    assert to_flags(TrainConfig()) == []


def test_training_report_shows_curves_throughput_and_hyperparameters(model_dir):
    page = (model_dir / REPORT_FILE).read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 3
    for text in ("images/s", "seconds", "label_smoothing", "best validation accuracy"):
        assert text in page


# -- storage on S3 ---------------------------------------------------------------------------


def _upload(client, folder, bucket, prefix):
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


def test_data_model_and_checkpoints_on_s3(shards_dir, s3_url, tmp_path, monkeypatch):
    """A training pod that only sees S3: dataset in, model folder out, checkpoint alongside."""
    from invmon.data.s3 import make_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")  # moto accepts any signature
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("INVMON_CACHE_DIR", str(tmp_path / "cache"))
    client = make_client(s3_url)
    client.create_bucket(Bucket="training")
    _upload(client, shards_dir, "training", "shards")
    seen = []

    def checkpoint_written(epoch):
        keys = client.list_objects_v2(Bucket="training", Prefix="runs/1/checkpoint/")
        seen.append([o["Key"] for o in keys.get("Contents", [])])

    fit(
        "s3://training/shards",
        TrainConfig(epochs=1, batch_size=32, device="cpu"),
        out="s3://training/runs/1/model",
        checkpoint="s3://training/runs/1/checkpoint",
        endpoint_url=s3_url,
        on_epoch=checkpoint_written,
        quiet=True,
    )
    assert seen == [["runs/1/checkpoint/checkpoint.pt"]]
    listed = client.list_objects_v2(Bucket="training", Prefix="runs/1/")
    keys = {o["Key"] for o in listed["Contents"]}
    model_files = (WEIGHTS_FILE, CONFIG_FILE, "history.json", REPORT_FILE, CALIBRATION_FILE)
    assert keys == {
        f"runs/1/model/{name}" for name in model_files
    }  # the checkpoint is removed once the model is saved
    client.download_file("training", f"runs/1/model/{WEIGHTS_FILE}", str(tmp_path / "w.pt"))
    assert "fc.3.weight" in torch.load(tmp_path / "w.pt", weights_only=True)


def test_a_dataset_made_again_under_the_same_prefix_is_fetched_again(s3_url, tmp_path, monkeypatch):
    """The node cache of an s3:// dataset was trusted forever once complete: a dataset made
    again under the same prefix (same file names and sizes, as shards of one image size have)
    trained from the stale copy. Each start now lists the prefix and compares ETags."""
    from invmon.data.s3 import make_client
    from invmon.data.transfer import fetch_dataset

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")  # moto accepts any signature
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("INVMON_CACHE_DIR", str(tmp_path / "cache"))
    client = make_client(s3_url)
    client.create_bucket(Bucket="data")
    for name, body in [("train/0.npy", b"a" * 64), ("val/0.npy", b"b" * 32), ("old.npy", b"c")]:
        client.put_object(Bucket="data", Key=f"shards/{name}", Body=body)
    first = fetch_dataset("s3://data/shards", s3_url)
    assert (first / "train" / "0.npy").read_bytes() == b"a" * 64

    client.put_object(Bucket="data", Key="shards/train/0.npy", Body=b"z" * 64)  # same size
    client.delete_object(Bucket="data", Key="shards/old.npy")
    again = fetch_dataset("s3://data/shards", s3_url)
    assert again == first
    assert (again / "train" / "0.npy").read_bytes() == b"z" * 64
    assert not (again / "old.npy").exists()
    assert (again / "val" / "0.npy").read_bytes() == b"b" * 32


@pytest.mark.parametrize(
    ("out", "checkpoint"),
    [
        (
            "s3://bucket/v2/artifacts/run/train/7/model",
            "s3://bucket/v2/artifacts/run/train/7/checkpoint-model",
        ),
        ("runs/1/model", str(Path("runs/1/checkpoint-model"))),
    ],
)
def test_the_default_checkpoint_lives_beside_the_model(out, checkpoint):
    """Not under the model folder: that folder is the model artifact, and KServe downloads all of
    it at every predictor start (by prefix, so not ``model.checkpoint`` either)."""
    from invmon.stages.train import TrainSettings

    settings = TrainSettings(data="shards", out=out)
    assert settings.checkpoint_location() == checkpoint
    assert not settings.checkpoint_location().startswith(out)
    assert TrainSettings(data="shards", out=out, checkpoint="none").checkpoint_location() is None
    given = TrainSettings(data="shards", out=out, checkpoint="s3://b/c")
    assert given.checkpoint_location() == "s3://b/c"
