"""Preference pairs cut from rollout trees, shared by DPO and IPO.

Siblings in a rollout tree share their context, so every branching node offers a preference:
the sibling probe that earned the highest reward is "chosen", the lowest "rejected". Groups whose
best and worst rewards tie carry no preference and give no pair; nodes with a non-finite reward
are left out before choosing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, runtime_checkable

import torch
from torch.nn import Parameter

from astra_algorithms._common import finite, frozen
from astra_core.graph import Graph
from astra_core.protocols import Reduction, System
from astra_core.types import ActionT, StateT


@dataclass(frozen=True)
class PreferencePair(Generic[StateT, ActionT]):
    """One training example: after `context`, the probe `chosen` earned more than `rejected`."""

    context: StateT
    chosen: ActionT
    rejected: ActionT
    chosen_reward: float
    rejected_reward: float


@dataclass(frozen=True)
class PreferenceBatch(Generic[StateT, ActionT]):
    """Preference pairs side by side: parallel lists of contexts, chosen and rejected probes."""

    contexts: list[StateT]
    chosen: list[ActionT]
    rejected: list[ActionT]
    chosen_rewards: torch.Tensor  # (B,)
    rejected_rewards: torch.Tensor  # (B,)

    def __len__(self) -> int:
        return len(self.contexts)


def preference_pairs(graph: Graph[StateT, ActionT]) -> list[PreferencePair[StateT, ActionT]]:
    """The best-versus-worst sibling pair of every branching node of `graph`, breadth first.

    >>> from astra_core.graph import Graph, Node
    >>> g = Graph("hi", [Node("hi", "a", "a", 0.9), Node("hi", "b", "b", 0.1)])
    >>> [(p.chosen, p.rejected) for p in preference_pairs(g)]
    [('a', 'b')]
    """
    pairs: list[PreferencePair[StateT, ActionT]] = []
    for group in graph.sibling_groups():
        scored = finite(group)
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda node: node.reward)
        worst = min(scored, key=lambda node: node.reward)
        if best.reward == worst.reward:
            continue
        pairs.append(PreferencePair(best.context, best.probe, worst.probe, best.reward, worst.reward))
    return pairs


class PreferenceAlgorithm(Generic[StateT, ActionT]):
    """What DPO and IPO share: flattening into pairs, collating, and one forward per model.

    Subclasses define `loss`; `logprobs` gives them the four log-prob vectors of a batch.
    """

    def __init__(self, system: System[StateT, ActionT]) -> None:
        self.system = system

    def flatten(self, graphs: Sequence[Graph[StateT, ActionT]]) -> Sequence[PreferencePair[StateT, ActionT]]:
        """Every branching node's best-versus-worst pair (see `preference_pairs`), episode by episode."""
        return [pair for graph in graphs for pair in preference_pairs(graph)]

    def collate_fn(self, examples: Sequence[PreferencePair[StateT, ActionT]]) -> PreferenceBatch[StateT, ActionT]:
        """Pairs side by side in parallel lists, rewards as tensors."""
        return PreferenceBatch(
            contexts=[e.context for e in examples],
            chosen=[e.chosen for e in examples],
            rejected=[e.rejected for e in examples],
            chosen_rewards=torch.tensor([e.chosen_reward for e in examples], dtype=torch.float32),
            rejected_rewards=torch.tensor([e.rejected_reward for e in examples], dtype=torch.float32),
        )

    def logprobs(
        self, batch: PreferenceBatch[StateT, ActionT], reduction: Reduction = "sum"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's four log-prob vectors, each (B,) (see `pair_logprobs`)."""
        return pair_logprobs(self.system, batch, reduction)

    def parameters(self) -> Iterator[Parameter]:
        """The tester's parameters (preference losses add none of their own)."""
        return self.system.parameters()


@runtime_checkable
class PairLogprobSystem(Protocol):
    """A system that scores a preference pair's two continuations on one pass of their shared
    context: `tester_pair_logprobs` returns (chosen, rejected) log-probs, each (B,), with the same
    values and gradients as two `tester_logprobs` calls."""

    def tester_pair_logprobs(
        self,
        contexts: Sequence[Any],
        chosen: Sequence[Any],
        rejected: Sequence[Any],
        reduction: Reduction = "sum",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) tester log-probs after each context, with gradients."""
        ...


def pair_logprobs(
    system: System[StateT, ActionT], batch: PreferenceBatch[StateT, ActionT], reduction: Reduction = "sum"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(policy chosen, policy rejected, reference chosen, reference rejected) log-probs, each (B,),
    with the tester's pair pass when `system` is a `PairLogprobSystem` (each context runs once),
    else one concatenated `tester_logprobs` call. The baseline's come
    without gradients from one concatenated call either way."""
    n = len(batch)
    contexts = batch.contexts + batch.contexts
    continuations = batch.chosen + batch.rejected
    if isinstance(system, PairLogprobSystem):
        pi_chosen, pi_rejected = system.tester_pair_logprobs(batch.contexts, batch.chosen, batch.rejected, reduction)
        pi_chosen, pi_rejected = pi_chosen.float(), pi_rejected.float()
    else:
        policy = system.tester_logprobs(contexts, continuations, reduction).float()  # (2B,)
        pi_chosen, pi_rejected = policy[:n], policy[n:]
    with torch.no_grad():
        reference = frozen(system.baseline_logprobs(contexts, continuations, reduction))  # (2B,)
    reference = reference.to(pi_chosen.device)
    return pi_chosen, pi_rejected, reference[:n], reference[n:]
