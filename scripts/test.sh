#!/usr/bin/env bash
# Installs everything, then runs the whole suite: ruff, mypy --strict on the core and every plugin, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy astra_core bench \
    plugins/astra-algorithms/astra_algorithms plugins/astra-ast/astra_ast \
    plugins/astra-scorers/astra_scorers plugins/astra-transformers/astra_transformers \
    examples/astra-example-plugin/astra_example_plugin
echo "== pytest"
.venv/bin/pytest -q "$@"
