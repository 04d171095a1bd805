# expect: arg-type
# expect-message: Argument 3 to "Trainer" has incompatible type "FloatLoss"
"""An algorithm whose loss returns a bare float (no logs, no tensor) is not an Algorithm."""

from collections.abc import Iterator, Sequence

import torch

from astra_core import Graph, Node, Sampler, Trainer, TrainingConfiguration


class FloatLoss:
    def flatten(self, graphs: Sequence[Graph[str, str]]) -> list[Node[str, str]]:
        return [node for graph in graphs for node in graph.nodes()]

    def collate_fn(self, examples: Sequence[Node[str, str]]) -> list[Node[str, str]]:
        return list(examples)

    def loss(self, batch: list[Node[str, str]]) -> float:
        return 0.0

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())


def train(sampler: Sampler[str, str]) -> None:
    Trainer(TrainingConfiguration(), sampler, FloatLoss())
