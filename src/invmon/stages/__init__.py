"""The stages of the pipeline, one module each, named after the stage."""
