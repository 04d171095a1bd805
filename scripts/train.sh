#!/usr/bin/env bash
# Installs everything, then trains on the built-in offline default (or the run file given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/astra train "$@"
