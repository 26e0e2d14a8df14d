"""Submit the pipeline to a Kubeflow Pipelines API server with ``kfp.Client``.

Parameters given as ``name=value`` are typed by the compiled pipeline's own parameter list, so a
misspelt name or a value of the wrong type is refused before anything reaches the cluster.
Authentication is kfp.Client's: a bearer token from ``--token-env`` (the name of an environment
variable, so that the token never appears on a command line), or in-cluster service account tokens.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from invmon.core.command import Command
from invmon.core.settings import Settings, setting
from invmon.pipelines.compile import ClusterSettings, compile_pipeline

DEFAULT_EXPERIMENT = "inventory-monitoring"
DEFAULT_SERVICE_ACCOUNT = "invmon-pipeline"
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


@dataclass(frozen=True)
class Submitted:
    """A run created on the cluster."""

    run_id: str
    experiment: str
    url: str


def pipeline_parameters(package: Path) -> dict[str, str]:
    """``{name: KFP parameter type}`` of a compiled pipeline package."""
    spec = next(yaml.safe_load_all(Path(package).read_text()))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    return {name: definition["parameterType"] for name, definition in inputs.items()}


def parse_params(pairs: list[str], types: dict[str, str]) -> dict:
    """Turn ``["name=value", ...]`` into typed pipeline arguments; unknown names are errors."""
    arguments = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE")
        if name not in types:
            raise ValueError(
                f"--param {name!r}: not a pipeline parameter (allowed: {', '.join(sorted(types))})"
            )
        arguments[name] = _typed(name, text, types[name])
    return arguments


def _typed(name: str, text: str, kind: str):
    try:
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
    except ValueError:
        raise ValueError(
            f"--param {name}={text!r}: expected a {kind.split('_')[1].lower()}"
        ) from None
    if kind == "BOOLEAN":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"--param {name}={text!r}: expected true or false")
    return text


def submit(
    host: str,
    params: list[str] | tuple[str, ...] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
    enable_caching: bool | None = None,
    settings: ClusterSettings | None = None,
    token_env: str | None = None,
    client=None,
) -> Submitted:
    """Compile the pipeline for ``settings`` and start a run of it on the server at ``host``.

    ``enable_caching=None`` keeps the compiled default (caching on); False reruns every task.
    ``client`` replaces the ``kfp.Client`` built for ``host`` (tests pass one).
    """
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ValueError(f"--token-env {token_env}: that environment variable is not set")
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "inventory_pipeline.yaml", settings)
        arguments = parse_params(params or [], pipeline_parameters(package))
        if client is None:
            import kfp

            client = kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
            enable_caching=enable_caching,
            service_account=service_account,
        )
    return Submitted(
        run_id=result.run_id,
        experiment=experiment,
        url=f"{host.rstrip('/')}/#/runs/details/{result.run_id}",
    )


@dataclass(frozen=True)
class SubmitSettings(Settings):
    """Settings of ``invmon submit``: the server, the run, and the cluster it is compiled for."""

    host: str = setting(help="KFP API endpoint, e.g. https://HOST/pipeline")
    experiment: str = setting(DEFAULT_EXPERIMENT, help="experiment to run in")
    run_name: str | None = setting(None, help="run name shown in the UI")
    namespace: str | None = setting(None, help="profile namespace (multi-user Kubeflow)")
    param: tuple[str, ...] = setting(
        (),
        help="pipeline parameter (repeatable), e.g. --param classes=1-5",
        metavar="NAME=VALUE",
    )
    service_account: str = setting(
        DEFAULT_SERVICE_ACCOUNT, help="service account the run's pods use"
    )
    token_env: str | None = setting(
        None, help="environment variable holding a bearer token", metavar="VAR"
    )
    cluster: ClusterSettings = setting(default_factory=ClusterSettings, help="cluster")


def run(settings: SubmitSettings) -> Submitted:
    """Compile for ``settings.cluster`` and start the run (caching off when compiled off)."""
    return submit(
        settings.host,
        params=settings.param,
        experiment=settings.experiment,
        run_name=settings.run_name,
        namespace=settings.namespace,
        service_account=settings.service_account or None,
        enable_caching=None if settings.cluster.caching else False,
        settings=settings.cluster,
        token_env=settings.token_env,
    )


SUBMIT = Command(
    SubmitSettings,
    run,
    description="Compile the pipeline and start a run of it through kfp.Client.",
    show=lambda r, _: f"started run {r.run_id} in experiment {r.experiment!r}: {r.url}",
)
