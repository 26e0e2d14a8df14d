"""Submit the pipeline to a Kubeflow Pipelines API server with ``kfp.Client``.

Parameters given as ``name=value`` are typed by the compiled pipeline's own parameter list, so a
misspelt name or a value of the wrong type is refused before anything reaches the cluster.
Authentication is kfp.Client's: a bearer token from ``--token-env`` (the name of an environment
variable, so that the token never appears on a command line), or in-cluster service account tokens.

Where the run executes and as whom depends on how Kubeflow Pipelines is installed, which the API
server's healthz reports (``multi_user``; ``--install`` overrides it):

- single-user (standalone KFP): every run executes in KFP's own namespace (``kubeflow``), whatever
  a client names, so no namespace is passed, and the pods run as ``invmon-pipeline``, which
  ``manifests/single-user`` creates there;
- multi-user (the Kubeflow platform): the run executes in the Profile namespace given with
  ``--namespace``, as the Profile's ``default-editor`` (``manifests/multi-user`` adds what the
  project's code calls to it).
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from invmon.core.command import Command
from invmon.core.settings import Settings, setting
from invmon.pipelines.cluster_settings import ClusterSettings
from invmon.pipelines.compile import compile_pipeline, storage_class_note

DEFAULT_EXPERIMENT = "inventory-monitoring"
INSTALL_MODES = ("auto", "single-user", "multi-user")
# The run's ServiceAccount per install mode: the project's, made by manifests/single-user in KFP's
# namespace; the one the Kubeflow profile controller makes in every Profile namespace.
SERVICE_ACCOUNTS = {"single-user": "invmon-pipeline", "multi-user": "default-editor"}
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


@dataclass(frozen=True)
class Submitted:
    """A run created on the cluster."""

    run_id: str
    experiment: str
    url: str
    install: str = "single-user"
    namespace: str | None = None
    service_account: str | None = None


@dataclass(frozen=True)
class RunPlace:
    """Where a run executes and as whom, for one install mode of Kubeflow Pipelines."""

    install: str
    namespace: str | None
    service_account: str


def run_place(install: str, namespace: str | None, service_account: str | None, client):
    """The run's namespace and ServiceAccount for ``install`` (``auto``: ask the API server's
    healthz whether it is multi-user). Empty ``service_account``: the install mode's."""
    if install not in INSTALL_MODES:
        raise ValueError(f"--install {install!r}: expected one of {', '.join(INSTALL_MODES)}")
    if install == "auto":
        install = "multi-user" if client.get_kfp_healthz().multi_user else "single-user"
    account = service_account or SERVICE_ACCOUNTS[install]
    if install == "single-user":
        if namespace:
            raise ValueError(
                f"--namespace {namespace!r}: single-user Kubeflow Pipelines runs every pipeline "
                "in its own namespace (kubeflow) whatever a client names; leave --namespace out "
                "(or pass --install multi-user for a Kubeflow Profile namespace)"
            )
        return RunPlace(install, None, account)
    namespace = namespace or client.get_user_namespace()
    if not namespace:
        raise ValueError(
            "multi-user Kubeflow Pipelines: --namespace PROFILE is required (the Kubeflow "
            "Profile namespace the run executes in)"
        )
    return RunPlace(install, namespace, account)


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
    service_account: str | None = None,
    enable_caching: bool | None = None,
    settings: ClusterSettings | None = None,
    token_env: str | None = None,
    client=None,
    install: str = "auto",
    preflight=None,
) -> Submitted:
    """Compile the pipeline for ``settings`` and start a run of it on the server at ``host``.

    ``install`` (``auto``: the server's healthz says) picks the namespace and the default
    ``service_account`` (:func:`run_place`). ``enable_caching=None`` keeps the compiled default
    (caching on); False reruns every task. ``client`` replaces the ``kfp.Client`` built for
    ``host`` (tests pass one). ``preflight(place, package)``, when given, checks the cluster
    before the run is created and raises to stop it (:func:`check_cluster`).
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

            # No namespace here: single-user servers must not get one, and multi-user runs
            # name theirs below.
            client = kfp.Client(host=host, existing_token=token)
        place = run_place(install, namespace, service_account, client)
        if preflight is not None:
            preflight(place, package)
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment,
            namespace=place.namespace,
            enable_caching=enable_caching,
            service_account=place.service_account,
        )
    return Submitted(
        run_id=result.run_id,
        experiment=experiment,
        url=f"{host.rstrip('/')}/#/runs/details/{result.run_id}",
        install=place.install,
        namespace=place.namespace,
        service_account=place.service_account,
    )


@dataclass(frozen=True)
class SubmitSettings(Settings):
    """Settings of ``invmon submit``: the server, the run, and the cluster it is compiled for."""

    host: str = setting(help="KFP API endpoint, e.g. https://HOST/pipeline")
    experiment: str = setting(DEFAULT_EXPERIMENT, help="experiment to run in")
    run_name: str | None = setting(None, help="run name shown in the UI")
    namespace: str | None = setting(
        None, help="Kubeflow Profile namespace the run executes in (multi-user only)"
    )
    install: str = setting(
        "auto",
        choices=INSTALL_MODES,
        help="how Kubeflow Pipelines is installed; auto: ask the API server's healthz "
        "(multi_user), which picks the namespace and the ServiceAccount",
    )
    param: tuple[str, ...] = setting(
        (),
        help="pipeline parameter (repeatable), e.g. --param classes=1-5",
        metavar="NAME=VALUE",
    )
    service_account: str = setting(
        "",
        help="ServiceAccount the run's pods use (empty: invmon-pipeline on single-user, "
        "default-editor in a multi-user Profile namespace)",
    )
    token_env: str | None = setting(
        None, help="environment variable holding a bearer token", metavar="VAR"
    )
    preflight: bool = setting(
        True,
        help="start the run without checking the cluster first (invmon doctor's checks)",
        flag="--no-preflight",
    )
    kubeconfig: str = setting("", help="kubeconfig of the cluster the preflight checks")
    context: str = setting("", help="kubeconfig context of that cluster (empty: its current)")
    cluster: ClusterSettings = setting(default_factory=ClusterSettings, help="cluster")


def check_cluster(settings: SubmitSettings, place: RunPlace, package: Path, api_client=None):
    """The preflight of invmon doctor for this compile and run place; RuntimeError with the
    table when a check fails."""
    from invmon.cluster import preflight
    from invmon.stages.doctor import KFP_NAMESPACE, DoctorSettings

    cluster = settings.cluster
    doctor = DoctorSettings(
        install=place.install,
        namespace=place.namespace or KFP_NAMESPACE,
        service_account=place.service_account,
        gpu=cluster.gpu,
        workspace=cluster.workspace,
        package=str(package),
    )
    client = api_client or preflight.api_client(settings.kubeconfig, settings.context)
    report = preflight.run_checks(client, doctor.needs())
    if not report.ok:
        raise RuntimeError(
            "the cluster is not ready for this run (--no-preflight starts it anyway):\n"
            + report.table()
        )


def run(settings: SubmitSettings, api_client=None) -> Submitted:
    """Compile for ``settings.cluster``, check the cluster (unless ``--no-preflight``) and start
    the run (caching off when compiled off). ``api_client`` replaces the preflight's client."""
    check = None
    if settings.preflight:
        # The preflight fails a run without a workspace storage class and lists the classes.
        check = functools.partial(check_cluster, settings, api_client=api_client)
    elif storage_class_note(settings.cluster):
        raise ValueError(
            "refusing to start a run whose workspace has no --workspace-storage-class: "
            + storage_class_note(settings.cluster).removeprefix(
                "note: no --workspace-storage-class: "
            )
        )
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
        install=settings.install,
        preflight=check,
    )


SUBMIT = Command(
    SubmitSettings,
    run,
    description="Compile the pipeline and start a run of it through kfp.Client.",
    show=lambda r, _: (
        f"started run {r.run_id} in experiment {r.experiment!r} ({r.install}, "
        f"{'namespace ' + r.namespace if r.namespace else 'the KFP namespace'}, as "
        f"{r.service_account}): {r.url}"
    ),
)
