#!/usr/bin/env bash
# Install Debian's Postgres server when it is missing: the integration tests start a throwaway
# cluster on 127.0.0.1 (tests/integration/stack.py). Needs root (apt-get), as CI runs.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "Postgres is missing; install it as root: apt-get install postgresql" >&2
  exit 1
fi
echo "segflow: installing Postgres for the integration tests…" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
