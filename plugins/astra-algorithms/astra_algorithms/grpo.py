"""Tree-group policy gradient: REINFORCE with each sibling group's mean reward as the baseline.

Papers: the group-relative advantage is GRPO's (Shao et al., 2024, "DeepSeekMath: Pushing the
Limits of Mathematical Reasoning in Open Language Models", https://arxiv.org/abs/2402.03300,
sec. 4.1, outcome supervision), here with a rollout tree's siblings as the group; the gradient
estimator is REINFORCE (Williams, 1992, "Simple statistical gradient-following algorithms for
connectionist reinforcement learning"); the KL term is the k3 estimator GRPO uses (Schulman,
2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html).

For every node i of a sibling group G (all sharing one context x), with reward R_i::

    A_i    = R_i - mean_{j in G} R_j                  (divided by std_{j in G} R_j + 1e-4 with scale_by_std)
    L_PG   = -mean_i( A_i * log pi_theta(y_i|x) )
    k3_i   = pi_ref(y_i|x)/pi_theta(y_i|x) - log(pi_ref(y_i|x)/pi_theta(y_i|x)) - 1
    L      = L_PG + kl_coef * mean_i(k3_i)

Every node is used (an only child has advantage 0 and only feels the KL term); log-probs are
summed over each probe's tokens; there is no value head and no importance ratio (one pass).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple

import torch
from torch.nn import Parameter

from astra_algorithms._common import finite, frozen, validated
from astra_algorithms.options import GRPOOptions
from astra_core.graph import Graph
from astra_core.protocols import System
from astra_core.types import ActionT, StateT

STD_EPSILON = 1e-4
"""Added to a group's standard deviation before dividing by it (as TRL's GRPO does)."""


@dataclass(frozen=True)
class GroupExample(Generic[StateT, ActionT]):
    """One turn with its group-relative advantage."""

    context: StateT
    probe: ActionT
    reward: float
    advantage: float


@dataclass(frozen=True)
class GroupBatch(Generic[StateT, ActionT]):
    """Turns side by side: parallel lists of contexts and probes, rewards and advantages."""

    contexts: list[StateT]
    probes: list[ActionT]
    rewards: torch.Tensor  # (B,)
    advantages: torch.Tensor  # (B,)


def group_advantages(rewards: Sequence[float], scale_by_std: bool = False) -> list[float]:
    """Each reward minus the group's mean, optionally divided by the group's (population) std.

    >>> group_advantages([1.0, 0.0, 0.5])
    [0.5, -0.5, 0.0]
    """
    mean = statistics.fmean(rewards)
    advantages = [reward - mean for reward in rewards]
    if scale_by_std:
        std = statistics.pstdev(rewards)
        advantages = [advantage / (std + STD_EPSILON) for advantage in advantages]
    return advantages


class GRPOLoss(NamedTuple):
    """The total loss and its two terms."""

    loss: torch.Tensor  # ()
    policy_loss: torch.Tensor  # ()
    kl: torch.Tensor  # ()


def grpo_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, reference_logprobs: torch.Tensor | None, kl_coef: float
) -> GRPOLoss:
    """The tree-group policy-gradient loss of a batch: (B,) tester log-probs with gradients,
    (B,) advantages, and (B,) baseline log-probs (None when `kl_coef` is 0)."""
    # -A_i log pi_theta(y_i|x), averaged over the batch                            ()
    policy_loss = -(advantages * logprobs).mean()
    if reference_logprobs is None or kl_coef == 0:
        kl = torch.zeros((), device=logprobs.device)
    else:
        # log(pi_ref / pi_theta) per turn                                            (B,)
        log_r = reference_logprobs - logprobs
        # k3 = r - log r - 1 >= 0, an unbiased estimate of KL(pi_theta || pi_ref)   ()
        kl = (torch.exp(log_r) - log_r - 1).mean()
    return GRPOLoss(policy_loss + kl_coef * kl, policy_loss, kl)


class GRPO(Generic[StateT, ActionT]):
    """Policy gradient with each turn's advantage relative to its siblings (no value head).

    >>> # algorithm = GRPO(system, scale_by_std=True)      # in a run file: algorithm = "grpo"
    """

    def __init__(self, system: System[StateT, ActionT], scale_by_std: bool = False, kl_coef: float = 0.0) -> None:
        self.system = system
        self.options = validated(GRPOOptions, "grpo", {"scale_by_std": scale_by_std, "kl_coef": kl_coef})
        self.scale_by_std = self.options.scale_by_std
        self.kl_coef = self.options.kl_coef

    def flatten(self, graphs: Sequence[Graph[StateT, ActionT]]) -> Sequence[GroupExample[StateT, ActionT]]:
        """Every node with a finite reward, with its advantage within its sibling group; episode
        by episode, sibling groups in `Graph.sibling_groups` order."""
        examples: list[GroupExample[StateT, ActionT]] = []
        for graph in graphs:
            for group in graph.sibling_groups():
                scored = finite(group)
                if not scored:
                    continue
                advantages = group_advantages([node.reward for node in scored], self.scale_by_std)
                for node, advantage in zip(scored, advantages, strict=True):
                    examples.append(GroupExample(node.context, node.probe, node.reward, advantage))
        return examples

    def collate_fn(self, examples: Sequence[GroupExample[StateT, ActionT]]) -> GroupBatch[StateT, ActionT]:
        """Turns side by side in parallel lists, rewards and advantages as tensors."""
        return GroupBatch(
            contexts=[e.context for e in examples],
            probes=[e.probe for e in examples],
            rewards=torch.tensor([e.reward for e in examples], dtype=torch.float32),
            advantages=torch.tensor([e.advantage for e in examples], dtype=torch.float32),
        )

    def loss(self, batch: GroupBatch[StateT, ActionT]) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of `batch` and its metrics (``grpo/...``)."""
        logprobs = self.system.tester_logprobs(batch.contexts, batch.probes).float()  # (B,)
        reference = None
        if self.kl_coef > 0:
            with torch.no_grad():
                reference = frozen(self.system.baseline_logprobs(batch.contexts, batch.probes)).to(logprobs.device)
        advantages = batch.advantages.to(logprobs.device)  # (B,)
        loss, policy_loss, kl = grpo_loss(logprobs, advantages, reference, self.kl_coef)
        logs = {
            "grpo/loss": float(loss.detach()),
            "grpo/policy_loss": float(policy_loss.detach()),
            "grpo/kl": float(kl.detach()),
            "grpo/advantage_abs": float(advantages.abs().mean()),
            "grpo/logprob": float(logprobs.detach().mean()),
        }
        return loss, logs

    def parameters(self) -> Iterator[Parameter]:
        """The tester's parameters (this algorithm adds none of its own)."""
        return self.system.parameters()
