"""The reference toolbox's rollout, for side-by-side timing: one generation call per tree node.

`PerNodeSampler` grows the same trees as the ``ast`` sampler (same options, same prompts, same
reward, computed by `astra_ast.reward.score_turns`), but the way ASTRA-RL does: for every parent
context it calls ``rollout_tester([context] * width)``, then ``rollout_target`` on its `width`
children, then scores that one group (one scorer call and one target log-prob call). An experience
of E episodes of width W and depth D therefore costs ``2 * E * (W**D - 1) / (W - 1)`` generation
calls (112 for 8 episodes, width 2, depth 3) instead of ``2 * D``. It exists only to be measured
against; weak supervision (``tox_mix``) is not reproduced.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Generic

from astra_ast.options import ASTSamplerOptions
from astra_ast.prompt_sets import load_prompts
from astra_ast.reward import Weights, score_turns
from astra_core.errors import OptionsError
from astra_core.graph import Graph, Node
from astra_core.protocols import Scorer, System
from astra_core.types import StateT


def per_node_calls(episodes: int, width: int, depth: int) -> int:
    """Generation calls of one per-node experience: two per parent context.

    >>> per_node_calls(8, 2, 3)
    112
    """
    parents = sum(int(width**level) for level in range(depth))
    return 2 * episodes * parents


class PerNodeSampler(Generic[StateT]):
    """The ``ast`` sampler's trees, rolled out one node (sibling group) at a time.

    Takes the ``ast`` sampler's options; ``tox_mix > 0`` is refused, since the reference toolbox's
    weak supervision is not what is being timed.

    Example (a system and a scorer built beforehand)::

        sampler = PerNodeSampler(system, scorer, tree_width=2, tree_depth=3)
        graphs = sampler.rollouts(8)  # 112 generation calls
    """

    def __init__(self, system: System[StateT, str], scorer: Scorer[StateT, str], **options: Any) -> None:
        self.options = ASTSamplerOptions.model_validate(options)
        if self.options.tox_mix > 0:
            raise OptionsError("sampler", "per-node", ["tox_mix: the per-node benchmark sampler does not supervise"])
        self.system = system
        self.scorer = scorer
        self.weights = Weights(self.options.alpha, self.options.zeta, self.options.gamma)
        self.prompts = load_prompts(self.options.prompts, self.options.prompt_key)

    def rollouts(self, count: int) -> list[Graph[StateT, str]]:
        """`count` episodes, each parent context expanded by its own pair of generation calls."""
        width, system = self.options.tree_width, self.system
        graphs: list[Graph[StateT, str]] = [Graph(system.opening(random.choice(self.prompts))) for _ in range(count)]
        for graph in graphs:
            frontier: list[tuple[list[Node[StateT, str]], StateT]] = [(graph.children, graph.context)]
            for _ in range(self.options.tree_depth):
                following: list[tuple[list[Node[StateT, str]], StateT]] = []
                for children, context in frontier:
                    contexts = [context] * width
                    probes = system.rollout_tester(contexts)
                    responses = system.rollout_target([system.join(context, p) for p in probes])
                    rewards, parts = score_turns(system, self.scorer, contexts, probes, responses, self.weights)
                    for probe, response, reward, part in zip(probes, responses, rewards, parts, strict=True):
                        node: Node[StateT, str] = Node(context, probe, response, reward, scores=part)
                        children.append(node)
                        following.append((node.children, system.advance(context, probe, response)))
                frontier = following
        return graphs

    def eval_rollouts(self, prompts: Sequence[str]) -> list[Graph[StateT, str]]:
        """Not timed by the benchmark: evaluation chains are the ``ast`` sampler's."""
        raise NotImplementedError("the per-node benchmark sampler only rolls out training episodes")
