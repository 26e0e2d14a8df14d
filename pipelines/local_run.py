"""Run the whole pipeline on this machine through ``kfp.local``, the way a data scientist tries it.

The pipeline function is the one ``invmon compile`` compiles for a cluster; ``kfp.local`` runs each
lightweight component in a subprocess of this interpreter (SubprocessRunner, no venv). With no
``source``, an S3 server (moto) is started on loopback, seeded with synthetic bins in ABID's
layout, made publicly readable like the real bucket, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from invmon.core.command import Command
from invmon.core.settings import Settings, inherit, setting
from invmon.data.relabel import split_uris
from invmon.data.s3 import S3Options, embedded_s3_server, make_client, make_public_bucket
from invmon.pipelines.parameters import DEFAULTS, PipelineParameters
from invmon.training.search import parse_batch_sizes

log = logging.getLogger(__name__)

DEMO_BUCKET = "invmon-demo"
DEMO_BINS = 3600
TASKS = (
    "ingest",
    "arrange",
    "preprocess",
    "tune",
    "train",
    "evaluate",
    "deploy",
    "audit",
    "register",
)
# The kfp.local task folder that marks the end of each stage (ingest ends when its parts merge).
_TASK_FOLDERS = {"ingest": "merge-ingest", "audit": "merge-audit"}


# What ``invmon run`` passes for an option not given: the pipeline's defaults (each defined once,
# in pipelines/parameters.py), but for these. The options' help texts quote them from here.
EMBEDDED = DEFAULTS.replace(
    # Two parts show the parallel ingest locally; a laptop gains little from more.
    ingest_parts=2,
    # 64 px keeps a CPU run to minutes and is enough to count synthetic items; real photos need
    # the ImageNet-sized 224 px.
    image_size=64,
    # One one-epoch trial at the final batch size: its learning rate is the sampler's draw from
    # the range scaled to batch 64 (4.25e-3 for seed 0), and the time more trials would take is
    # worth more as final epochs. Short trials over several batch sizes pick the smallest (most
    # steps per epoch), which costs a CPU about 1.5x more per image in the final training
    # (docs/benchmarks.md, "The main job").
    trials=1,
    max_epochs=1,
    batch_sizes="64",
    epochs=8,
    deploy_target="local",
)
ELSEWHERE = DEFAULTS.replace(ingest_parts=4, deploy_target="local")


def _default(name: str) -> str:
    """``(default E embedded, O otherwise)`` for pipeline parameter ``name``."""
    embedded, elsewhere = getattr(EMBEDDED, name), getattr(ELSEWHERE, name)
    if name == "epochs" and not elsewhere:
        return f"(default {embedded} embedded, the search's otherwise)"
    return f"(default {embedded} embedded, {elsewhere} otherwise)"


@dataclass(frozen=True)
class RunSettings(Settings):
    """What ``invmon run`` runs; None means "the default for this source" (embedded or not)."""

    source: str | None = setting(
        None, help="s3://BUCKET[/PREFIX] (default: the embedded synthetic bucket)"
    )
    s3: S3Options = setting(default_factory=S3Options, help="S3 access")
    file_list: str | None = setting(None, help="file_list.json selecting bins")
    limit: int = inherit(PipelineParameters, "limit")
    ingest_parts: int | None = setting(
        None, help=f"parallel ingest tasks {_default('ingest_parts')}", minimum=1
    )
    classes: str = inherit(PipelineParameters, "classes")
    image_size: int | None = setting(
        None, help=f"model input size {_default('image_size')}", minimum=1
    )
    epochs: int | None = setting(
        None, help=f"final training epochs {_default('epochs')}", minimum=1
    )
    trials: int | None = setting(None, help=f"search trials {_default('trials')}", minimum=1)
    max_epochs: int | None = setting(
        None, help=f"most epochs a search trial trains {_default('max_epochs')}", minimum=1
    )
    batch_sizes: str | None = setting(
        None,
        help=f"batch sizes the search tries, comma-separated {_default('batch_sizes')}",
    )
    algorithm: str = inherit(PipelineParameters, "algorithm")
    weights: str = inherit(PipelineParameters, "weights")
    seed: int = inherit(PipelineParameters, "seed")
    min_accuracy: float = inherit(PipelineParameters, "min_accuracy")
    # The token comes from $INVMON_REGISTRY_TOKEN, which the tasks (subprocesses) inherit.
    registry_url: str = inherit(PipelineParameters, "registry_url")
    recounts: str = inherit(PipelineParameters, "recounts")
    init_model: str = inherit(PipelineParameters, "init_model")
    synth_bins: int = setting(DEMO_BINS, help="synthetic bins in the embedded bucket", minimum=1)
    out: str = setting("runs", help="where runs are kept")
    cache: bool = setting(
        False,
        help="reuse what earlier runs under --out computed for the same inputs (tasks that use "
        "the run's workspace always run again)",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.batch_sizes is not None:
            parse_batch_sizes(self.batch_sizes, "--batch-sizes")

    def pipeline_arguments(self) -> dict:
        """The pipeline's parameters for this run (embedded runs get small, CPU-sized defaults)."""
        embedded = self.source is None
        defaults = EMBEDDED if embedded else ELSEWHERE

        def given(value, name: str):
            return getattr(defaults, name) if value is None else value

        return {
            "source": self.source or f"s3://{DEMO_BUCKET}",
            "endpoint_url": self.s3.endpoint_url or "",
            "anonymous": True if embedded else self.s3.anonymous,
            "file_list": self.file_list or "",
            "limit": self.limit,
            "ingest_parts": given(self.ingest_parts, "ingest_parts"),
            "classes": self.classes,
            "seed": self.seed,
            "image_size": given(self.image_size, "image_size"),
            "trials": given(self.trials, "trials"),
            "algorithm": self.algorithm,
            "max_epochs": given(self.max_epochs, "max_epochs"),
            "batch_sizes": given(self.batch_sizes, "batch_sizes"),
            "epochs": given(self.epochs, "epochs"),
            "weights": self.weights,
            "min_accuracy": self.min_accuracy,
            "deploy_target": defaults.deploy_target,
            "registry_url": self.registry_url,
            # Tasks run in folders of their own: local paths are made absolute here.
            "recounts": ",".join(_absolute(uri) for uri in split_uris(self.recounts)),
            "init_model": _absolute(self.init_model) if self.init_model else "",
        }


