"""Cluster objects: typed checks of Kubernetes manifests, pod placement, Katib Experiments,
Kubeflow Trainer TrainJobs, the KServe InferenceService, and the container images."""
