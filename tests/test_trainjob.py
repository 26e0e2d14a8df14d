"""Multi-node training as a Kubeflow Trainer TrainJob: the rendering (checked against the kubeflow
package's typed Trainer models) and the create/wait/fail logic against a FAKE Kubernetes API server.
"""

import dataclasses

import pytest
from support.fake_kubernetes import FakeKubernetesApi, custom_objects_api, fake_kubernetes_server

from invmon.cli import build_parser
from invmon.cluster import trainjob
from invmon.cluster.placement import PodOptions, PodPlacement
from invmon.cluster.volumes import PodVolumes
from invmon.training.config import TrainConfig

SETTINGS = trainjob.TrainJobSettings(
    name="train-run-7",
    data="s3://ml-data/shards",
    out="s3://ml-data/models/run-7",
    image="registry.example.com/invmon-train:1",
    namespace="team-a",
    num_nodes=4,
    endpoint_url="http://minio.kubeflow:9000",
    placement=PodPlacement(gpus=8, s3_secret="invmon-s3"),
)
CONFIG = TrainConfig(lr=1e-3, batch_size=256, epochs=30, label_smoothing=0.1, weights="imagenet")


def _train_config(args):
    """The TrainConfig the real ``invmon train`` command builds from parsed ``args``."""
    return args.command_object.settings_from(args).config()


def test_trainjob_is_accepted_by_the_typed_trainer_models():
    manifest = trainjob.render_trainjob(CONFIG, SETTINGS)
    job = trainjob.check_trainjob(manifest)
    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert manifest["kind"] == "TrainJob"
    assert job.spec.runtime_ref.name == "torch-distributed"
    assert job.spec.trainer.num_nodes == 4 and job.spec.trainer.num_proc_per_node == 8
    assert job.spec.trainer.image == SETTINGS.image
    assert job.spec.trainer.resources_per_node.to_dict() == {
        "limits": {"nvidia.com/gpu": "8"},
        "requests": {"ephemeral-storage": "8Gi"},
    }
    assert job.to_dict() == manifest


def test_trainjob_runs_the_train_command_under_torchrun_with_the_recipe():
    command = trainjob.render_trainjob(CONFIG, SETTINGS)["spec"]["trainer"]["command"]
    assert command[:4] == ["torchrun", "--no-python", "invmon", "train"]
    args = build_parser().parse_args(command[3:])
    assert _train_config(args) == CONFIG
    assert (args.data, args.out) == (SETTINGS.data, SETTINGS.out)
    assert args.checkpoint == "s3://ml-data/models/checkpoint-run-7"  # a restarted node resumes
    assert args.endpoint_url == SETTINGS.endpoint_url


def test_the_checkpoint_lives_beside_the_model_not_under_its_prefix():
    """The model prefix is copied into the model artifact and downloaded by KServe's storage
    initializer at every predictor start, which lists by prefix without a trailing slash
    (kserve/kserve python/storage/kserve_storage/kserve_storage.py:694-721): the checkpoint
    must not share the model's prefix, not even as ``run-7.checkpoint``."""
    command = trainjob.render_trainjob(CONFIG, SETTINGS)["spec"]["trainer"]["command"]
    args = build_parser().parse_args(command[3:])
    model_key = SETTINGS.out.removeprefix("s3://")
    assert not args.checkpoint.removeprefix("s3://").startswith(model_key)
    assert args.checkpoint.rsplit("/", 1)[0] == SETTINGS.out.rsplit("/", 1)[0]
    explicit = dataclasses.replace(SETTINGS, checkpoint="s3://ml-data/ckpt/run-7")
    command = trainjob.render_trainjob(CONFIG, explicit)["spec"]["trainer"]["command"]
    assert build_parser().parse_args(command[3:]).checkpoint == "s3://ml-data/ckpt/run-7"


