"""Ingestion: discover cases in folders, archives and CSVs; validate them into a manifest."""

from pipelines.ingest.run import ingest, read_manifest, write_manifest

__all__ = ["ingest", "read_manifest", "write_manifest"]
