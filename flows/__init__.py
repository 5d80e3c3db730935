"""Prefect flows and the ``segflow`` command line over :mod:`pipelines`."""