def test_nodes_run_non_root_on_the_gpu_pool_with_credentials_by_reference():
    manifest = trainjob.render_trainjob(CONFIG, SETTINGS)
    env = manifest["spec"]["trainer"]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env} == {"invmon-s3"}
    (patch,) = manifest["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["effect"] == "NoSchedule"


def test_nodes_read_the_shards_in_the_runs_workspace_read_only():
    """With the run's workspace PVC, every node mounts it read-only where the KFP tasks see it
    and trains on the shards in place; /dev/shm and /tmp are volumes, /tmp requested as
    ephemeral storage."""
    volumes = PodVolumes(workspace_claim="run-42-kfp-workspace", shm_size="16Gi")
    settings = trainjob.TrainJobSettings(
        name="train-ws",
        data="/kfp-workspace/shards",
        out="s3://ml-data/models/run-42",
        namespace="team-a",
        num_nodes=2,
        placement=PodPlacement(gpus=8),
        volumes=volumes,
    )
    manifest = trainjob.render_trainjob(CONFIG, settings)
    trainjob.check_trainjob(manifest)
    (patch,) = manifest["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["volumes"] == volumes.volumes()
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    claim = {"claimName": "run-42-kfp-workspace", "readOnly": True}
    assert {"name": "workspace", "persistentVolumeClaim": claim} in pod["volumes"]
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert {"name": "workspace", "mountPath": "/kfp-workspace", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    command = manifest["spec"]["trainer"]["command"]
    assert command[command.index("--data") + 1] == "/kfp-workspace/shards"
    with pytest.raises(ValueError, match=r"'/data/shards'.*--workspace-claim"):
        trainjob.TrainJobSettings("t", "/data/shards", "s3://b/m", volumes=volumes)
    with pytest.raises(ValueError, match="out '/kfp-workspace/model'"):
        trainjob.TrainJobSettings(
            "t", "/kfp-workspace/shards", "/kfp-workspace/model", volumes=volumes
        )


def test_a_misspelt_field_is_refused_naming_it():
    manifest = trainjob.render_trainjob(CONFIG, SETTINGS)
    manifest["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(ValueError, match=r"\$\.spec\.trainer\.numNode: not a field"):
        trainjob.check_trainjob(manifest)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": "/mnt/shards"}, "s3://"),
        ({"out": "model"}, "s3://"),
        ({"num_nodes": 0}, "--num-nodes"),
        ({"name": "Train Run"}, "name"),
    ],
)
def test_bad_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        trainjob.TrainJobSettings(**{**SETTINGS.__dict__, **change})


def test_global_batch_must_split_evenly_over_the_processes():
    with pytest.raises(ValueError, match="--batch-size 100 is not divisible by the 32"):
        trainjob.render_trainjob(CONFIG.replace(batch_size=100), SETTINGS)


def _complete_on_second_read(obj: dict, reads: int) -> None:
    kind = "Created" if reads == 1 else "Complete"
    obj["status"] = {"conditions": [{"type": kind, "status": "True", "reason": kind}]}


def test_run_creates_and_waits_until_complete():
    fake = FakeKubernetesApi(controller=_complete_on_second_read)
    manifest = trainjob.render_trainjob(CONFIG, SETTINGS)
    with fake_kubernetes_server(fake) as url:
        done = trainjob.run_trainjob(manifest, api=custom_objects_api(url), sleep=lambda s: None)
    assert done["status"]["conditions"][0]["type"] == "Complete"
    assert fake.requests[0] == (
        "POST",
        "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs",
    )
    stored = fake.objects[("trainjobs", "team-a", "train-run-7")]
    assert stored["spec"] == manifest["spec"]


def test_a_failed_trainjob_fails_visibly():
    def fail(obj, reads):
        obj["status"] = {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "JobSetFailed",
                    "message": "jobset failed: node-0 exited with code 1",
                }
            ]
        }

    fake = FakeKubernetesApi(controller=fail)
    manifest = trainjob.render_trainjob(CONFIG, SETTINGS)
    with fake_kubernetes_server(fake) as url, pytest.raises(RuntimeError) as err:
        trainjob.run_trainjob(manifest, api=custom_objects_api(url))
    assert "TrainJob team-a/train-run-7 failed: JobSetFailed" in str(err.value)
    assert "node-0 exited with code 1" in str(err.value)


def test_a_refused_create_is_an_error_naming_the_job():
    fake = FakeKubernetesApi(forbidden_namespaces=("team-a",))
    manifest = trainjob.render_trainjob(CONFIG, SETTINGS)
    with fake_kubernetes_server(fake) as url, pytest.raises(RuntimeError) as err:
        trainjob.run_trainjob(manifest, api=custom_objects_api(url))
    assert "could not create TrainJob team-a/train-run-7: 403 Forbidden" in str(err.value)


