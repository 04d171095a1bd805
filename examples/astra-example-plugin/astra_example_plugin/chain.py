"""``example-chain``: a width-1 chain sampler over any `System`.

An episode opens with a context drawn from `openers` (with Python's global `random`, which the
Trainer seeds) and takes `depth` turns; every episode of an experience is rolled out together,
so each turn is one batched tester call, one batched target call and one scorer call; a turn's
reward is the sampler's scorer's score of the turn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Generic

from astra_core import Graph, Node, Scorer, System, Turn, factories
from astra_core.scoring import checked_scores
from astra_core.types import ActionT, StateT


class ChainSampler(Generic[StateT, ActionT]):
    """Width-1 chains of `depth` turns: ``ChainSampler(system, scorer, depth=3, openers=[...])``."""

    def __init__(
        self,
        system: System[StateT, ActionT],
        scorer: Scorer[StateT, ActionT],
        depth: int = 3,
        *,
        openers: Sequence[StateT],
    ) -> None:
        if depth < 1 or not openers:
            raise ValueError("ChainSampler needs depth >= 1 and at least one opener")
        self.system = system
        self.scorer = scorer
        self.depth = depth
        self.openers = list(openers)

    def rollouts(self, count: int) -> list[Graph[StateT, ActionT]]:
        """`count` episodes, rolled out together."""
        graphs = [Graph[StateT, ActionT](random.choice(self.openers)) for _ in range(count)]
        self._grow(graphs)
        return graphs

    def eval_rollouts(self, prompts: Sequence[StateT]) -> list[Graph[StateT, ActionT]]:
        """One evaluation episode from each prompt, rolled out together."""
        graphs = [Graph[StateT, ActionT](prompt) for prompt in prompts]
        self._grow(graphs)
        return graphs

    def _grow(self, graphs: list[Graph[StateT, ActionT]]) -> None:
        # Each frontier entry is where the next turn goes and the state it starts from.
        frontier: list[tuple[list[Node[StateT, ActionT]], StateT]] = [(g.children, g.context) for g in graphs]
        for _ in range(self.depth):
            contexts = [context for _, context in frontier]
            probes = self.system.rollout_tester(contexts)
            joined = [self.system.join(c, p) for c, p in zip(contexts, probes, strict=True)]
            responses = self.system.rollout_target(joined)
            turns = [Turn(c, p, r) for c, p, r in zip(contexts, probes, responses, strict=True)]
            rewards = checked_scores(self.scorer, turns)
            following: list[tuple[list[Node[StateT, ActionT]], StateT]] = []
            for (children, context), probe, response, reward in zip(frontier, probes, responses, rewards, strict=True):
                node = Node(context, probe, response, reward, scores={"response_toxicity": reward})
                children.append(node)
                following.append((node.children, self.system.advance(context, probe, response)))
            frontier = following


factory = factories.sampler(ChainSampler)
"""What the plugin registers; mypy checks ``ChainSampler`` against the sampler protocol here."""
