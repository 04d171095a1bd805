"""The rollout tree: what a sampler produces and an algorithm consumes.

A `Graph` is one episode. Its root holds the opening context; every `Node` is one turn: the tester
wrote `probe` after `context`, the target answered `response`, and the turn earned `reward`. The
node's children continue the conversation from the advanced state. Siblings share their context,
which is what preference algorithms pair on.

The type is a tree, not a general graph; it keeps the name `Graph` because the reference
toolbox (ASTRA-RL) calls its rollout tree that, and its users port samplers and algorithms that
say ``graph`` throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic

from astra_core.types import ActionT, StateT


@dataclass
class Node(Generic[StateT, ActionT]):
    """One turn: `context` -> tester's `probe` -> target's `response`, scored as `reward`.

    `scores` carries the reward's named parts (for example response toxicity) so evaluators and
    metrics can report them without recomputing.
    """

    context: StateT
    probe: ActionT
    response: StateT
    reward: float
    children: list[Node[StateT, ActionT]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Graph(Generic[StateT, ActionT]):
    """One episode: the opening `context` and the tree of turns grown from it (a rollout tree)."""

    context: StateT
    children: list[Node[StateT, ActionT]] = field(default_factory=list)

    def nodes(self) -> Iterator[Node[StateT, ActionT]]:
        """Every node, breadth first."""
        for level in self.levels():
            yield from level

    def levels(self) -> Iterator[list[Node[StateT, ActionT]]]:
        """The nodes grouped by depth: first turns, second turns, ..."""
        level = list(self.children)
        while level:
            yield level
            level = [child for node in level for child in node.children]

    def sibling_groups(self) -> Iterator[list[Node[StateT, ActionT]]]:
        """Every non-empty group of nodes that share one parent (and so one context)."""
        if self.children:
            yield list(self.children)
        for node in self.nodes():
            if node.children:
                yield list(node.children)

    def depth(self) -> int:
        """The number of turns on the longest path."""
        return sum(1 for _ in self.levels())
