"""Training: the recipe and its config, the loop, checkpoints, distributed training, the model
and its one loader, device and precision choices, int8 calibration and the hyperparameter search."""
