"""KFP component: deploy the model to KServe (or, in a local run, serve it on loopback)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from invmon.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("deploy"), install_kfp_package=False)
def deploy(
    model: Input[Model],
    arranged: Input[Dataset],
    target: str = "kserve",
    name: str = "bin-counter",
    namespace: str = "",
    serving_image: str = "",
    service_account: str = "invmon-s3",
):
    """Roll the model out as a KServe InferenceService, or check it behind a local ModelServer.

    Args:
        model: The trained model folder.
        arranged: The arranged dataset; a test image is sent as the smoke request.
        target: kserve (create or update the InferenceService) or local (serve on loopback).
        name: InferenceService and model name.
        namespace: Kubernetes namespace (empty: the pipeline's own namespace).
        serving_image: Predictor image (empty: the project's serving image).
        service_account: ServiceAccount whose Secret holds KServe's S3 settings.
    """
    from invmon import deploy as stage

    if target == "local":
        report = stage.deploy_local_from_dataset(model.path, arranged.path, name=name)
        print(report)
    elif target == "kserve":
        print(stage.deploy_to_cluster(model.uri, name, namespace, serving_image, service_account))
    else:
        raise ValueError(f"target must be kserve or local, got {target!r}")
