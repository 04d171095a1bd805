#!/usr/bin/env bash
# Installs everything, then runs the whole suite: ruff, mypy --strict on the core and every plugin, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy astra_core plugins/*/astra_* examples/astra-example-plugin/astra_example_plugin bench
echo "== pytest"
.venv/bin/pytest "$@"
