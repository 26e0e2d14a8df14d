"""The training report: how a run went, epoch by epoch, as one self-contained HTML page.

Loss and accuracy curves (inline SVG), throughput and time per epoch, and every hyperparameter
used. The train component publishes it as an ``Output[HTML]``, which the Kubeflow UI shows.
"""

from __future__ import annotations

from invmon.core import html as report

REPORT_FILE = "training_report.html"


def html_report(training: dict) -> str:
    """Render ``history.json``'s content (config, per-epoch history, run info) as an HTML page."""
    history = training["history"]
    run = training.get("run", {})
    curves = (
        report.line_chart_svg(
            {
                "training loss": [e["loss"] for e in history],
                "validation loss": [e["val_loss"] for e in history],
            },
            "loss",
        )
        + report.line_chart_svg(
            {
                "training accuracy": [e["train_accuracy"] for e in history],
                "validation accuracy": [e["accuracy"] for e in history],
            },
            "accuracy",
        )
        + report.line_chart_svg(
            {"images/s": [e["images_per_second"] for e in history]}, "training throughput"
        )
    )
    epochs = report.table(
        ["epoch", "loss", "val loss", "train accuracy", "val accuracy", "images/s", "seconds"],
        [
            [
                e["epoch"],
                e["loss"],
                e["val_loss"],
                e["train_accuracy"],
                e["accuracy"],
                round(e["images_per_second"], 1),
                round(e["seconds"], 1),
            ]
            for e in history
        ],
    )
    return report.page(
        "Training report",
        [
            ("Summary", report.table(["", ""], _summary_rows(history, run))),
            ("Curves", curves),
            ("Epochs", epochs),
            (
                "Hyperparameters",
                report.table(["setting", "value"], sorted(training["config"].items())),
            ),
        ],
    )


def _summary_rows(history: list[dict], run: dict) -> list[list]:
    seconds = sum(e["seconds"] for e in history)
    rows = [
        ["epochs run", len(history)],
        ["best validation accuracy", run.get("best_accuracy", 0.0)],
        ["best epoch", run.get("best_epoch", "-")],
        ["stopped early", "yes" if run.get("stopped_early") else "no"],
        ["mean images/s", round(_mean([e["images_per_second"] for e in history]), 1)],
        ["mean seconds per epoch", round(seconds / max(1, len(history)), 1)],
        ["device", run.get("device", "-")],
        ["precision", run.get("precision", "-")],
        ["processes", run.get("processes", 1)],
        ["train / val images", f"{run.get('train_images', '-')} / {run.get('val_images', '-')}"],
    ]
    if run.get("resumed_after_epoch"):
        rows.append(["resumed after epoch", run["resumed_after_epoch"]])
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summary_metrics(training: dict) -> dict[str, float]:
    """The run's headline numbers for KFP's Metrics: best validation accuracy and its epoch,
    final losses, throughput and time per epoch."""
    history = training["history"]
    run = training.get("run", {})
    final = history[-1]
    return {
        "accuracy": round(float(run.get("best_accuracy", final["accuracy"])), 4),
        "best_epoch": int(run.get("best_epoch", final["epoch"])),
        "epochs_run": len(history),
        "val_loss": round(float(final["val_loss"]), 4),
        "loss": round(float(final["loss"]), 4),
        "images_per_second": round(_mean([e["images_per_second"] for e in history]), 1),
        "seconds_per_epoch": round(_mean([e["seconds"] for e in history]), 1),
    }
