"""The reference toolbox's work on the same trees, counted analytically in token positions.

For every sibling group (a parent context ``c`` and its `width` children, child ``i`` with probe
``p_i`` and response ``r_i``), the reference (ASTRA-RL) runs, per child:

- tester: a prefill of ``c`` and ``len(p_i) - 1`` decode steps;
- target: a prefill of ``c + p_i``, ``len(r_i) - 1`` decode steps, and a reward forward over ``c + p_i``;

and for each preference pair of the group (best versus worst reward, when they differ), in the
update: the tester and the baseline each run a forward over ``c + chosen`` and ``c + rejected``,
and the backward flows through both. Lengths are actual token counts of the tree's texts, contexts
cut to the model's context budget; padding is not counted (in the reference's favour).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from astra_core.graph import Graph, Node

TokenCounter = Callable[[Sequence[str]], list[int]]
"""Token counts of a list of texts."""


def _empty() -> dict[str, int]:
    return {"prefill": 0, "decode": 0, "train_forward": 0, "frozen_forward": 0, "backward": 0}


def preference_groups(graph: Graph[str, str]) -> list[tuple[Node[str, str], Node[str, str]]]:
    """The (best, worst) sibling of every branching node whose finite rewards differ: the DPO pairs.

    >>> g = Graph("hi", [Node("hi", "a", "x", 0.9), Node("hi", "b", "y", 0.1)])
    >>> [(best.probe, worst.probe) for best, worst in preference_groups(g)]
    [('a', 'b')]
    """
    pairs = []
    for group in graph.sibling_groups():
        scored = [node for node in group if math.isfinite(node.reward)]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda node: node.reward)
        worst = min(scored, key=lambda node: node.reward)
        if best.reward != worst.reward:
            pairs.append((best, worst))
    return pairs


def reference_positions(
    graphs: Sequence[Graph[str, str]],
    tester_tokens: TokenCounter,
    target_tokens: TokenCounter,
    tester_budget: int | None = None,
    target_budget: int | None = None,
) -> dict[str, dict[str, int]]:
    """Token positions per model (tester, target, baseline) and kind the reference spends on `graphs`.

    `tester_budget` and `target_budget` cap a context's length as the system truncates it (None:
    no cap).
    """
    work = {"tester": _empty(), "target": _empty(), "baseline": _empty()}
    nodes = [node for graph in graphs for node in graph.nodes()]
    if not nodes:
        return work
    contexts = tester_tokens([node.context for node in nodes])
    target_contexts = target_tokens([node.context for node in nodes])
    probes = tester_tokens([node.probe for node in nodes])
    target_probes = target_tokens([node.probe for node in nodes])
    responses = target_tokens([node.response for node in nodes])
    index = {id(node): i for i, node in enumerate(nodes)}

    def capped(length: int, budget: int | None) -> int:
        return length if budget is None else min(length, budget)

    tester, target, baseline = work["tester"], work["target"], work["baseline"]
    for i in range(len(nodes)):
        context = capped(contexts[i], tester_budget)
        target_context = capped(target_contexts[i], target_budget)
        tester["prefill"] += context
        tester["decode"] += max(probes[i] - 1, 0)
        target["prefill"] += target_context + target_probes[i]
        target["decode"] += max(responses[i] - 1, 0)
        target["frozen_forward"] += target_context + target_probes[i]  # the reward's likelihood pass
    for graph in graphs:
        for best, worst in preference_groups(graph):
            b, w = index[id(best)], index[id(worst)]
            positions = 2 * capped(contexts[b], tester_budget) + probes[b] + probes[w]
            tester["train_forward"] += positions
            tester["backward"] += positions
            baseline["frozen_forward"] += positions
            baseline["backward"] += positions  # the reference keeps the baseline in autograd
    return work


def total(work: dict[str, dict[str, int]]) -> int:
    """All token positions of a per-model, per-kind count.

    >>> total({"tester": {"prefill": 3, "decode": 1}, "target": {"prefill": 2}})
    6
    """
    return sum(sum(kinds.values()) for kinds in work.values())
