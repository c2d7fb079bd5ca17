"""Inference core: model registry, series selection, series -> volume, runners, post-processing."""
