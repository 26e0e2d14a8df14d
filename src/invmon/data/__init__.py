"""Data: the ABID layout, S3 access, synthetic bins, the image transforms, shards and their
transfer, and the pipeline workspace."""
