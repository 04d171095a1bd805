"""Shared fixtures for the core's tests: the toy system wired to a small DPO-like algorithm.

The real algorithms live in the astra-algorithms plugin; the core's tests must not depend on
it, so `ToyDPO` here is the smallest preference algorithm that trains the toy tester. The
subprocess tests (signals, kill -9) import this file by path to build the same components.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from astra_core.config import TrainingConfiguration
from astra_core.graph import Graph
from astra_core.registry import Registries
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem
from astra_core.trainer import Trainer
from astra_core.turns import TextScorer

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Pair:
    """One preference example: two sibling probes after one context, the better one first."""

    context: str
    chosen: str
    rejected: str


class ToyDPO:
    """DPO over sibling groups: prefer the highest-reward probe of a group to the lowest.

    `keep_ties` also pairs groups whose rewards are equal, so every sibling group yields exactly
    one pair (tests use it to know the number of training examples in advance). `collate_fn`
    records every batch it builds, which is how tests observe the DataLoader.
    """

    def __init__(self, system: ToySystem, beta: float = 0.5, keep_ties: bool = False) -> None:
        self.system = system
        self.beta = beta
        self.keep_ties = keep_ties
        self.batches: list[list[Pair]] = []

    def flatten(self, graphs: Sequence[Graph[str, str]]) -> list[Pair]:
        pairs = []
        for graph in graphs:
            for group in graph.sibling_groups():
                ordered = sorted(group, key=lambda node: node.reward, reverse=True)
                best, worst = ordered[0], ordered[-1]
                if best.reward != worst.reward or self.keep_ties:
                    pairs.append(Pair(best.context, best.probe, worst.probe))
        return pairs

    def collate_fn(self, examples: Sequence[Pair]) -> list[Pair]:
        batch = list(examples)
        self.batches.append(batch)
        return batch

    def loss(self, batch: list[Pair]) -> tuple[torch.Tensor, dict[str, float]]:
        contexts = [p.context for p in batch]
        chosen, rejected = [p.chosen for p in batch], [p.rejected for p in batch]
        system = self.system
        chosen_ratio = system.tester_logprobs(contexts, chosen) - system.baseline_logprobs(contexts, chosen)
        rejected_ratio = system.tester_logprobs(contexts, rejected) - system.baseline_logprobs(contexts, rejected)
        margin = self.beta * (chosen_ratio - rejected_ratio)
        loss = -F.logsigmoid(margin).mean()
        return loss, {"margin": float(margin.detach().mean())}

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.system.parameters()

    @property
    def batch_sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]


class NaNLossAfter(ToyDPO):
    """ToyDPO whose loss turns NaN from its `after`-th `loss` call on (counting from 0)."""

    def __init__(self, system: ToySystem, after: int = 0, **options: Any) -> None:
        super().__init__(system, **options)
        self.after = after
        self.calls = 0

    def loss(self, batch: list[Pair]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super().loss(batch)
        self.calls += 1
        return (loss * math.nan if self.calls > self.after else loss), logs


class NaNScorer(TextScorer):
    """A broken scorer: NaN for every text (a contract breach once the Trainer holds it)."""

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [math.nan] * len(texts)


class LogRewardSampler(ToySampler):
    """Rewards are log(score): a valid score of 0 gives -inf, numerical trouble the Trainer skips
    and counts (not a contract breach: see the NaN policy in astra_core.contracts)."""

    def rollouts(self, count: int) -> list[Graph[str, str]]:
        graphs = super().rollouts(count)
        for graph in graphs:
            for node in graph.nodes():
                node.reward = math.log(node.reward) if node.reward > 0 else -math.inf
        return graphs


@dataclass
class Parts:
    """One set of live toy components."""

    system: ToySystem
    sampler: ToySampler
    algorithm: ToyDPO


def make_parts(
    *,
    system_seed: int = 0,
    tree_width: int = 2,
    tree_depth: int = 2,
    scorer: Any = None,
    algorithm: Callable[[ToySystem], ToyDPO] | None = None,
    sampler: Callable[[ToySystem, Any, int, int], ToySampler] = ToySampler,
) -> Parts:
    """Fresh toy components (a fresh tester, identical for equal `system_seed`)."""
    system = ToySystem(seed=system_seed)
    built = sampler(system, scorer if scorer is not None else ToyScorer(), tree_width, tree_depth)
    return Parts(system, built, algorithm(system) if algorithm is not None else ToyDPO(system))


def core_registries() -> Registries:
    """Registries holding only the core's built-in plugin, whatever else is installed."""
    from astra_core.plugins import discover

    saved = os.environ.get("ASTRA_PLUGINS")
    os.environ["ASTRA_PLUGINS"] = "core"
    try:
        return discover().registries
    finally:
        if saved is None:
            del os.environ["ASTRA_PLUGINS"]
        else:
            os.environ["ASTRA_PLUGINS"] = saved


def small_config(**overrides: Any) -> TrainingConfiguration:
    """A configuration that trains the toy system in milliseconds per step."""
    values: dict[str, Any] = {"training_steps": 4, "num_episodes_per_experience": 4, "batch_size": 4, "lr": 0.05}
    values.update(overrides)
    return TrainingConfiguration(**values)


