"""Noticing pods that never start: a wait that fails when its pods stay unschedulable.

A Katib trial or TrainJob node that a Profile's ResourceQuota refuses, or that no node can hold,
stays Pending with the condition ``PodScheduled=False``, reason ``Unschedulable``, and a message
from the scheduler (``0/5 nodes are available: 3 Insufficient nvidia.com/gpu ...``). The custom
object it belongs to reports nothing of it, so a wait on the object alone would run for its whole
timeout (a day for tune, a week for train). :class:`UnschedulableWatch` lists the pods of one
object on every poll of that wait and fails it, naming the pod and the scheduler's message, once a
pod has been unschedulable for the set time.

The pods are found by :data:`POD_GROUP_LABEL`, which the project puts on the pod templates it
renders (the Katib trial Job, the TrainJob's node pods), so nothing depends on the labels each
controller adds. Only ``list`` on pods is asked of the API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# The label the trial and TrainJob pod templates carry: the name of the Experiment or TrainJob.
POD_GROUP_LABEL = "inventory-monitoring.io/pods-of"
UNSCHEDULABLE = "Unschedulable"


class PodsUnschedulable(RuntimeError):
    """A pod of the waited-for object stayed unschedulable for too long."""


def unschedulable_message(pod: dict) -> str | None:
    """The scheduler's message when ``pod`` is unschedulable (PodScheduled=False, reason
    Unschedulable), else None."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and str(condition.get("status")) == "False"
            and condition.get("reason") == UNSCHEDULABLE
        ):
            return condition.get("message") or "no message from the scheduler"
    return None


class UnschedulableWatch:
    """Called on every poll of a wait: raises :class:`PodsUnschedulable` once one of the pods
    labelled ``POD_GROUP_LABEL=group`` has been unschedulable for ``limit`` seconds.

    ``list_pods(namespace, selector)`` returns the pods (as API JSON). A pod that gets scheduled,
    or goes away, starts from zero again if it becomes unschedulable later.
    """

    def __init__(
        self,
        list_pods: Callable[[str, str], list[dict]],
        namespace: str,
        group: str,
        what: str,
        limit: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.list_pods, self.namespace, self.group = list_pods, namespace, group
        self.what, self.limit, self.clock = what, limit, clock
        self.since: dict[str, float] = {}

    def __call__(self, _obj: dict | None = None) -> None:
        now = self.clock()
        waiting = {}
        for pod in self.list_pods(self.namespace, f"{POD_GROUP_LABEL}={self.group}"):
            message = unschedulable_message(pod)
            if message is not None:
                waiting[pod["metadata"]["name"]] = message
        self.since = {name: self.since.get(name, now) for name in waiting}
        for name, message in sorted(waiting.items()):
            stuck = now - self.since[name]
            if stuck >= self.limit:
                raise PodsUnschedulable(
                    f"{self.what}: pod {self.namespace}/{name} has been unschedulable for "
                    f"{stuck:.0f}s (limit {self.limit:.0f}s): {message}. Free or raise the "
                    "namespace's ResourceQuota, or lower the pods' --resources/--gpus, or check "
                    "the node selector and tolerations (docs/cluster.md, Troubleshooting)"
                )
            log.warning("%s: pod %s unschedulable for %.0fs: %s", self.what, name, stuck, message)


def pod_lister(custom_api) -> Callable[[str, str], list[dict]]:
    """``list_pods(namespace, selector)`` over the same API client as ``custom_api`` (a
    CustomObjectsApi), returning the pods as API JSON."""
    from kubernetes import client

    core = client.CoreV1Api(custom_api.api_client)

    def list_pods(namespace: str, selector: str) -> list[dict]:
        pods = core.list_namespaced_pod(namespace, label_selector=selector)
        return [core.api_client.sanitize_for_serialization(pod) for pod in pods.items]

    return list_pods


def watch_pods(
    custom_api, namespace: str, group: str, what: str, limit: float | None, clock=time.monotonic
) -> UnschedulableWatch | None:
    """The watch for the pods of ``group`` (None when ``limit`` is None: no watch)."""
    if limit is None:
        return None
    return UnschedulableWatch(pod_lister(custom_api), namespace, group, what, limit, clock)
