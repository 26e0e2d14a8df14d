"""Doctor: check the cluster a run is about to use, in seconds, before hours of training.

``invmon doctor`` reads the cluster of the current kubeconfig (or ``--kubeconfig`` and
``--context``) and prints a pass/fail table (:mod:`invmon.cluster.preflight`): controller
versions against the floors, the run's ServiceAccount's permissions, the workspace's storage
class, the Secrets the compile names, the GPU nodes the pool reaches, and the run namespace's
labels. Its options are the compile options that decide what the run needs (the same flags as
``invmon compile``); ``invmon submit`` runs the same checks unless ``--no-preflight``. It exits
1 when a check fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from invmon.cluster import preflight
from invmon.cluster.gpu_pool import GpuPool
from invmon.cluster.placement import KFP_OBJECT_STORE_SECRET
from invmon.cluster.workspace import WorkspaceSettings
from invmon.core.command import Command, Incomplete
from invmon.core.settings import Settings, setting

INSTALL_MODES = ("single-user", "multi-user")
# The run's ServiceAccount per install mode, as invmon submit passes it (tests hold them equal).
SERVICE_ACCOUNTS = {"single-user": "invmon-pipeline", "multi-user": "default-editor"}
# Standalone KFP runs every pipeline in its own namespace.
KFP_NAMESPACE = "kubeflow"
_KFP = KFP_OBJECT_STORE_SECRET
KFP_SECRET = f"{_KFP.name}:{_KFP.access_key},{_KFP.secret_key}"


def parse_secret(text: str) -> str:
    """``NAME:KEY[,KEY...]`` checked (a Secret and the keys the run reads from it)."""
    name, sep, keys = text.partition(":")
    if not name or not sep or not all(keys.split(",")):
        raise ValueError(f"--secret {text!r}: expected NAME:KEY[,KEY...]")
    return text


@dataclass(frozen=True)
class DoctorSettings(Settings):
    """Where to look (kubeconfig, namespace, ServiceAccount) and what the compiled run needs."""

    kubeconfig: str = setting("", help="kubeconfig file (empty: $KUBECONFIG or ~/.kube/config)")
    context: str = setting("", help="kubeconfig context (empty: its current one)")
    install: str = setting(
        "single-user",
        choices=INSTALL_MODES,
        help="how Kubeflow Pipelines is installed: where runs execute and as whom",
    )
    namespace: str = setting(
        "", help="namespace the run executes in (single-user: kubeflow; multi-user: required)"
    )
    service_account: str = setting(
        "", help="the run's ServiceAccount (empty: invmon-pipeline or default-editor)"
    )
    # The compile options that decide what the run needs, defined once for both commands.
    gpu: GpuPool = setting(
        default_factory=GpuPool,
        help="GPU work, as compiled: search and training backends, GPU pool",
    )
    workspace: WorkspaceSettings = setting(
        default_factory=WorkspaceSettings, help="the run's workspace, as compiled"
    )
    secrets: tuple[str, ...] = setting(
        (KFP_SECRET,),
        help="Secret the run reads, with its keys (repeatable; KFP's object store's by default)",
        flag="--secret",
        metavar="NAME:KEY[,KEY...]",
        parse=parse_secret,
    )
    package: str = setting("", help="compiled pipeline YAML: also check the Secrets its tasks read")

    def place(self) -> tuple[str, str]:
        """The run's namespace and ServiceAccount."""
        namespace = self.namespace or (KFP_NAMESPACE if self.install == "single-user" else "")
        if not namespace:
            raise ValueError("--install multi-user: --namespace PROFILE is required")
        return namespace, self.service_account or SERVICE_ACCOUNTS[self.install]

    def needs(self) -> preflight.Needs:
        """What the run needs from the cluster."""
        namespace, account = self.place()
        secrets = {}
        for text in self.secrets:
            name, _, keys = text.partition(":")
            secrets[name] = tuple(keys.split(","))
        if self.package:
            secrets |= preflight.secrets_of_package(self.package)
        return preflight.Needs(
            namespace=namespace,
            service_account=account,
            gpu=self.gpu,
            workspace=self.workspace,
            secrets=secrets,
        )


def run(settings: DoctorSettings, api_client=None) -> preflight.Report:
    """Check the cluster for the run ``settings`` describe; ``api_client`` replaces the one
    built from the kubeconfig."""
    needs = settings.needs()
    client = api_client or preflight.api_client(settings.kubeconfig, settings.context)
    return preflight.run_checks(client, needs)


def show(report: preflight.Report, _settings=None) -> str:
    """The table; a failed check makes the command exit 1 after printing it."""
    if not report.ok:
        names = ", ".join(c.name for c in report.failures())
        raise Incomplete(f"{len(report.failures())} check(s) failed: {names}", report.table())
    return report.table()


DOCTOR = Command(
    DoctorSettings,
    run,
    description="Check a Kubeflow cluster before a run: controller versions, the run's "
    "permissions, the workspace storage class, Secrets, GPU nodes and namespace labels. "
    "Prints a pass/fail table with a fix per failure; exits 1 when a check fails.",
    show=show,
)
