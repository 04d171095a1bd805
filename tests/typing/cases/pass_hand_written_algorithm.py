"""A hand-written algorithm matches the Algorithm protocol and trains with any text sampler."""

from collections.abc import Iterator, Sequence

import torch

from astra_core import Algorithm, Graph, Node, Sampler, Scorer, System, Trainer, TrainingConfiguration
from astra_core.harness import Harness
from astra_core.testing.toy import ToyScorer, ToySystem

scorer: Scorer[str, str] = ToyScorer()
system: System[str, str] = ToySystem()


class Imitation:
    """Raise the log-prob of every probe, weighted by its reward."""

    def __init__(self, system: System[str, str]) -> None:
        self.system = system

    def flatten(self, graphs: Sequence[Graph[str, str]]) -> list[Node[str, str]]:
        return [node for graph in graphs for node in graph.nodes()]

    def collate_fn(self, examples: Sequence[Node[str, str]]) -> list[Node[str, str]]:
        return list(examples)

    def loss(self, batch: list[Node[str, str]]) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs = self.system.tester_logprobs([n.context for n in batch], [n.probe for n in batch])
        loss = -(torch.tensor([n.reward for n in batch]) * logprobs).mean()
        return loss, {"loss": float(loss.detach())}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.system.parameters()


algorithm: Algorithm[str, str, Node[str, str], list[Node[str, str]]] = Imitation(system)


def train(sampler: Sampler[str, str]) -> Trainer[str, str, Node[str, str], list[Node[str, str]]]:
    harness = Harness(sampler, Imitation(sampler.system))
    loss, logs = harness.loss([])
    return Trainer(TrainingConfiguration(training_steps=1), sampler, algorithm)
