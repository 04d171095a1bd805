# expect: misc
# expect-message: Cannot infer value of type parameter "StateT" of "Trainer"
"""A Trainer whose sampler produces text states but whose algorithm wants integer states."""

from collections.abc import Iterator, Sequence

import torch

from astra_core import Graph, Sampler, Trainer, TrainingConfiguration


class IntAlgorithm:
    def flatten(self, graphs: Sequence[Graph[int, int]]) -> list[int]:
        return [node.probe for graph in graphs for node in graph.nodes()]

    def collate_fn(self, examples: Sequence[int]) -> list[int]:
        return list(examples)

    def loss(self, batch: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.zeros(()), {}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())


def train(sampler: Sampler[str, str]) -> None:
    Trainer(TrainingConfiguration(), sampler, IntAlgorithm())