def test_train_on_cluster_end_to_end_with_a_fake_trainer_controller(
    shards_dir, s3_url, tmp_path, monkeypatch
):
    """The FAKE controller plays Kubeflow Trainer: it runs the TrainJob's own command (the
    ``invmon train`` part; torchrun is what the runtime adds) against a real S3 server, then marks
    the job Complete. train_on_cluster must then hand back a loadable model folder."""
    from invmon.cli import main
    from invmon.data.s3 import make_client
    from invmon.training.model import load_model

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("INVMON_CACHE_DIR", str(tmp_path / "cache"))
    client = make_client(s3_url)
    client.create_bucket(Bucket="artifacts")
    for path in shards_dir.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "artifacts", f"run/shards/{path.relative_to(shards_dir)}")

    def trainer(obj, reads):
        if reads == 1:
            command = obj["spec"]["trainer"]["command"]
            assert command[:3] == ["torchrun", "--no-python", "invmon"]
            assert main(command[3:]) == 0
            obj["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}

    fake = FakeKubernetesApi(controller=trainer)
    config = TrainConfig(epochs=1, batch_size=32, device="cpu")
    with fake_kubernetes_server(fake) as url:
        trainjob.train_on_cluster(
            "s3://artifacts/run/shards",
            "s3://artifacts/run/model",
            str(tmp_path / "model"),
            config,
            namespace="team-a",
            placement=PodPlacement(gpus=0),
            endpoint_url=s3_url,
            api=custom_objects_api(url),
            poll=0.01,
        )
    _model, model_config = load_model(tmp_path / "model")
    assert model_config.training["epochs_run"] == 1
    (name,) = [key[2] for key in fake.objects]
    assert name.startswith("invmon-train-")


def test_nodes_reading_kfps_object_store_get_its_secret_by_default():
    """The pipeline's train component leaves the Secret empty: for data on KFP's object store the
    nodes read mlpipeline-minio-artifact's accesskey/secretkey as the AWS SDK's variables."""
    from invmon.cluster.placement import PodOptions

    placement = PodOptions(gpus=8).placement("minio://mlpipeline/v2/artifacts/run/shards")
    settings = trainjob.TrainJobSettings(
        name="train-run-8",
        data="s3://mlpipeline/v2/shards",
        out="s3://mlpipeline/v2/model",
        placement=placement,
    )
    env = trainjob.render_trainjob(CONFIG, settings)["spec"]["trainer"]["env"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env} == {
        "AWS_ACCESS_KEY_ID": {"name": "mlpipeline-minio-artifact", "key": "accesskey"},
        "AWS_SECRET_ACCESS_KEY": {"name": "mlpipeline-minio-artifact", "key": "secretkey"},
    }
    none = PodOptions(s3_secret="none").placement("minio://mlpipeline/v2/artifacts/run/shards")
    settings = dataclasses.replace(settings, placement=none)
    assert "env" not in trainjob.render_trainjob(CONFIG, settings)["spec"]["trainer"]


def test_nodes_reading_the_workspace_get_the_secret_of_the_models_store():
    """With the shards in the workspace, the nodes still write the model to S3: their default
    Secret follows the model's store, not the (local) data path."""
    from invmon.stages import train

    settings = train.TrainSettings(
        data="/kfp-workspace/shards",
        out="/minio/mlpipeline/v2/artifacts/run/train/model",
        out_uri="minio://mlpipeline/v2/artifacts/run/train/model",
        launcher="trainjob",
    )
    store = train.nodes_store(settings)
    assert store == "minio://mlpipeline/v2/artifacts/run/train/model"
    secret = PodOptions().placement(store).s3_secret
    assert secret.name == "mlpipeline-minio-artifact"
    s3 = train.TrainSettings(data="s3://b/shards", out="s3://b/model", launcher="trainjob")
    assert train.nodes_store(s3) == "s3://b/shards"


# -- CPU and memory of the nodes, and nodes that never start (issue 22) -------------------------


def test_nodes_request_cpu_and_memory_from_the_pod_options():
    """Trainer applies resourcesPerNode to the ``node`` container (kubeflow/trainer
    pkg/runtime/core/trainingruntime.go:207-235 at 8c0f5059): the requests go there."""
    options = PodOptions(gpus=4, resources="cpu=8/16,memory=32Gi/64Gi")
    settings = dataclasses.replace(SETTINGS, placement=options.placement(SETTINGS.data))
    manifest = trainjob.render_trainjob(CONFIG, settings)
    assert manifest["spec"]["trainer"]["resourcesPerNode"] == {
        "requests": {"cpu": "8", "memory": "32Gi", "ephemeral-storage": "8Gi"},
        "limits": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"},
    }


def test_a_node_that_stays_unschedulable_fails_the_wait_naming_the_scheduler():
    """Against the FAKE Kubernetes API: the TrainJob shows nothing while its node pod cannot be
    placed; the wait fails after the set time (not after a week), naming the scheduler."""
    from support.fake_kubernetes import pod

    from invmon.cluster.scheduling import POD_GROUP_LABEL, PodsUnschedulable

    manifest = trainjob.render_trainjob(CONFIG, SETTINGS)
    patch = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    template = patch["replicatedJobs"][0]["template"]["spec"]["template"]
    assert template["metadata"]["labels"] == {POD_GROUP_LABEL: "train-run-7"}
    message = "0/4 nodes are available: 4 Insufficient memory. exceeded quota: kf-resource-quota"
    fake = FakeKubernetesApi(controller=lambda obj, reads: None)
    fake.add("pods", pod("train-run-7-node-0-0-abc", "team-a", template["metadata"]["labels"]))
    fake.add(
        "pods",
        pod("train-run-7-node-0-1-def", "team-a", template["metadata"]["labels"], message),
    )
    now = [0.0]
    with fake_kubernetes_server(fake) as url, pytest.raises(PodsUnschedulable) as err:
        trainjob.run_trainjob(
            manifest,
            api=custom_objects_api(url),
            poll=60,
            sleep=lambda s: now.__setitem__(0, now[0] + s),
            clock=lambda: now[0],
            unschedulable_timeout=300,
        )
    assert now[0] == 300
    assert "TrainJob team-a/train-run-7" in str(err.value)
    assert "train-run-7-node-0-1-def" in str(err.value) and message in str(err.value)
