"""Services around the pipeline steps: what keeps state, holds locks or talks to servers.

- :mod:`~pipelines.services.ledger` (with :mod:`~pipelines.services.ledger_schema`): the SQLite
  resume ledger of an output folder; :mod:`~pipelines.services.output_lock`: its ``flock``.
- :mod:`~pipelines.services.batch`: the resumable batch run over the inference steps (its
  items and per-case processing in :mod:`~pipelines.services.batch_items`, the progress it
  reports through :mod:`~pipelines.services.batch_progress`);
  :mod:`~pipelines.services.case_workers` runs its cases in worker processes
  (:mod:`~pipelines.services.process_guard` keeps children from outliving segflow).
- :mod:`~pipelines.services.tracking`, :mod:`~pipelines.services.batch_tracking`: MLflow runs.
- :mod:`~pipelines.services.model_registry`, :mod:`~pipelines.services.model_loading`,
  :mod:`~pipelines.services.mlflow_model`: models in MLflow, logged, registered and loaded.
- :mod:`~pipelines.services.training`: a training run, from manifest to registered model.
- :mod:`~pipelines.services.object_store`: ``s3://`` inputs and outputs.

Services may use the steps (``pipelines.io``, ``ingest``, ``plan``, ``preprocess``, ``train``,
``infer``, ``postprocess``, ``write``); the steps never import a service
(``tests/test_architecture.py`` checks both).
"""
