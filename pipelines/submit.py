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

from invmon.pipelines.compile import compile_pipeline

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
    params: list[str] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
    enable_caching: bool | None = None,
    settings=None,
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
