"""Test and benchmark support: a fake Kubernetes API and a network simulator for S3."""