def _absolute(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


@dataclass
class RunSummary:
    """What a local run did and where its outputs are."""

    run_dir: str
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    min_accuracy: float | None = None
    audit: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable form."""
        return asdict(self)


def seed_demo_bucket(endpoint_url: str, bins: int, seed: int) -> str:
    """Create the demo bucket on the embedded server, readable anonymously, and fill it."""
    from invmon.data.synth import synthesize

    make_public_bucket(make_client(endpoint_url, anonymous=True), DEMO_BUCKET)
    synthesize(f"s3://{DEMO_BUCKET}", bins, seed=seed, endpoint_url=endpoint_url, anonymous=True)
    return f"s3://{DEMO_BUCKET}"


def run_pipeline(options: RunSettings) -> RunSummary:
    """Run the pipeline locally with ``options``; raise RuntimeError if any stage fails."""
    from kfp import local

    from invmon.pipelines import build_pipeline
    from invmon.pipelines.cluster_settings import ClusterSettings

    root = Path(options.out).resolve() / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if options.source is None:
            url = stack.enter_context(embedded_s3_server())
            print(f"embedded S3 server at {url}; seeding {options.synth_bins} synthetic bins")
            seed_demo_bucket(url, options.synth_bins, options.seed)
            options = options.replace(s3=S3Options(endpoint_url=url, anonymous=True))
        # The pipeline's shared workspace is a folder here; kfp.local deletes it after the run
        # (the arranged dataset keeps its images: they are hard links).
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(root),
            raise_on_error=True,
            workspace_root=tempfile.mkdtemp(prefix="workspace-", dir=root.parent),
            enable_caching=options.cache,
            # Beside the runs, not in the pipeline root, where each new folder is a run.
            cache_root=str(root.parent / "cache"),
        )
        pipeline_start = time.time()
        with warnings.catch_warnings():
            # kfp.local warns when an image name lacks "python"; ours run in this interpreter.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            # Resources, /dev/shm and GPU placement are for a cluster; kfp.local says so per task.
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            # No task retries: kfp.local honours them, so a failing stage would be run three
            # more times, 30, 60 and 120 s apart, before the error showed; here its failures are
            # not transient (S3 requests are retried inside ingest).
            build_pipeline(ClusterSettings(retries=0))(**options.pipeline_arguments())
    seconds = time.monotonic() - start
    (run_dir,) = set(root.iterdir()) - before
    summary = summarize_run(run_dir, seconds, pipeline_start)
    summary.min_accuracy = options.min_accuracy
    return summary


def summarize_run(run_dir: Path, seconds: float, pipeline_start: float) -> RunSummary:
    """Collect stage times, evaluation metrics and artifact paths of a finished local run.

    ``pipeline_start`` is the wall-clock time the first stage started.
    """
    summary = RunSummary(run_dir=str(run_dir), seconds=round(seconds, 1))
    ends = {}
    for task in TASKS:
        output = run_dir / _TASK_FOLDERS.get(task, task) / "executor_output.json"
        if output.is_file():
            ends[task] = output.stat().st_mtime
    # Stages run one after another, so a stage's wall time is the gap since the previous finish.
    previous = pipeline_start
    for task, end in sorted(ends.items(), key=lambda item: item[1]):
        summary.stage_seconds[task] = round(end - previous, 1)
        previous = end
    summary.metrics = _read_metadata(run_dir / "evaluate" / "executor_output.json", "metrics")
    summary.audit = _read_metadata(run_dir / "merge-audit" / "executor_output.json", "metrics")
    summary.artifacts = {
        "model": str(run_dir / "train" / "model"),
        "evaluation report": str(run_dir / "evaluate" / "report"),
        "search": str(run_dir / "tune" / "search"),
        "arranged data": str(run_dir / "arrange" / "arranged"),
    }
    if summary.audit:
        summary.artifacts["audit (flagged bins)"] = str(run_dir / "merge-audit" / "results")
    return summary


def _read_metadata(executor_output: Path, artifact: str) -> dict:
    if not executor_output.is_file():
        return {}
    data = json.loads(executor_output.read_text())
    artifacts = data.get("artifacts", {}).get(artifact, {}).get("artifacts", [])
    return dict(artifacts[0].get("metadata", {})) if artifacts else {}


def format_summary(summary: RunSummary) -> str:
    """The summary printed at the end of ``invmon run``."""
    m = summary.metrics
    lines = [f"pipeline finished in {summary.seconds:.0f}s ({summary.run_dir})"]
    lines += [f"  {task:<11} {secs:6.1f}s" for task, secs in summary.stage_seconds.items()]
    if m:
        lines.append(
            f"test accuracy {m.get('accuracy', float('nan')):.3f} "
            f"(majority baseline {m.get('baseline_accuracy', float('nan')):.3f}), "
            f"RMSE {m.get('rmse', float('nan')):.3f} "
            f"(baseline {m.get('baseline_rmse', float('nan')):.3f}), "
            f"off-by-one accuracy {m.get('off_by_one_accuracy', float('nan')):.3f}"
        )
    if "deploy" not in summary.stage_seconds and summary.min_accuracy is not None and m:
        lines.append(_gate_reason(m, summary.min_accuracy))
    if summary.audit:
        a = summary.audit
        lines.append(
            f"audit: {a.get('flagged', 0):.0f} of {a.get('scored', 0):.0f} bins flagged as likely "
            "count mismatches"
        )
    lines += [f"  {name}: {path}" for name, path in summary.artifacts.items()]
    return "\n".join(lines)


def _gate_reason(m: dict, min_accuracy: float) -> str:
    """Why the gate stopped deploy and audit (evaluate's rule): the starting model was better,
    or the bound."""
    from invmon.stages.evaluate import gate_refusal

    refusal = gate_refusal(m.get("accuracy", float("nan")), min_accuracy, m.get("init_accuracy"))
    refusal = refusal or f"accuracy below min_accuracy {min_accuracy}"
    return f"gate: {refusal}; deploy and audit skipped"


RUN = Command(
    RunSettings,
    run_pipeline,
    description="Run the pipeline on this machine through kfp.local. Without --source, an "
    "embedded S3 server holds synthetic bins.",
    show=lambda summary, _: format_summary(summary),
)
