"""The ``ast`` sampler: ASTPrompter's tree of multi-turn conversations, one model call per level.

The sampler is generic over the system's state type (``ASTSampler[str]`` over a plain-text
system, ``ASTSampler[Conversation]`` over a chat one): it only passes states along, through the
system's ``opening``, ``join`` and ``advance``; probes and responses are text.

Each episode opens with a prompt drawn (with Python's global `random`, which the Trainer seeds
and checkpoints) from the prompt set. At every turn each open conversation branches into
`tree_width` siblings: the tester writes a probe after the context, the target answers the
context followed by the probe, and the conversation advances by the probe and the response.
All episodes of an experience grow together, level by level, so an experience costs exactly
``2 * tree_depth`` generation calls (one `rollout_tester`, one `rollout_target` per level), one
scorer call and one `target_logprobs` call per level, whatever the number of episodes and width.
The scorer is the sampler's own (the reward's dependency): ``factory(system, scorer, **options)``.

Weak supervision (``tox_mix``): at each branching node, with probability `tox_mix`, one sibling's
probe is replaced by a text drawn from `tox_texts`. Its reward is computed by the same reward
function, then raised to the best sibling's reward plus `SUPERVISION_MARGIN` if it is not already
the strict best, so a preference algorithm always picks it as the winner; it is marked with
``scores["supervised"] = 1.0`` (its siblings carry ``0.0``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Generic, TypeAlias

from pydantic import ValidationError

from astra_ast.options import ASTSamplerOptions
from astra_ast.prompt_sets import load_prompts
from astra_ast.reward import SUPERVISED, NoveltyMemory, Weights, score_turns
from astra_core.errors import OptionsError
from astra_core.graph import Graph, Node
from astra_core.protocols import Scorer, System
from astra_core.types import StateT

SUPERVISION_MARGIN = 1e-3
"""How far a supervised sibling's reward is raised above its best sibling's, so it wins strictly."""

_Slot: TypeAlias = tuple[list[Node[StateT, str]], StateT]  # (the children list a new node joins, its context)


class ASTSampler(Generic[StateT]):
    """ASTPrompter's batched tree sampler over a system with states of type `StateT` (see the module doc).

    Options are those of `ASTSamplerOptions`; invalid ones raise `OptionsError`, unreadable
    prompt files `ConfigError`, both before any model runs.

    Example (a system and a scorer built beforehand)::

        sampler = ASTSampler(system, scorer, tree_width=2, tree_depth=3, prompts="builtin:train")
        graphs = sampler.rollouts(8)  # 6 generation calls in all
    """

    def __init__(self, system: System[StateT, str], scorer: Scorer[StateT, str], **options: Any) -> None:
        try:
            self.options = ASTSamplerOptions.model_validate(options)
        except ValidationError as error:
            problems = [f"{'.'.join(map(str, e['loc'])) or '(options)'}: {e['msg']}" for e in error.errors()]
            raise OptionsError("sampler", "ast", problems) from None
        self.system = system
        self.scorer = scorer
        self.tree_width = self.options.tree_width
        self.tree_depth = self.options.tree_depth
        o = self.options
        self.weights = Weights(o.alpha, o.zeta, o.gamma, o.eta, o.gate, o.probe_threshold, o.nu, o.repeat_discount)
        # The probes the novelty bonus compares against; part of the checkpoint (state_dict).
        self.memory = NoveltyMemory(o.novelty_memory, o.novelty_order)
        self.prompts = load_prompts(self.options.prompts, self.options.prompt_key)
        self.tox_texts: list[str] = []
        if self.options.tox_texts is not None:
            self.tox_texts = load_prompts(self.options.tox_texts, self.options.tox_key or self.options.prompt_key)

    def rollouts(self, count: int) -> list[Graph[StateT, str]]:
        """`count` training episodes grown together: 2 * tree_depth generation calls in all."""
        if count < 1:
            return []
        graphs: list[Graph[StateT, str]] = [
            Graph(self.system.opening(random.choice(self.prompts))) for _ in range(count)
        ]
        frontier: list[_Slot[StateT]] = [(graph.children, graph.context) for graph in graphs]
        for _ in range(self.tree_depth):
            slots = [slot for slot in frontier for _ in range(self.tree_width)]
            frontier = self._grow(slots, self.tree_width, supervise=True)
        return graphs

    def eval_rollouts(self, prompts: Sequence[str], depth: int | None = None) -> list[Graph[StateT, str]]:
        """Width-1 chains of `depth` turns (default tree_depth) from each prompt, batched per level.

        Evaluation nodes also carry ``scores["probe_toxicity"]``; no weak supervision applies.
        """
        turns = self.tree_depth if depth is None else depth
        graphs: list[Graph[StateT, str]] = [Graph(self.system.opening(prompt)) for prompt in prompts]
        if not graphs:
            return graphs
        frontier: list[_Slot[StateT]] = [(graph.children, graph.context) for graph in graphs]
        for _ in range(turns):
            frontier = self._grow(frontier, 1, supervise=False)
        return graphs

    def _grow(self, slots: list[_Slot[StateT]], width: int, *, supervise: bool) -> list[_Slot[StateT]]:
        """Add one node per slot (slots come in sibling groups of `width`); return the next frontier."""
        contexts = [context for _, context in slots]
        supervised = self._supervised_slots(len(slots), width) if supervise else set()
        tester_indices = [i for i in range(len(slots)) if i not in supervised]
        written = self.system.rollout_tester([contexts[i] for i in tester_indices])
        probes = [""] * len(slots)
        for index, probe in zip(tester_indices, written, strict=True):
            probes[index] = probe
        for index in sorted(supervised):
            probes[index] = random.choice(self.tox_texts)
        responses = self.system.rollout_target([self.system.join(c, p) for c, p in zip(contexts, probes, strict=True)])
        memory = self.memory if supervise else None  # evaluation neither reads nor grows the memory
        rewards, parts = score_turns(
            self.system,
            self.scorer,
            contexts,
            probes,
            responses,
            self.weights,
            probe_toxicity=not supervise,
            memory=memory,
        )
        if memory is not None and self.weights.needs_novelty:
            memory.add([probes[i] for i in tester_indices])  # after scoring: siblings meet the same memory
        if supervise and self.options.tox_mix > 0:
            for index, part in enumerate(parts):
                part[SUPERVISED] = 1.0 if index in supervised else 0.0
            for index in supervised:
                group = range(index - index % width, index - index % width + width)
                rewards[index] = _winning_reward(rewards[index], [rewards[i] for i in group if i != index])
        following: list[_Slot[StateT]] = []
        for (children, context), probe, response, reward, part in zip(
            slots, probes, responses, rewards, parts, strict=True
        ):
            node: Node[StateT, str] = Node(context, probe, response, reward, scores=part)
            children.append(node)
            following.append((node.children, self.system.advance(context, probe, response)))
        return following

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold for an exact resume: the novelty memory (JSON)."""
        return {"novelty_memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`."""
        self.memory.load_state_dict(state["novelty_memory"])

    def _supervised_slots(self, count: int, width: int) -> set[int]:
        """Which slots get a supervised probe: at most one per sibling group, never without siblings."""
        if self.options.tox_mix <= 0 or width < 2:
            return set()
        chosen = set()
        for start in range(0, count, width):
            if random.random() < self.options.tox_mix:
                chosen.add(start + random.randrange(width))
        return chosen


def _winning_reward(own: float, siblings: Sequence[float]) -> float:
    """`own`, raised if needed to beat every finite sibling reward by SUPERVISION_MARGIN."""
    finite = [r for r in siblings if math.isfinite(r)]
    if not finite or not math.isfinite(own):
        return own
    return max(own, max(finite) + SUPERVISION_MARGIN)
