"""Ratio benchmarks: each script measures ours against a baseline in one run."""
