"""KFP component: record the model that passed the quality gate in the Kubeflow Model Registry."""

from kfp.dsl import Artifact, Input, Model

from invmon.components.interface import stage_component
from invmon.stages.register import RegisterSettings


# The bearer token is the pod's ServiceAccount token (or $INVMON_REGISTRY_TOKEN): never a
# parameter, so that it is in no YAML and no log.
@stage_component(
    "register",
    "Record the model version, its test metrics, hyperparameters and this run's lineage in the "
    "Kubeflow Model Registry.",
    RegisterSettings,
    notes={
        "model": "The trained model folder (its storage URI is what gets registered).",
        "evaluation": "Evaluate's reference artifact, which holds its metrics.json.",
        "registry_url": "The Model Registry's REST address, http(s)://HOST[:PORT].",
        "run_id": "this run's id",
        "run_name": "this run's name, which also names the version",
    },
)
def register(
    model: Input[Model],
    evaluation: Input[Artifact],
    registry_url: str,
    name: str,
    run_id: str,
    run_name: str,
):
    from invmon.cluster.registry import RegistryOptions
    from invmon.stages import register as stage

    settings = stage.RegisterSettings(
        model_uri=model.uri,
        model=model.path,
        evaluation=evaluation.path,
        registry=RegistryOptions(url=registry_url),
        name=name,
        run_id=run_id,
        run_name=run_name,
    )
    print(stage.run(settings).to_dict())
