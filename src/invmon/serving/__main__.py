"""The serving image's entry point: ``python -m invmon.serving --model_dir DIR`` (KServe's flags
too; see :func:`invmon.serving.server.main`)."""

from invmon.serving.server import main

main()
