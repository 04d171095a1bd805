"""Components that each break one contract, for tests/test_contracts.py.

The test copies this file into a temporary directory as ``astra_contract_breakers/components.py``
of a third-party plugin package (with a ``*.dist-info`` declaring its entry point), so
`astra train` in a subprocess finds them the way it finds any installed plugin. Every broken
component behaves until the ``breakers-arm`` callback arms it (at the end of step `step`), so
the steps before the breach leave checkpoints and metrics behind; a few breaks (a loss with no
gradient path, checked once) show on the first step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from astra_core.graph import Graph
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem

ARMED = False


class Arm:
    """A callback that arms every broken component at the end of step `step`."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_step_end(self, trainer: Any, step: int, logs: Mapping[str, float]) -> None:
        global ARMED
        ARMED = step >= self.step


# --- scorers ----------------------------------------------------------------------------------


class ShortScorer(ToyScorer):
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        scores = super().score_texts(texts)
        return scores[:-1] if ARMED else scores


class LoudScorer(ToyScorer):
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [1.5 for _ in texts] if ARMED else super().score_texts(texts)


class NaNScorer(ToyScorer):
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [math.nan for _ in texts] if ARMED else super().score_texts(texts)


# --- systems ----------------------------------------------------------------------------------


class NaNLogprobs(ToySystem):
    def tester_logprobs(self, contexts: Sequence[str], continuations: Sequence[str], reduction: Any = "sum") -> Any:
        values = super().tester_logprobs(contexts, continuations, reduction)
        return values * torch.where(torch.arange(len(values)) == 0, math.nan, 1.0) if ARMED else values


class NegatedLogprobs(ToySystem):
    """The baseline returns negative log-likelihoods (a sign slip) where log-probs are due."""

    def baseline_logprobs(self, contexts: Sequence[str], continuations: Sequence[str], reduction: Any = "sum") -> Any:
        values = super().baseline_logprobs(contexts, continuations, reduction)
        return -values if ARMED else values


class ShortLogprobs(ToySystem):
    def baseline_logprobs(self, contexts: Sequence[str], continuations: Sequence[str], reduction: Any = "sum") -> Any:
        values = super().baseline_logprobs(contexts, continuations, reduction)
        return values[:-1] if ARMED else values


class ColumnLogprobs(ToySystem):
    """(B, 1) log-probs: they would broadcast against (B,) into a (B, B) loss without an error."""

    def tester_logprobs(self, contexts: Sequence[str], continuations: Sequence[str], reduction: Any = "sum") -> Any:
        values = super().tester_logprobs(contexts, continuations, reduction)
        return values.unsqueeze(1) if ARMED else values


class DetachedLogprobs(ToySystem):
    def tester_logprobs(self, contexts: Sequence[str], continuations: Sequence[str], reduction: Any = "sum") -> Any:
        values = super().tester_logprobs(contexts, continuations, reduction)
        return values.detach() if ARMED else values


class PairSystem(ToySystem):
    """Offers the optional pair pass (`tester_pair_logprobs`); it returns a positive value once armed."""

    def tester_pair_logprobs(
        self, contexts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], reduction: Any = "sum"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        both = self.tester_logprobs([*contexts, *contexts], [*chosen, *rejected], reduction)
        first, second = both[: len(contexts)], both[len(contexts) :]
        return (first, second + 100.0) if ARMED else (first, second)


class RaisingSystem(ToySystem):
    def rollout_target(self, contexts: Sequence[str]) -> list[str]:
        if ARMED:
            raise RuntimeError("the target's server is unreachable")
        return super().rollout_target(contexts)


# --- samplers ---------------------------------------------------------------------------------


class ShortSampler(ToySampler):
    def rollouts(self, count: int) -> list[Graph[str, str]]:
        graphs = super().rollouts(count)
        return graphs[:-1] if ARMED else graphs


class DictSampler(ToySampler):
    """Returns plain dicts instead of rollout trees once armed."""

    def rollouts(self, count: int) -> Any:
        graphs = super().rollouts(count)
        return [{"context": g.context, "turns": len(g.children)} for g in graphs] if ARMED else graphs


# --- algorithms -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    context: str
    chosen: str
    rejected: str


class PairDPO:
    """A small DPO: the best against the worst sibling of every group (ties kept), using the
    system's pair pass when it offers one."""

    def __init__(self, system: ToySystem, beta: float = 0.5) -> None:
        self.system = system
        self.beta = beta

    def flatten(self, graphs: Sequence[Graph[str, str]]) -> list[Pair]:
        pairs = []
        for graph in graphs:
            for group in graph.sibling_groups():
                ordered = sorted(group, key=lambda node: node.reward, reverse=True)
                pairs.append(Pair(ordered[0].context, ordered[0].probe, ordered[-1].probe))
        return pairs

    def collate_fn(self, examples: Sequence[Pair]) -> Any:
        return list(examples)

    def margins(self, batch: list[Pair]) -> torch.Tensor:
        contexts = [p.context for p in batch]
        chosen, rejected = [p.chosen for p in batch], [p.rejected for p in batch]
        pair = getattr(self.system, "tester_pair_logprobs", None)
        if pair is not None:
            pi_chosen, pi_rejected = pair(contexts, chosen, rejected)
        else:
            pi_chosen = self.system.tester_logprobs(contexts, chosen)
            pi_rejected = self.system.tester_logprobs(contexts, rejected)
        ref_chosen = self.system.baseline_logprobs(contexts, chosen)
        ref_rejected = self.system.baseline_logprobs(contexts, rejected)
        margin: torch.Tensor = self.beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected))
        return margin

    def loss(self, batch: list[Pair]) -> tuple[torch.Tensor, dict[str, float]]:
        margin = self.margins(batch)
        loss: torch.Tensor = -F.logsigmoid(margin).mean()
        return loss, {"margin": float(margin.detach().mean())}

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.system.parameters()


class VectorLoss(PairDPO):
    """Returns one loss per pair instead of their mean once armed."""

    def loss(self, batch: list[Pair]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super().loss(batch)
        return (-F.logsigmoid(self.margins(batch)) if ARMED else loss), logs


class PathlessLoss(PairDPO):
    """A loss that requires grad but reaches no parameter (a fresh leaf, not the tester)."""

    def loss(self, batch: list[Pair]) -> tuple[torch.Tensor, dict[str, float]]:
        _, logs = super().loss(batch)
        return torch.ones((), requires_grad=True) * 0.5, logs


class DictCollate(PairDPO):
    """collate_fn builds a dict once armed; loss still expects the list of pairs."""

    def collate_fn(self, examples: Sequence[Pair]) -> Any:
        return {"pairs": list(examples)} if ARMED else list(examples)
