#!/usr/bin/env bash
# Lint, type-check, then run pytest with any extra arguments (e.g. -m "slow or not slow").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
paths=(data_contracts seg_models pipelines flows tests benchmarks)
echo "== ruff"
.venv/bin/ruff check "${paths[@]}"
.venv/bin/ruff format --check "${paths[@]}"
echo "== mypy (strict, every package: pyproject.toml)"
.venv/bin/mypy
echo "== pytest"
export SEGFLOW_HOME="${SEGFLOW_TEST_HOME:-$(mktemp -d)/segflow-home}"
exec .venv/bin/python -m pytest "$@"
