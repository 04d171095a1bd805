"""Measure the memory a LoRA tester saves against full fine-tuning, on the embedded tiny model
and on larger random GPT-2 configurations (saved to a temporary directory, nothing downloaded).

For each model and mode (``full``: the whole tester trains and the baseline is a frozen copy;
``lora``: a rank-8 adapter on ``c_attn`` and the baseline is the base model with the adapter
off), a fresh process builds the system, then takes one AdamW step. It reports the bytes of
distinct parameter tensors the system holds, the trainable bytes (what gradients and AdamW's
two moments scale with), and the process's resident memory growth after building and after
the step::

    .venv/bin/python plugins/astra-transformers/scripts/lora_memory.py
    .venv/bin/python plugins/astra-transformers/scripts/lora_memory.py --models tiny 6x512
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SHAPES = {"6x512": (6, 512, 8, 1126), "12x768": (12, 768, 12, 50257)}
"""name -> (layers, width, heads, vocabulary); 12x768 with GPT-2's vocabulary is GPT-2 small's shape."""


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(source: str, mode: str) -> dict[str, Any]:
    """Build one system over `source` in `mode` and take one training step; return the numbers."""
    import peft  # noqa: F401  (imported before the first reading, so its import is not counted)
    import torch

    from astra_transformers.lora import parameter_bytes
    from astra_transformers.system import TransformersSystem

    torch.manual_seed(0)
    before = _rss_bytes()
    lora = {"r": 8} if mode == "lora" else None
    system = TransformersSystem(model=source, probe_tokens=8, response_tokens=8, lora=lora)
    built = _rss_bytes()
    optimizer = torch.optim.AdamW(list(system.parameters()), lr=1e-4)
    loss = -system.tester_logprobs(["Hi there, how are you?"] * 4, [" I'm fine, thanks."] * 4).mean()
    torch.autograd.backward(loss)
    optimizer.step()
    stepped = _rss_bytes()
    return {
        "held": parameter_bytes(system.tester, system.baseline, system.target),
        "trainable": parameter_bytes(system.tester, trainable_only=True),
        "rss_build": built - before,
        "rss_step": stepped - before,
    }


def _random_model(directory: Path, layers: int, width: int, heads: int, vocab: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    from astra_transformers import TINY_MODEL_DIR

    hf_logging: Any = logging  # its progress-bar switches are untyped
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    eos = json.loads((TINY_MODEL_DIR / "config.json").read_text())["eos_token_id"]
    config = GPT2Config(
        n_layer=layers,
        n_embd=width,
        n_head=heads,
        vocab_size=vocab,
        n_positions=256,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the tiny tokenizer: its ids fit any vocab here
        shutil.copy(TINY_MODEL_DIR / name, directory / name)


def _mib(value: int) -> str:
    return f"{value / 2**20:,.1f}"


def main() -> None:
    """Measure each model in both modes, each in its own process, and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "6x512", "12x768"], choices=["tiny", *SHAPES])
    parser.add_argument("--measure", nargs=2, metavar=("SOURCE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    print("| model | mode | parameters held (MiB) | trainable (MiB) | RSS after build (MiB) | RSS after a step (MiB) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            source = "tiny"
            if name in SHAPES:
                source = str(Path(scratch) / name)
                _random_model(Path(source), *SHAPES[name])
            for mode in ("full", "lora"):
                command = [sys.executable, __file__, "--measure", source, mode]
                result = json.loads(subprocess.run(command, env=env, check=True, capture_output=True).stdout)
                print(
                    f"| {name} | {mode} | {_mib(result['held'])} | {_mib(result['trainable'])} | "
                    f"{_mib(result['rss_build'])} | {_mib(result['rss_step'])} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
