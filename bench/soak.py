"""A soak test: train for hundreds of steps and watch resident memory for growth.

Not part of the test suite (it takes minutes). It builds a run through the registries exactly as
``astra train`` does (a `RunConfig`, `astra_core.build.resolve` and `build`, a `Trainer`), writes
periodic checkpoints into a scratch directory so their writes are soaked too, and prints JSON
lines: one per sample of the process's resident set size (``VmRSS`` from ``/proc/self/status``),
then a summary with the growth, the mean of the last quarter of the samples minus the mean of the
first quarter, in MB and percent.

    python -m bench.soak                                   # toy system, 300 steps
    python -m bench.soak --system transformers --steps 100  # the default run: embedded tiny model

``--system toy`` is the core's toy system, scorer and sampler with the ``dpo`` algorithm (needs
the astra-algorithms plugin); ``--system transformers`` is the built-in default run file
(astra-transformers, astra-scorers, astra-ast, astra-algorithms) with its evaluator off.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from astra_core.assembly import assemble
from astra_core.build import resolve
from astra_core.callbacks import BaseCallback
from astra_core.config import RunConfig, parse_run_config
from astra_core.plugins import registries
from astra_core.protocols import TrainerView

TOY_RUN: dict[str, Any] = {
    "system": "toy",
    "scorer": "toy",
    "sampler": "toy",
    "algorithm": "dpo",
    "evaluator": "none",
    # A small lr keeps the toy tester learning (and updating) for the whole soak: at 1e-2 it
    # saturates the toy reward within ~40 steps, after which DPO finds no pairs to train on.
    "training": {"num_episodes_per_experience": 8, "batch_size": 16, "lr": 1e-3},
}
DEFAULT_STEPS = {"toy": 300, "transformers": 100}


def rss_mb() -> float:
    """This process's resident set size in MB (1e6 bytes), from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmRSS in /proc/self/status (the soak needs Linux)")


def growth(samples: Sequence[float]) -> dict[str, float]:
    """Mean of the last quarter of `samples` minus the mean of the first quarter, in MB and %.

    >>> growth([100.0, 100.0, 110.0, 110.0])
    {'first_quarter_mb': 100.0, 'last_quarter_mb': 110.0, 'growth_mb': 10.0, 'growth_pct': 10.0}
    """
    if not samples:
        raise ValueError("no samples")
    quarter = max(1, len(samples) // 4)
    first = sum(samples[:quarter]) / quarter
    last = sum(samples[-quarter:]) / quarter
    return {
        "first_quarter_mb": round(first, 2),
        "last_quarter_mb": round(last, 2),
        "growth_mb": round(last - first, 2),
        "growth_pct": round(100.0 * (last - first) / first, 2),
    }


class MemorySampler(BaseCallback):
    """Samples resident memory every `every` steps and prints each sample as a JSON line."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.samples: list[float] = []
        self.started = time.perf_counter()

    def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None:
        if step % self.every:
            return
        rss = rss_mb()
        self.samples.append(rss)
        record = {
            "step": step,
            "rss_mb": round(rss, 2),
            "seconds": round(time.perf_counter() - self.started, 1),
            "reward": round(float(logs.get("reward/mean", float("nan"))), 4),
        }
        print(json.dumps(record), flush=True)


def run_config(system: str, steps: int, run_dir: Path, checkpoint_every: int, seed: int) -> RunConfig:
    """The soak's run: the toy run above, or the built-in default run file."""
    if system == "toy":
        data: dict[str, Any] = json.loads(json.dumps(TOY_RUN))  # a deep copy
    else:
        text = files("astra_core").joinpath("default_run.toml").read_text(encoding="utf-8")
        data = tomllib.loads(text)
        data["evaluator"] = "none"
    data["training"].update(
        {
            "training_steps": steps,
            "output_dir": str(run_dir),
            "checkpoint_every": checkpoint_every,
            "keep_checkpoints": 2,
            "seed": seed,
            "eval_every": None,
        }
    )
    return parse_run_config(data, f"soak ({system})")


def soak(system: str, steps: int, every: int, checkpoint_every: int, seed: int) -> dict[str, Any]:
    """Train `steps` steps of `system`, sampling memory every `every` steps; return the summary."""
    with tempfile.TemporaryDirectory(prefix="astra-soak-") as scratch:
        config = run_config(system, steps, Path(scratch) / "run", checkpoint_every, seed)
        memory = MemorySampler(every)
        trainer = assemble(resolve(config, registries()), callbacks=[memory])
        start_rss = rss_mb()
        started = time.perf_counter()
        history = trainer.train()
        seconds = time.perf_counter() - started
    rewards = [h["reward/mean"] for h in history if "reward/mean" in h]
    updates = sum(int(h.get("updates", 0)) for h in history)
    k = max(1, len(rewards) // 5)
    return {
        "summary": True,
        "system": system,
        "steps": trainer.global_step,
        "optimizer_updates": updates,
        "samples": len(memory.samples),
        "rss_before_training_mb": round(start_rss, 2),
        "peak_sampled_mb": round(max(memory.samples), 2),
        **growth(memory.samples),
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "reward_first_fifth": round(sum(rewards[:k]) / k, 4) if rewards else None,
        "reward_last_fifth": round(sum(rewards[-k:]) / k, 4) if rewards else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the soak, print the summary line; exit 0."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description="Train for hundreds of steps and report resident memory growth."
    )
    parser.add_argument("--system", choices=sorted(DEFAULT_STEPS), default="toy", help="what to train (default: toy)")
    parser.add_argument("--steps", type=int, help="training steps (default: 300 toy, 100 transformers)")
    parser.add_argument("--every", type=int, help="sample memory every N steps (default: steps / 30)")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="checkpoint every N steps (default: 25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, steady on a busy machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = args.steps or DEFAULT_STEPS[args.system]
    every = args.every or max(1, steps // 30)
    if steps < 4 * every:
        parser.error(f"--steps {steps} gives fewer than 4 samples at --every {every}; quarters need 4")
    summary = soak(args.system, steps, every, args.checkpoint_every, args.seed)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
