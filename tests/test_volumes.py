"""The volumes of the pods the project renders itself (Katib trials, TrainJob nodes): the run's
workspace PVC, /dev/shm, /tmp, and how a task decides which of them its pods need."""

import pytest

from invmon.cluster.placement import PodOptions, Resources
from invmon.cluster.volumes import PodVolumes, pod_storage, scratch_for_copy, workspace_claim


def test_the_workspace_claim_is_kfps_name_for_the_runs_pvc():
    # kubeflow/pipelines backend/src/v2/driver/k8s.go:127-129, GetWorkspacePVCName.
    assert (
        workspace_claim("inventory-monitoring-x7k2p") == "inventory-monitoring-x7k2p-kfp-workspace"
    )
    with pytest.raises(ValueError, match="PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER"):
        workspace_claim("{{$.pipeline_job_resource_name}}")


def test_pods_mount_the_workspace_where_the_task_sees_the_data(tmp_path):
    workspace = tmp_path / "ws"
    (workspace / "shards").mkdir(parents=True)
    storage = pod_storage(str(workspace / "shards"), str(workspace), "run-9")
    assert storage == {"workspace_claim": "run-9-kfp-workspace", "workspace_path": str(workspace)}
    volumes = PodOptions(**storage).volumes()
    assert volumes.holds(str(workspace / "shards"))
    assert not volumes.holds(str(tmp_path / "elsewhere"))
    assert not volumes.holds(str(workspace))  # the data is a folder inside it, not the mount


def test_pods_that_copy_the_data_get_a_tmp_that_holds_it(tmp_path):
    """Without a workspace a pod copies the dataset to /tmp: the volume and its ephemeral-storage
    request are the dataset's size plus the default room, rounded up to whole GiB."""
    data = tmp_path / "shards"
    data.mkdir()
    (data / "a.npy").write_bytes(b"\0" * 3 * 2**20)  # 3 MiB
    assert scratch_for_copy(str(data), least="1Gi") == "2Gi"
    assert pod_storage(str(data), "", "run-9") == {"scratch_size": scratch_for_copy(str(data))}
    assert PodVolumes(scratch_size="2Gi").requests() == {"ephemeral-storage": "2Gi"}


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="--shm-size 'lots' is not a Kubernetes quantity"):
        PodVolumes(shm_size="lots")
    with pytest.raises(ValueError, match="memory request 8Gi is above its limit 4Gi"):
        Resources.parse("cpu=1,memory=8Gi/4Gi")
    assert str(Resources.parse("cpu=500m/2,memory=1Gi")) == "cpu=500m/2,memory=1Gi/1Gi"
    assert Resources.parse("cpu=500m/2.5,memory=1Gi").cores() == 2
