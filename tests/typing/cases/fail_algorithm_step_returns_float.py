# expect: arg-type
# expect-message: Argument 3 to "Trainer" has incompatible type "FloatLoss"
"""An algorithm whose step returns a bare float (no logs, no tensor) is not an Algorithm."""

from collections.abc import Iterator, Sequence

import torch

from astra_core import Graph, Node, Sampler, Trainer, TrainingConfiguration


class FloatLoss:
    def flatten(self, graph: Graph[str, str]) -> list[Node[str, str]]:
        return list(graph.nodes())

    def collate_fn(self, steps: Sequence[Node[str, str]]) -> list[Node[str, str]]:
        return list(steps)

    def step(self, batch: list[Node[str, str]]) -> float:
        return 0.0

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())


def train(sampler: Sampler[str, str]) -> None:
    Trainer(TrainingConfiguration(), sampler, FloatLoss())
