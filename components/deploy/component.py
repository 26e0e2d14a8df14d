"""KFP component: deploy the model to KServe (or, in a local run, serve it on loopback)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from invmon.cluster.container_images import DEFAULT_IMAGES


# Over 60 lines only by its interface: KFP reads the signature and the docstring's Args (the
# UI's descriptions); the body adapts artifacts and calls the stage's run.
@dsl.component(base_image=DEFAULT_IMAGES.for_stage("deploy"), install_kfp_package=False)
def deploy(
    model: Input[Model],
    arranged: Input[Dataset],
    target: str = "kserve",
    name: str = "bin-counter",
    namespace: str = "",
    serving_image: str = "",
    service_account: str = "invmon-s3",
    deployment_mode: str = "Standard",
    min_replicas: int = 1,
    max_replicas: int = 2,
    cpu: str = "1",
    memory: str = "2Gi",
    gpus: int = 0,
    canary_traffic_percent: int = -1,
    timeout: float = 600.0,
    workspace: str = "",
):
    """Roll the model out as a KServe InferenceService, or check it behind a local ModelServer.

    On a cluster: create or update the InferenceService, wait until it is Ready (the step fails
    with the service's conditions otherwise), then send a smoke request with a test image and
    check the answer against the model run in this step.

    Args:
        model: The trained model folder.
        arranged: The arranged dataset; its first test image is the smoke request.
        target: kserve (create or update the InferenceService) or local (serve on loopback).
        name: InferenceService and model name.
        namespace: Kubernetes namespace (empty: the pipeline's own namespace).
        serving_image: Predictor image (empty: the project's serving image).
        service_account: ServiceAccount whose Secret holds KServe's S3 settings.
        deployment_mode: Standard (Kubernetes Deployment) or Knative (scale to zero, canary).
        min_replicas: Fewest predictor replicas (0 needs Knative).
        max_replicas: Most predictor replicas.
        cpu: CPU request and limit per replica.
        memory: Memory request and limit per replica.
        gpus: GPUs per replica.
        canary_traffic_percent: On update in Knative mode, traffic share of the new revision
            (-1: all traffic).
        timeout: Seconds to wait for the service to become Ready.
        workspace: The pipeline workspace path, when the arranged images live in it.
    """
    from invmon.cluster.inference_service import ServiceSpec
    from invmon.stages import deploy as stage

    service = ServiceSpec(
        name=name,
        namespace=namespace,
        image=serving_image,
        service_account=service_account,
        deployment_mode=deployment_mode,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        # KFP has no optional integers: -1 stands for "not given".
        canary_traffic_percent=None if canary_traffic_percent < 0 else canary_traffic_percent,
    )
    settings = stage.DeploySettings(
        model_uri=model.uri,
        model=model.path,
        service=service,
        target=target,
        timeout=timeout,
        arranged=arranged.path,
    )
    print(stage.run(settings).to_dict())
