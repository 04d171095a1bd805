"""What the contract wrappers (`astra_core.contracts`) cost on the default training step.

Two Trainers over identically seeded default components (the step benchmark's configuration) in
one process: "guarded", as the Trainer builds it, and "bare", built with `contracts.guard`
replaced by the identity. Each keeps its own RNG streams, so both train on the same rollouts;
their steps alternate (bare, guarded, bare, ...) after a warm-up step each, so both see the same
machine load. Two numbers come out, as one JSON line:

- ``ratio``: median guarded step time over median bare step time (machine noise included);
- ``overhead_fraction``: the wrappers' own time, summed exactly inside the guarded steps (each
  checked call's time minus the time spent in the component's method), over the guarded step
  time. This one does not depend on how busy the machine is.

    python -m bench.contract_overhead --steps 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from astra_core import contracts
from bench.step_benchmark import Settings, build_trainer


class _Accounting:
    """Sums the time the wrappers add, call by call (nested checked calls are counted once each)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.enabled = False
        self._inner: list[float] = []
        self._original = contracts._checked

    def install(self) -> None:
        original = self._original

        def timed_checked(guarded: Any, contract: Any, method: Callable[..., Any]) -> Callable[..., Any]:
            def timed_method(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return method(*args, **kwargs)
                finally:
                    self._inner[-1] += time.perf_counter() - started

            checked = original(guarded, contract, timed_method)

            def outer(*args: Any, **kwargs: Any) -> Any:
                self._inner.append(0.0)
                started = time.perf_counter()
                try:
                    return checked(*args, **kwargs)
                finally:
                    spent = time.perf_counter() - started
                    inside = self._inner.pop()
                    if self.enabled:
                        self.seconds += spent - inside
                        self.calls += 1

            return outer

        contracts._checked = timed_checked

    def uninstall(self) -> None:
        contracts._checked = self._original


@contextmanager
def _unguarded() -> Iterator[None]:
    original = contracts.guard
    contracts.guard = lambda kind, component, origin=None: component
    try:
        yield
    finally:
        contracts.guard = original


class _Streams:
    """One trainer's own RNG streams (Python, NumPy, torch), swapped in around its steps."""

    def __init__(self) -> None:
        self.state = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    @contextmanager
    def active(self) -> Iterator[None]:
        random.setstate(self.state[0])
        np.random.set_state(self.state[1])
        torch.set_rng_state(self.state[2])
        try:
            yield
        finally:
            self.state = (random.getstate(), np.random.get_state(), torch.get_rng_state())


def measure(steps: int, settings: Settings) -> dict[str, Any]:
    """Alternate bare and guarded steps; the JSON record described in the module doc."""
    accounting = _Accounting()
    accounting.install()
    try:
        with _unguarded():
            bare = build_trainer(settings, "batched")
        bare_streams = _Streams()
        guarded = build_trainer(settings, "batched")
        guarded_streams = _Streams()
        assert type(guarded.harness.sampler) is contracts.Guarded
        assert type(bare.harness.sampler) is not contracts.Guarded
        times: dict[str, list[float]] = {"bare": [], "guarded": []}
        overhead: list[float] = []
        for index in range(1 + steps):
            for name, trainer, streams in (("bare", bare, bare_streams), ("guarded", guarded, guarded_streams)):
                accounting.seconds, accounting.calls = 0.0, 0
                accounting.enabled = name == "guarded"
                with streams.active():
                    started = time.perf_counter()
                    trainer.train_step()
                    seconds = time.perf_counter() - started
                accounting.enabled = False
                if index == 0:
                    continue  # warm-up
                times[name].append(seconds)
                if name == "guarded":
                    overhead.append(accounting.seconds / seconds)
        calls = accounting.calls
    finally:
        accounting.uninstall()
    bare_median, guarded_median = statistics.median(times["bare"]), statistics.median(times["guarded"])
    return {
        "steps": steps,
        "bare_seconds": times["bare"],
        "guarded_seconds": times["guarded"],
        "ratio": guarded_median / bare_median,
        "overhead_fraction": statistics.median(overhead),
        "checked_calls_per_step": calls,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per trainer (after one warm-up)")
    parser.add_argument("--episodes", type=int, default=None, help="num_episodes_per_experience (default: the run's)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.steps, Settings(episodes=args.episodes, steps=args.steps))), flush=True)


if __name__ == "__main__":
    main()
