"""Where a run's GPU work goes: the backends of the search and the training, and the GPU pool.

:class:`GpuPool` is the one definition of these compile-time settings. ``invmon compile`` (through
``ClusterSettings``) renders the pipeline's GPU tasks and pods with it, and ``invmon doctor``
checks the cluster against the same values, so the two take the same options and cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from invmon.cluster.placement import Toleration, parse_toleration
from invmon.core.settings import Settings, setting
from invmon.training.search import BACKENDS

# How the train task trains: in its own process (on a GPU node), or as a TrainJob it creates.
LAUNCHERS = ("local", "trainjob")


@dataclass(frozen=True)
class GpuPool(Settings):
    """The backends that run the search and the training, and the GPU nodes they run on."""

    # local: in the task itself, on a GPU node. katib / trainjob: the task creates a Katib
    # Experiment / a Kubeflow Trainer TrainJob on the GPU pool and waits for it, without holding
    # a GPU itself.
    tune_backend: str = setting(
        "local",
        help="run the search in the tune task (local) or as a Katib Experiment (katib)",
        choices=BACKENDS,
    )
    train_launcher: str = setting(
        "local",
        help="train in the train task (local) or as a multi-node Kubeflow TrainJob (trainjob)",
        choices=LAUNCHERS,
    )
    # One training process uses one GPU: a task or a Katib trial that runs the loop itself gets
    # one, and only TrainJob nodes, which run torchrun with a process per GPU, get more.
    gpus: int = setting(
        1,
        help="GPUs of each TrainJob node, one training process each (more than 1 needs "
        "--train-launcher trainjob; tune trials and tasks that train themselves use one)",
        minimum=1,
    )
    gpu_node_selector: dict[str, str] = setting(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        help="node label of the GPU pool (repeatable)",
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

    def __post_init__(self):
        super().__post_init__()
        if self.gpus > 1 and self.train_launcher != "trainjob":
            raise ValueError(
                f"--gpus {self.gpus}: a train task trains on one GPU; give more to TrainJob "
                "nodes (--train-launcher trainjob, a training process per GPU) or leave --gpus 1"
            )

    def placement(self) -> dict:
        """The pool's node selector and tolerations, as task arguments take them."""
        return {
            "node_selector": dict(self.gpu_node_selector),
            "tolerations": [t.to_dict() for t in self.gpu_tolerations],
        }
