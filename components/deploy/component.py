"""KFP component: deploy the model to KServe (or, in a local run, serve it on loopback)."""

from kfp.dsl import Dataset, Input, Model

from invmon.components.interface import stage_component
from invmon.stages.deploy import DeploySettings


# On a cluster: create or update the InferenceService, wait until it is Ready (the step fails with
# the service's conditions otherwise), then send a smoke request with a test image and check the
# answer against the model run in this step.
@stage_component(
    "deploy",
    "Roll the model out as a KServe InferenceService, or check it behind a local ModelServer.",
    DeploySettings,
    notes={
        "model": "The trained model folder.",
        "arranged": "The arranged dataset; its first test image is the smoke request.",
        "store_endpoint": "empty: KFP's own object store",
        "canary_traffic_percent": "On update in Knative mode, traffic share of the new "
        "revision (-1: all traffic; KFP has no optional integers and 0 is a share).",
        "workspace": "The pipeline workspace path, when the arranged images live in it.",
    },
)
def deploy(
    model: Input[Model],
    arranged: Input[Dataset],
    target: str,
    name: str,
    namespace: str,
    image: str,
    service_account: str,
    deployment_mode: str,
    min_replicas: int,
    max_replicas: int,
    cpu: str,
    memory: str,
    gpus: int,
    node_selector: dict,
    tolerations: list,
    monitor: str,
    store_endpoint: str,
    timeout: float,
    engine_key_secret: str,
    canary_traffic_percent: int = -1,
    workspace: str = "",
):
    from invmon.cluster.inference_service import ServiceSpec
    from invmon.stages import deploy as stage

    service = ServiceSpec(
        name=name,
        namespace=namespace,
        image=image,
        service_account=service_account,
        deployment_mode=deployment_mode,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        node_selector=node_selector,
        tolerations=tuple(tolerations),
        monitor=monitor,
        engine_key_secret=engine_key_secret,
        canary_traffic_percent=None if canary_traffic_percent < 0 else canary_traffic_percent,
    )
    settings = stage.DeploySettings(
        model_uri=model.uri,
        model=model.path,
        service=service,
        target=target,
        timeout=timeout,
        arranged=arranged.path,
        # The pipeline passes its artifact endpoint, empty where it is KFP's own store.
        **({"store_endpoint": store_endpoint} if store_endpoint else {}),
    )
    print(stage.run(settings).to_dict())
