"""``example-reinforce``: REINFORCE over every turn of the rollout tree.

Each turn's return is its reward plus `discount` times the mean return of the turns that
continued from it (a tree of width w samples w continuations of the same state, so their mean
estimates the expected continuation). With ``baseline="mean"`` the episode's mean return is
subtracted. The loss is the policy gradient surrogate::

    loss = -mean_i( A_i * log pi(probe_i | context_i) )       # A_i: advantage of turn i

Only the tester's log-probs carry gradient; advantages are plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Literal

import torch

from astra_core import Graph, Node, System, factories
from astra_core.types import ActionT, StateT


@dataclass(frozen=True)
class Example(Generic[StateT, ActionT]):
    """One training example: the tester wrote `probe` after `context`, and it earned `advantage`."""

    context: StateT
    probe: ActionT
    advantage: float


@dataclass(frozen=True)
class ExampleBatch(Generic[StateT, ActionT]):
    """Examples collated into parallel lists and an advantage tensor of shape (batch,)."""

    contexts: list[StateT]
    probes: list[ActionT]
    advantages: torch.Tensor


class Reinforce(Generic[StateT, ActionT]):
    """REINFORCE for any `System`: ``Reinforce(system, discount=1.0, baseline="mean")``."""

    def __init__(
        self, system: System[StateT, ActionT], discount: float = 1.0, baseline: Literal["mean", "none"] = "mean"
    ) -> None:
        self.system = system
        self.discount = discount
        self.baseline = baseline

    def flatten(self, graphs: Sequence[Graph[StateT, ActionT]]) -> list[Example[StateT, ActionT]]:
        """Every turn of every episode, with its advantage: episode by episode, breadth first."""
        return [example for graph in graphs for example in self._examples(graph)]

    def _examples(self, graph: Graph[StateT, ActionT]) -> list[Example[StateT, ActionT]]:
        levels = list(graph.levels())
        returns: dict[int, float] = {}
        for level in reversed(levels):  # children before parents
            for node in level:
                returns[id(node)] = node.reward + self.discount * _mean(returns[id(c)] for c in node.children)
        nodes: list[Node[StateT, ActionT]] = [node for level in levels for node in level]
        offset = _mean(returns[id(n)] for n in nodes) if self.baseline == "mean" else 0.0
        return [Example(n.context, n.probe, returns[id(n)] - offset) for n in nodes]

    def collate_fn(self, examples: Sequence[Example[StateT, ActionT]]) -> ExampleBatch[StateT, ActionT]:
        """Parallel lists of contexts and probes, and a float tensor of advantages."""
        return ExampleBatch(
            [e.context for e in examples],
            [e.probe for e in examples],
            torch.tensor([e.advantage for e in examples], dtype=torch.float32),
        )

    def loss(self, batch: ExampleBatch[StateT, ActionT]) -> tuple[torch.Tensor, dict[str, float]]:
        """The surrogate loss of a batch, and its mean advantage and log-prob."""
        logprobs = self.system.tester_logprobs(batch.contexts, batch.probes)  # (batch,)
        loss = -(batch.advantages * logprobs).mean()
        logs = {
            "loss": float(loss.detach()),
            "advantage/mean": float(batch.advantages.mean()),
            "logprob/mean": float(logprobs.detach().mean()),
        }
        return loss, logs

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The tester's parameters (REINFORCE adds none of its own)."""
        return self.system.parameters()


def _mean(values: Iterator[float] | Sequence[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


factory = factories.algorithm(Reinforce)
"""What the plugin registers; mypy checks ``Reinforce`` against the algorithm protocol here."""
