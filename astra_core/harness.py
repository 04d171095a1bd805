"""The Harness: collects an experience from the sampler and feeds it to the algorithm.

`experience()` rolls out `num_episodes_per_experience` episodes in one `sampler.rollouts` call,
flattens them with one `algorithm.flatten` call, and returns a DataLoader over the training
examples that honours `batch_size` and shuffles with a generator seeded from the run's seed and
the training step, so a resumed run sees the same order. Shuffled by episode (the default), the
episodes are permuted before `flatten` and the batches cut in that order, so a batch holds whole
trees (a system that packs shared prefixes then runs each tree's opener and earlier turns once
per batch; on the reddit workload a batch's gradient is 2% noisier than with examples shuffled
one by one, docs/performance.md); shuffled by example (``shuffle_by="example"``), a batch draws
from every episode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, Generic, Literal

import torch
from torch.utils.data import DataLoader

from astra_core import contracts
from astra_core.errors import ConfigError
from astra_core.graph import Graph
from astra_core.protocols import Algorithm, Sampler
from astra_core.types import ActionT, BatchT, ExampleT, StateT

log = logging.getLogger(__name__)


class _Examples(torch.utils.data.Dataset[ExampleT]):
    def __init__(self, examples: Sequence[ExampleT]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> ExampleT:
        return self.examples[index]


class _BatchesInOrder(torch.utils.data.Sampler[list[int]]):
    """Consecutive batches of `size` indices; every pass after the first visits them in a new
    random order (an algorithm with several epochs sees the same batches, not the same sequence)."""

    def __init__(self, count: int, size: int, generator: torch.Generator) -> None:
        self.batches = [list(range(start, min(start + size, count))) for start in range(0, count, size)]
        self.generator = generator
        self.passes = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        count = len(self.batches)
        order = list(range(count)) if self.passes == 0 else torch.randperm(count, generator=self.generator).tolist()
        self.passes += 1
        return iter([self.batches[i] for i in order])


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


class Harness(Generic[StateT, ActionT, ExampleT, BatchT]):
    """Connects a sampler to an algorithm: one experience in, batches of examples out::

    harness = Harness(sampler, algorithm, num_episodes_per_experience=8, batch_size=16)
    for batch in harness.experience(step=0):
        loss, logs = harness.loss(batch)
    """

    def __init__(
        self,
        sampler: Sampler[StateT, ActionT],
        algorithm: Algorithm[StateT, ActionT, ExampleT, BatchT],
        num_episodes_per_experience: int = 8,
        batch_size: int = 16,
        *,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_by: Literal["example", "episode"] = "episode",
    ) -> None:
        if num_episodes_per_experience < 1 or batch_size < 1:
            raise ConfigError(
                f"num_episodes_per_experience ({num_episodes_per_experience}) and batch_size ({batch_size}) "
                f"must be at least 1"
            )
        if shuffle_by not in ("example", "episode"):
            raise ConfigError(f"shuffle_by must be 'example' or 'episode', got {shuffle_by!r}")
        # Held to their protocols (astra_core.contracts): a breach names the plugin on first use.
        self.sampler = contracts.guard("sampler", sampler)
        self.algorithm = contracts.guard("algorithm", algorithm)
        self.num_episodes_per_experience = num_episodes_per_experience
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_by = shuffle_by
        self.last_metrics: dict[str, float] = {}
        self.last_graphs: list[Graph[StateT, ActionT]] = []

    def rollouts(self) -> list[Graph[StateT, ActionT]]:
        """One experience's episodes, from one `sampler.rollouts` call."""
        count = self.num_episodes_per_experience
        return self.sampler.rollouts(count)

    def experience(self, step: int = 0) -> DataLoader[ExampleT]:
        """Roll out, flatten and batch the experience of training step `step`.

        Shuffled by episode, the episodes are permuted before the one `flatten` call (which keeps
        an episode's examples together, see `Algorithm.flatten`) and cut into batches in that
        order. An experience without training examples yields no batches.
        """
        graphs = self.rollouts()
        self.last_graphs = graphs
        self.last_metrics = rollout_metrics(graphs)
        # Modulo 2**64: torch takes no larger seed (the same value as before for every seed < 2**44).
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % 2**64)
        by_episode = self.shuffle and self.shuffle_by == "episode"
        if by_episode:  # flatten keeps each episode's examples together, in the episodes' order
            graphs = [graphs[i] for i in torch.randperm(len(graphs), generator=generator).tolist()]
        examples = list(self.algorithm.flatten(graphs))
        self.last_metrics["train_examples"] = float(len(examples))
        if not examples:
            log.warning("experience at step %d produced no training examples; skipping its update", step)
        if by_episode:
            return DataLoader(
                _Examples(examples),
                batch_sampler=_BatchesInOrder(len(examples), self.batch_size, generator),
                collate_fn=self.algorithm.collate_fn,
            )
        return DataLoader(
            _Examples(examples),
            batch_size=self.batch_size,
            shuffle=self.shuffle and len(examples) > 1,
            generator=generator,
            collate_fn=self.algorithm.collate_fn,
        )

    def loss(self, batch: BatchT) -> tuple[torch.Tensor, dict[str, float]]:
        """The algorithm's loss and logs for one batch of examples."""
        return self.algorithm.loss(batch)
