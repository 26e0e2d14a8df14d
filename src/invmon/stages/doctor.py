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
from invmon.cluster.placement import KFP_OBJECT_STORE_SECRET, Toleration, parse_toleration
from invmon.core.command import Command, Incomplete
from invmon.core.settings import Settings, setting

INSTALL_MODES = ("single-user", "multi-user")
# The run's ServiceAccount per install mode, as invmon submit passes it (tests hold them equal).
SERVICE_ACCOUNTS = {"single-user": "invmon-pipeline", "multi-user": "default-editor"}
# Standalone KFP runs every pipeline in its own namespace.
KFP_NAMESPACE = "kubeflow"
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod")
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
    tune_backend: str = setting("local", choices=("local", "katib"), help="as compiled")
    train_launcher: str = setting("local", choices=("local", "trainjob"), help="as compiled")
    gpus: int = setting(1, help="GPUs per node or trial, as compiled", minimum=1)
    gpu_node_selector: dict[str, str] = setting(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        help="node label of the GPU pool (repeatable), as compiled",
        metavar="KEY=VALUE",
    )
    gpu_tolerations: tuple[Toleration, ...] = setting(
        (Toleration(),),
        help="taint of the GPU pool to tolerate (repeatable; default nvidia.com/gpu:NoSchedule)",
        flag="--gpu-toleration",
        metavar="KEY[=VALUE]:EFFECT",
        parse=parse_toleration,
        show_default=False,
    )
    workspace: bool = setting(
        True, help="the run has no workspace PVC (compiled so)", flag="--no-workspace"
    )
    workspace_storage_class: str = setting("", help="storage class of the workspace PVC")
    workspace_access_modes: tuple[str, ...] = setting(
        ("ReadWriteMany",),
        choices=ACCESS_MODES,
        help="access mode of the workspace PVC (repeatable)",
        flag="--workspace-access-mode",
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
            katib=self.tune_backend == "katib",
            trainjob=self.train_launcher == "trainjob",
            workspace=self.workspace,
            storage_class=self.workspace_storage_class,
            access_modes=self.workspace_access_modes,
            gpu_node_selector=dict(self.gpu_node_selector),
            gpu_tolerations=tuple(t.to_dict() for t in self.gpu_tolerations),
            gpus=self.gpus,
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