def script_config(run_dir: str | Path, steps: int, checkpoint_every: int | None = 1) -> TrainingConfiguration:
    """The configuration of `TRAIN_SCRIPT`, for in-process reference runs."""
    return small_config(
        training_steps=steps, output_dir=str(run_dir), checkpoint_every=checkpoint_every, keep_checkpoints=20
    )


# A training process for the signal and kill -9 tests. Arguments: this file's path, the run
# directory, the number of steps. It resumes from the run directory when it holds a checkpoint,
# prints "step N" after each step, "interrupted PATH" and exits 3 on TrainingInterrupted.
# TEST_STEP_DELAY sleeps after each step; TEST_CHECKPOINT_WRITE_DELAY sleeps before each JSON
# file of a checkpoint is written, printing "writing DIR FILE" first, so a test can kill the
# process while a checkpoint is half written; TEST_CHECKPOINT_EVERY=0 disables periodic saves.
TRAIN_SCRIPT = """
import importlib.util, os, sys, time
import torch
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("astra_test_conftest", sys.argv[1])
support = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = support
spec.loader.exec_module(support)
from astra_core import checkpoint
from astra_core.callbacks import BaseCallback
from astra_core.trainer import TrainingInterrupted

run_dir, steps = sys.argv[2], int(sys.argv[3])
step_delay = float(os.environ.get("TEST_STEP_DELAY", "0"))
write_delay = float(os.environ.get("TEST_CHECKPOINT_WRITE_DELAY", "0"))
every = int(os.environ.get("TEST_CHECKPOINT_EVERY", "1")) or None
if write_delay:
    write_json = checkpoint._write_json
    def slow_write_json(path, data):
        print("writing", path.parent.name, path.name, flush=True)
        time.sleep(write_delay)
        write_json(path, data)
    checkpoint._write_json = slow_write_json

class Report(BaseCallback):
    def on_step_end(self, trainer, step, logs):
        print("step", step, flush=True)
        time.sleep(step_delay)

kit = support.Kit(support.core_registries())
trainer = kit.trainer(support.script_config(run_dir, steps, every), kit.parts(), callbacks=[Report()])
if checkpoint.latest_checkpoint(run_dir) is not None:
    trainer.resume()
    print("resumed", trainer.global_step, flush=True)
try:
    trainer.train()
except TrainingInterrupted as interrupted:
    print("interrupted", interrupted.checkpoint, flush=True)
    sys.exit(3)
print("done", flush=True)
"""


def tester_weights(parts: Parts) -> list[torch.Tensor]:
    """A detached copy of the tester's parameters."""
    return [p.detach().clone() for p in parts.system.parameters()]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The toy ops are microseconds; with two threads on a busy 2-core machine, OpenMP's
    # spin-waiting makes them a hundred times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def registries() -> Registries:
    return core_registries()


class Kit:
    """What tests get from the `kit` fixture: the helpers above, bound to the core registries."""

    ToyDPO = ToyDPO
    NaNLossAfter = NaNLossAfter
    NaNScorer = NaNScorer
    LogRewardSampler = LogRewardSampler
    conftest_path = Path(__file__).resolve()
    repo = REPO
    TRAIN_SCRIPT = TRAIN_SCRIPT

    def __init__(self, registries: Registries) -> None:
        self.registries = registries

    def parts(self, **options: Any) -> Parts:
        return make_parts(**options)

    def config(self, **overrides: Any) -> TrainingConfiguration:
        return small_config(**overrides)

    def weights(self, parts: Parts) -> list[torch.Tensor]:
        return tester_weights(parts)

    def script_config(self, run_dir: str | Path, steps: int, checkpoint_every: int | None = 1) -> TrainingConfiguration:
        return script_config(run_dir, steps, checkpoint_every)

    def trainer(
        self, config: TrainingConfiguration, parts: Parts, **kwargs: Any
    ) -> Trainer[str, str, Pair, list[Pair]]:
        """A Trainer over `parts`, using only the core's built-in components."""
        return Trainer(config, parts.sampler, parts.algorithm, registries=self.registries, **kwargs)


@pytest.fixture
def kit(registries: Registries) -> Kit:
    return Kit(registries)


TwoRanks = Callable[[Path, pytest.TempPathFactory, str, float], Path]
"""`(script, tmp_path_factory, name, timeout) -> output directory` of `launch_two_ranks`."""


@pytest.fixture(scope="session")
def launch_two_ranks() -> TwoRanks:
    """Run a test module as a script in two processes joined by gloo (the script writes its
    results under the output directory it is given); a second try on a fresh port covers the
    race between probing a free port and binding it."""

    def launch(script: Path, tmp_path_factory: pytest.TempPathFactory, name: str, timeout: float) -> Path:
        try:
            return _run_two_ranks(script, tmp_path_factory.mktemp(name), timeout)
        except AssertionError:
            return _run_two_ranks(script, tmp_path_factory.mktemp(f"{name}-retry"), timeout)

    return launch


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_two_ranks(script: Path, out: Path, timeout: float) -> Path:
    port = _free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            ASTRA_DIST_BACKEND="gloo",
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    outputs = []
    for process in processes:
        try:
            raw, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        outputs.append(raw.decode(errors="replace"))
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output[-4000:]}"
    return out
