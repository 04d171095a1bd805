"""The floor of a step's work: every unique token once per model and pass, counted on the very trees.

A causal LM's output at a token depends on the token and everything before it, so rows that share
a prefix (a tree's opener, its earlier turns, a sibling group's context) need that prefix computed
once. The least work a step can do is then the number of nodes of a token trie over the rows each
pass runs: for the tester's generation (context as the system truncates it, then the probe), the
target's generation (context and probe, truncated, then the response), the update's training
forward and its backward (the rows the algorithm trains on: both probes of every preference pair,
or every turn for the policy-gradient algorithms), and the baseline's reference forward over the
same rows. A memo that serves the reference pass from the target's generation (when they are one
model and the rows coincide) can take a step below this count; batches that split a tree take it
above (each batch is a separate pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from astra_core.graph import Graph
from bench.reference import preference_groups

TokenIds = Callable[[Sequence[str]], list[list[int]]]
"""Token ids of a list of texts."""


def trie_size(rows: Iterable[Sequence[int]]) -> int:
    """The number of distinct prefixes (trie nodes) of `rows`: each shared prefix counts once.

    >>> trie_size([[1, 2, 3], [1, 2, 4], [5]])
    5
    """
    children: dict[tuple[int, int], int] = {}
    for row in rows:
        parent = -1
        for token in row:
            node = children.get((parent, token))
            if node is None:
                node = children[(parent, token)] = len(children)
            parent = node
    return len(children)


def _last(ids: list[int], budget: int | None) -> list[int]:
    return ids[-budget:] if budget is not None and budget > 0 else ids


def floor_positions(
    graphs: Sequence[Graph[str, str]],
    tester_ids: TokenIds,
    target_ids: TokenIds,
    tester_budget: int | None = None,
    target_budget: int | None = None,
    pairs: bool = True,
) -> dict[str, dict[str, int]]:
    """The floor per model and pass on `graphs` (see the module doc); `pairs` False trains on every turn."""
    nodes = [node for graph in graphs for node in graph.nodes()]
    work = {
        "tester": {"generation": 0, "train_forward": 0, "backward": 0},
        "target": {"generation": 0},
        "baseline": {"frozen_forward": 0},
    }
    if not nodes:
        return work
    contexts = tester_ids([node.context for node in nodes])
    probes = tester_ids([node.probe for node in nodes])
    joined = target_ids([node.context + node.probe for node in nodes])
    responses = target_ids([node.response for node in nodes])
    index = {id(node): i for i, node in enumerate(nodes)}
    rows = [_last(contexts[i], tester_budget) + probes[i] for i in range(len(nodes))]
    work["tester"]["generation"] = trie_size(rows)
    work["target"]["generation"] = trie_size(_last(joined[i], target_budget) + responses[i] for i in range(len(nodes)))
    if pairs:
        trained = [index[id(node)] for graph in graphs for pair in preference_groups(graph) for node in pair]
    else:
        trained = list(range(len(nodes)))
    update = trie_size(rows[i] for i in set(trained))
    work["tester"]["train_forward"] = work["tester"]["backward"] = update
    work["baseline"]["frozen_forward"] = update
    return work
