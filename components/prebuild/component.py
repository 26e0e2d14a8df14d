"""KFP component: build the serving engine ahead of time, on the kind of node that serves."""

from kfp.dsl import Input, Model, Output

from invmon.components.interface import stage_component
from invmon.stages.prebuild import PrebuildSettings


# INVMON_ENGINE_KEY comes from a Kubernetes Secret (the pipeline's engine_key_secret), never as a
# parameter: it is in no YAML and no log.
@stage_component(
    "prebuild",
    "Build the serving engine ahead of time (an AOTInductor package signed with the engine key) "
    "into a copy of the model folder, for predictors at full speed from their first request.",
    PrebuildSettings,
    notes={
        "model": "The trained model folder.",
        "prebuilt": "The model folder with its engine/, which deploy serves.",
    },
)
def prebuild(model: Input[Model], prebuilt: Output[Model], largest_batch: int):
    from invmon.stages import prebuild as stage

    stage.run(
        stage.PrebuildSettings(model=model.path, out=prebuilt.path, largest_batch=largest_batch)
    )
