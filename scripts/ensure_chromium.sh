#!/usr/bin/env bash
# Install Debian's Chromium when it is missing: the QA report test opens report.html in headless
# Chromium (no console errors, screenshot for the README). Needs root (apt-get), as CI runs.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "Chromium is missing; install it as root: apt-get install chromium" >&2
  exit 1
fi
echo "segflow: installing Chromium for the QA report test…" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
