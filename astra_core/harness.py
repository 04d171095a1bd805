"""The Harness: collects an experience from the sampler and feeds it to the algorithm.

`experience()` rolls out `num_episodes_per_experience` episodes (in one batched call when the
sampler offers `rollouts`), flattens each rollout tree with the algorithm, and returns a
DataLoader over the steps that honours `batch_size` and shuffles with a generator seeded from the
run's seed and the step number, so a resumed run sees the same order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Generic, cast

import torch
from torch.utils.data import DataLoader

from astra_core import contracts
from astra_core.errors import ConfigError
from astra_core.graph import Graph
from astra_core.protocols import Algorithm, BatchedSampler, Sampler
from astra_core.types import ActionT, BatchT, StateT, StepT

log = logging.getLogger(__name__)


class _Steps(torch.utils.data.Dataset[StepT]):
    def __init__(self, steps: Sequence[StepT]) -> None:
        self.steps = steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> StepT:
        return self.steps[index]


def rollout_metrics(graphs: Sequence[Graph[Any, Any]]) -> dict[str, float]:
    """Mean, min and max reward over every turn, and the mean of each named score part."""
    rewards: list[float] = []
    parts: dict[str, list[float]] = {}
    for graph in graphs:
        for node in graph.nodes():
            rewards.append(node.reward)
            for key, value in node.scores.items():
                parts.setdefault(key, []).append(value)
    if not rewards:
        return {"episodes": float(len(graphs)), "turns": 0.0}
    finite = [r for r in rewards if math.isfinite(r)]
    metrics = {
        "episodes": float(len(graphs)),
        "turns": float(len(rewards)),
        "reward/mean": sum(finite) / len(finite) if finite else math.nan,
        "reward/min": min(finite) if finite else math.nan,
        "reward/max": max(finite) if finite else math.nan,
        "reward/nonfinite": float(len(rewards) - len(finite)),
    }
    for key, values in sorted(parts.items()):
        metrics[f"score/{key}"] = sum(values) / len(values)
    return metrics


class Harness(Generic[StateT, ActionT, StepT, BatchT]):
    """Connects a sampler to an algorithm.

    >>> # harness = Harness(sampler, algorithm, num_episodes_per_experience=8, batch_size=16)
    >>> # for batch in harness.experience(): loss, logs = harness.step(batch)
    """

    def __init__(
        self,
        sampler: Sampler[StateT, ActionT],
        algorithm: Algorithm[StateT, ActionT, StepT, BatchT],
        num_episodes_per_experience: int = 8,
        batch_size: int = 16,
        *,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_episodes_per_experience < 1 or batch_size < 1:
            raise ConfigError(
                f"num_episodes_per_experience ({num_episodes_per_experience}) and batch_size ({batch_size}) "
                f"must be at least 1"
            )
        # Held to their protocols (astra_core.contracts): a breach names the plugin on first use.
        self.sampler = contracts.guard("sampler", sampler)
        self.algorithm = contracts.guard("algorithm", algorithm)
        self.num_episodes_per_experience = num_episodes_per_experience
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.last_metrics: dict[str, float] = {}
        self.last_graphs: list[Graph[StateT, ActionT]] = []

    def rollouts(self) -> list[Graph[StateT, ActionT]]:
        """One experience's episodes, batched when the sampler supports it."""
        count = self.num_episodes_per_experience
        if isinstance(self.sampler, BatchedSampler):
            batched = cast(BatchedSampler[StateT, ActionT], self.sampler)
            return batched.rollouts(count)
        return [self.sampler.rollout() for _ in range(count)]

    def experience(self, step: int = 0) -> DataLoader[StepT]:
        """Roll out, flatten and batch one experience. An empty one yields no batches."""
        graphs = self.rollouts()
        self.last_graphs = graphs
        self.last_metrics = rollout_metrics(graphs)
        steps: list[StepT] = []
        for graph in graphs:
            steps.extend(self.algorithm.flatten(graph))
        self.last_metrics["train_examples"] = float(len(steps))
        if not steps:
            log.warning("experience at step %d produced no training examples; skipping its update", step)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return DataLoader(
            _Steps(steps),
            batch_size=self.batch_size,
            shuffle=self.shuffle and len(steps) > 1,
            generator=generator,
            collate_fn=self.algorithm.collate_fn,
        )

    def step(self, batch: BatchT) -> tuple[torch.Tensor, dict[str, float]]:
        """The algorithm's loss and logs for one batch."""
        return self.algorithm.step(batch)
