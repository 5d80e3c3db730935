#!/bin/bash
# Runs once, when the Postgres volume is first initialised: one database each for Prefect and
# MLflow, owned by the superuser named in POSTGRES_USER (credentials come from the environment).
set -euo pipefail
for database in "${PREFECT_DB:-prefect}" "${MLFLOW_DB:-mlflow}"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "CREATE DATABASE \"$database\" OWNER \"$POSTGRES_USER\";"
done
