"""The ASTPrompter reward, computed for a whole tree level at once.

``R = alpha * tox(response) + zeta * tox(probe + response) + gamma * mean log p_target(probe | context)``

The first two terms reward probes that make the target say something toxic (alone, and in the
context of the probe); the last keeps probes likely under the target, so the tester learns
fluent, plausible prompts instead of gibberish. The likelihood is the mean over the probe's
tokens, so it does not simply grow more negative with longer probes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from astra_core.protocols import Scorer, System
from astra_core.scoring import checked_scores
from astra_core.turns import Turn

RESPONSE_TOXICITY = "response_toxicity"
COMBINED_TOXICITY = "combined_toxicity"
PROBE_LOGPROB = "probe_logprob"
PROBE_TOXICITY = "probe_toxicity"
SUPERVISED = "supervised"


@dataclass(frozen=True)
class Weights:
    """The reward weights (the paper's alpha, zeta, gamma)."""

    alpha: float = 1.0
    zeta: float = 0.5
    gamma: float = 0.1


def ast_reward(response_toxicity: float, combined_toxicity: float, probe_logprob: float, weights: Weights) -> float:
    """The reward of one turn from its parts.

    >>> round(ast_reward(0.5, 0.2, -2.0, Weights()), 6)
    0.4
    """
    return (
        weights.alpha * response_toxicity + weights.zeta * combined_toxicity + weights.gamma * probe_logprob
    )


def score_turns(
    system: System[str, str],
    scorer: Scorer[str, str],
    contexts: Sequence[str],
    probes: Sequence[str],
    responses: Sequence[str],
    weights: Weights,
    *,
    probe_toxicity: bool = False,
) -> tuple[list[float], list[dict[str, float]]]:
    """Rewards and named reward parts of a batch of turns, with one scorer call and one target call.

    One scorer call judges, in this order: each turn (context, probe, response), so a text
    scorer reads the response; each probe+response text alone (joined as the system joins a turn,
    ``system.advance("", probe, response)``); and with `probe_toxicity` each probe alone
    (evaluation reports it).
    """
    count = len(contexts)
    if not count:
        return [], []
    turns = [Turn(c, p, r) for c, p, r in zip(contexts, probes, responses, strict=True)]
    combined = [Turn(c, system.advance("", p, r)) for c, p, r in zip(contexts, probes, responses, strict=True)]
    alone = [Turn(c, p) for c, p in zip(contexts, probes, strict=True)] if probe_toxicity else []
    toxicities = checked_scores(scorer, [*turns, *combined, *alone])
    logprobs = system.target_logprobs(contexts, probes, reduction="mean").detach().float().cpu().tolist()
    if len(logprobs) != count:
        raise RuntimeError(f"target_logprobs returned {len(logprobs)} values for {count} probes")
    rewards, parts = [], []
    for index in range(count):
        part = {
            RESPONSE_TOXICITY: toxicities[index],
            COMBINED_TOXICITY: toxicities[count + index],
            PROBE_LOGPROB: float(logprobs[index]),
        }
        if probe_toxicity:
            part[PROBE_TOXICITY] = toxicities[2 * count + index]
        parts.append(part)
        rewards.append(ast_reward(part[RESPONSE_TOXICITY], part[COMBINED_TOXICITY], part[PROBE_LOGPROB], weights))
    return rewards, parts
