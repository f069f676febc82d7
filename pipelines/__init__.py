"""Kubeflow pipelines: wiring of components only. Compiled YAML lives beside each source."""
