"""KFP component: train the ResNet50 counting model on a GPU node."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from invmon.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.for_stage("train"), install_kfp_package=False)
def train(
    shards: Input[Dataset],
    search: Input[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
    epochs: int = 0,
    weights: str = "none",
    device: str = "auto",
    seed: int = 0,
):
    """Train ResNet50 + two-layer head with Adam, using the hyperparameters the search chose.

    Args:
        shards: The preprocessed dataset.
        search: The search's output; its best.json gives lr, batch size and epochs.
        model: The model folder: weights.pt (loaded with weights_only) and config.json.
        metrics: Final validation accuracy and loss.
        epochs: Train this many epochs instead of the searched number (0 = use the search's).
        weights: Backbone start: none, imagenet, a path or an s3:// URI of ResNet50 weights.
        device: auto, cpu or cuda.
        seed: Seed of the run.
    """
    import os

    from invmon import train as stage

    params = stage.read_params(os.path.join(search.path, "best.json"))
    if epochs > 0:
        params["epochs"] = epochs
    config = stage.TrainConfig(weights=weights, device=device, seed=seed, **params)
    result = stage.fit(shards.path, config, out=model.path)
    final = result.history[-1]
    for name in ("accuracy", "val_loss", "loss", "images_per_second"):
        metrics.log_metric(name, round(float(getattr(final, name)), 4))
    model.metadata.update({"framework": "pytorch", "architecture": "resnet50", **params})
