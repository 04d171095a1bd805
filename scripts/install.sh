#!/usr/bin/env bash
# Creates .venv (if missing) and installs Astra Core, every first-party plugin and the dev tools into it.
# torch is pinned by constraints.txt to the CPU build; a looser pin would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -c constraints.txt --config-settings editable_mode=compat \
    -e '.[dev]' \
    -e plugins/astra-scorers \
    -e plugins/astra-algorithms \
    -e 'plugins/astra-transformers[lora]' \
    -e plugins/astra-ast \
    -e examples/astra-example-plugin
