"""Where pods run and as whom: the GPU pool (node selector, tolerations), GPUs, ServiceAccount,
non-root user and S3 credentials by Secret reference.

One home for the pod placement that Katib trials, TrainJob nodes, the pipeline's GPU tasks and
the InferenceService share, and for the ``KEY[=VALUE]:EFFECT`` form in which a toleration is given
on the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from invmon.core.settings import Settings, setting

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration for the GPU node pool's taint."""

    key: str = "nvidia.com/gpu"
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = "NoSchedule"

    def to_dict(self) -> dict:
        """The toleration as the API takes it (unset fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_toleration(text: str, flag: str = "--gpu-toleration") -> Toleration:
    """Parse ``KEY[=VALUE]:EFFECT`` (or ``KEY[=VALUE]`` for any effect) into a Toleration."""
    taint, _, effect = text.partition(":")
    key, sep, value = taint.partition("=")
    if not key:
        raise ValueError(f"{flag} {text!r}: expected KEY[=VALUE]:EFFECT")
    if effect and effect not in EFFECTS:
        raise ValueError(
            f"{flag} {text!r}: effect must be one of {', '.join(EFFECTS)}, got {effect!r}"
        )
    return Toleration(
        key=key,
        operator="Equal" if sep else "Exists",
        value=value if sep else None,
        effect=effect or None,
    )


@dataclass(frozen=True)
class PodPlacement:
    """Where training pods run and as whom: GPU pool, ServiceAccount, non-root user, S3 access.

    ``s3_secret`` names a Secret holding ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``;
    only its name appears in manifests, never its values.
    """

    gpus: int = 1
    node_selector: tuple[tuple[str, str], ...] = (("nvidia.com/gpu.present", "true"),)
    tolerations: tuple[dict, ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    service_account: str | None = None
    s3_secret: str | None = None
    run_as_user: int = 1000

    @classmethod
    def for_gpu_pool(
        cls,
        gpus: int,
        node_selector: dict[str, str] | None = None,
        tolerations: list[dict] | None = None,
        s3_secret: str = "",
    ) -> PodPlacement:
        """From the pipeline's settings (empty values mean none)."""
        return cls(
            gpus=gpus,
            node_selector=tuple((node_selector or {}).items()),
            tolerations=tuple(dict(t) for t in tolerations or ()),
            s3_secret=s3_secret or None,
        )

    def env(self) -> list[dict]:
        """Environment variables: S3 credentials from the Secret, by reference."""
        if not self.s3_secret:
            return []
        return [
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": self.s3_secret, "key": key}},
            }
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ]

    def resources(self) -> dict:
        """GPU limits (nothing on CPU-only runs)."""
        return {"limits": {"nvidia.com/gpu": str(self.gpus)}} if self.gpus else {}

    def security_context(self) -> dict:
        """Run as a non-root user."""
        return {"runAsNonRoot": True, "runAsUser": self.run_as_user}

    def gpu_pool(self) -> dict:
        """Node selector and tolerations of the GPU pool (none on CPU-only runs)."""
        if not self.gpus:
            return {}
        pool = {}
        if self.node_selector:
            pool["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            pool["tolerations"] = [dict(t) for t in self.tolerations]
        return pool


@dataclass(frozen=True)
class PodOptions(Settings):
    """Where the pods a stage creates on the cluster (Katib trials, TrainJob nodes) run."""

    image: str = setting("", help="image of the pods (default: the project's train image)")
    namespace: str = setting(
        "", help="namespace of the pods (default: this pod's namespace, else kubeflow-user)"
    )
    gpus: int = setting(1, help="GPUs per pod", minimum=0)
    node_selector: dict[str, str] = setting(
        default_factory=dict,
        help="node label of the GPU pool (repeatable; default nvidia.com/gpu.present=true)",
        metavar="KEY=VALUE",
    )
    tolerations: tuple[Toleration, ...] = setting(
        (),
        help="taint of the GPU pool to tolerate (repeatable; default nvidia.com/gpu:NoSchedule)",
        flag="--toleration",
        metavar="KEY[=VALUE]:EFFECT",
        parse=lambda text: parse_toleration(text, "--toleration"),
    )
    service_account: str = setting("", help="ServiceAccount of the pods")
    s3_secret: str = setting(
        "", help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY that the pods read S3 with"
    )

    def placement(self) -> PodPlacement:
        """The pods' placement; without a node selector or toleration, the default GPU pool's."""
        chosen = {}
        if self.node_selector or self.tolerations:
            chosen = {
                "node_selector": tuple(self.node_selector.items()),
                "tolerations": tuple(t.to_dict() for t in self.tolerations),
            }
        return PodPlacement(
            gpus=self.gpus,
            service_account=self.service_account or None,
            s3_secret=self.s3_secret or None,
            **chosen,
        )
