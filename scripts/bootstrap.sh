#!/usr/bin/env bash
# Create (or refresh) .venv at the repository root. Idempotent: reinstalls only when
# pyproject.toml changed since the last successful install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${SEGFLOW_PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python_bin="$candidate"; break
    fi
  done
fi
[ -n "$python_bin" ] || { echo "segflow needs Python 3.11 (set SEGFLOW_PYTHON)" >&2; exit 2; }
stamp=".venv/.segflow-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/segflow ]; then
  exit 0
fi
echo "segflow: building .venv (first use takes a few minutes)…" >&2
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >&2
.venv/bin/python -m pip install --quiet -e ".[dev,dask,s3,stack]" >&2
echo "$want" > "$stamp"
