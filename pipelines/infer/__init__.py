"""Inference: registered models applied to volumes, rasters and images of any size."""
