"""Proximal Policy Optimization (PPO) with a learned value head and a KL penalty to the baseline.

Paper: Schulman et al., 2017, "Proximal Policy Optimization Algorithms",
https://arxiv.org/abs/1707.06347 (the clipped surrogate is eq. 7, the combined loss eq. 9); the
KL penalty to a frozen reference is the RLHF recipe of Ziegler et al., 2019,
https://arxiv.org/abs/1909.08593; the k3 estimator is Schulman, 2020, "Approximating KL
divergence", http://joschu.net/blog/kl-approx.html.

Each turn is scored on its own, so a turn's return is its reward R and the advantage is
A = R - V_old(s), with V a linear head on the system's `state_features`. With a the probe, s its
context, pi_old the tester when the experience was collected and pi_ref the frozen baseline::

    r      = exp(log pi_theta(a|s) - log pi_old(a|s))
    L_CLIP = mean( max(-A r, -A clip(r, 1 - eps, 1 + eps)) )
    L_VF   = mean( 1/2 (V_theta(s) - R)^2 )
    k3     = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1        (k1: log pi_theta - log pi_ref)
    L      = L_CLIP + vf_coef L_VF + kl_coef mean(KL)

`flatten` runs right after the experience is collected, before any update on it, so that is
where log pi_old, log pi_ref and V_old are recorded (without gradients). The trainer then makes
`epochs_per_experience` passes over the experience.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, cast

import torch
from torch import nn

from astra_algorithms._common import finite, frozen, validated
from astra_algorithms.options import PPOOptions
from astra_core.errors import ConfigError
from astra_core.graph import Graph
from astra_core.protocols import FeatureSystem, System
from astra_core.types import ActionT, StateT


@dataclass(frozen=True)
class PPOExample(Generic[StateT, ActionT]):
    """One turn and what was recorded about it at collection time."""

    context: StateT
    probe: ActionT
    reward: float
    old_logprob: float  # log pi_old(a|s), summed over the probe's tokens
    baseline_logprob: float  # log pi_ref(a|s)
    old_value: float  # V_old(s)
    features: torch.Tensor  # (H,) state features of the context, detached


@dataclass(frozen=True)
class PPOBatch(Generic[StateT, ActionT]):
    """Turns side by side: parallel lists of contexts and probes, the rest as tensors."""

    contexts: list[StateT]
    probes: list[ActionT]
    rewards: torch.Tensor  # (B,)
    old_logprobs: torch.Tensor  # (B,)
    baseline_logprobs: torch.Tensor  # (B,)
    old_values: torch.Tensor  # (B,)
    features: torch.Tensor  # (B, H)


class PPOLoss(NamedTuple):
    """The total loss, its terms, and the diagnostics of the update (all but `loss` detached)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    kl: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    reference_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    *,
    clip_range: float,
    vf_coef: float,
    kl_coef: float,
    kl_estimator: Literal["k3", "k1"] = "k3",
) -> PPOLoss:
    """The PPO loss of a batch; every argument is a (B,) tensor: new tester log-probs (with
    gradients), old and reference log-probs, advantages, value predictions (with gradients) and
    returns."""
    # log r = log pi_theta(a|s) - log pi_old(a|s)                                  (B,)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    # the clipped surrogate, as a loss to minimise                                 (B,)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    policy_loss = torch.max(pg_loss1, pg_loss2).mean()
    # value regression to the observed return                                      ()
    value_loss = 0.5 * ((values - returns) ** 2).mean()
    # KL(pi_theta || pi_ref) per turn, from log(pi_ref / pi_theta)                   (B,)
    log_ref_ratio = reference_logprobs - logprobs
    kl_per_turn = torch.exp(log_ref_ratio) - log_ref_ratio - 1 if kl_estimator == "k3" else -log_ref_ratio
    kl = kl_per_turn.mean()
    loss = policy_loss + vf_coef * value_loss + kl_coef * kl
    with torch.no_grad():
        # how far this update has moved from pi_old (k3 of pi_old vs pi_theta)       ()
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip_range).float().mean()
    return PPOLoss(loss, policy_loss.detach(), value_loss.detach(), kl.detach(), approx_kl, clip_fraction)


def _feature_size(system: Any) -> tuple[int, torch.device]:
    """The width and device of `system.state_features`: its `feature_size` attribute, else the
    shape of a (0, H) answer to no contexts, else of a (1, H) answer to an empty context."""
    size = getattr(system, "feature_size", None)
    if isinstance(size, int) and size > 0:
        return size, torch.device("cpu")
    failures = []
    for contexts in ([], [""]):  # "" is a valid state for text systems and the toy system
        try:
            probe = system.state_features(contexts)
        except Exception as error:
            failures.append(f"{type(error).__name__}: {error}")
            continue
        if isinstance(probe, torch.Tensor) and probe.dim() == 2 and probe.shape[0] == len(contexts):
            return int(probe.shape[1]), probe.device
        failures.append(f"state_features({contexts!r}) returned {getattr(probe, 'shape', type(probe).__name__)}")
    raise ConfigError(
        f"ppo cannot tell how wide {type(system).__name__}.state_features is ({'; '.join(failures)}); "
        f"set the ppo option feature_size"
    )


class PPO(Generic[StateT, ActionT]):
    """PPO on every turn of the rollout trees, with a linear value head on the state features.

    The system must offer ``state_features(contexts)`` (`astra_core.protocols.FeatureSystem`).

    >>> # algorithm = PPO(system, clip_range=0.2, ppo_epochs=4)      # run file: algorithm = "ppo"
    """

    def __init__(
        self,
        system: System[StateT, ActionT],
        clip_range: float = 0.2,
        ppo_epochs: int = 4,
        vf_coef: float = 0.5,
        kl_coef: float = 0.1,
        kl_estimator: Literal["k3", "k1"] = "k3",
        normalize_advantages: bool = True,
        feature_size: int | None = None,
    ) -> None:
        self.options = validated(
            PPOOptions,
            "ppo",
            {
                "clip_range": clip_range,
                "ppo_epochs": ppo_epochs,
                "vf_coef": vf_coef,
                "kl_coef": kl_coef,
                "kl_estimator": kl_estimator,
                "normalize_advantages": normalize_advantages,
                "feature_size": feature_size,
            },
        )
        if not isinstance(system, FeatureSystem):
            raise ConfigError(
                f"algorithm 'ppo' needs a system with state_features(contexts) for its value head "
                f"(astra_core.protocols.FeatureSystem); {type(system).__name__} has none: "
                f"use 'grpo' or 'dpo', or a system that provides state features"
            )
        self.system = system
        self.features: FeatureSystem[StateT] = cast(FeatureSystem[StateT], system)
        self.clip_range = self.options.clip_range
        self.epochs_per_experience = self.options.ppo_epochs
        self.vf_coef = self.options.vf_coef
        self.kl_coef = self.options.kl_coef
        self.kl_estimator: Literal["k3", "k1"] = self.options.kl_estimator
        self.normalize_advantages = self.options.normalize_advantages
        if self.options.feature_size is not None:
            size, device = self.options.feature_size, torch.device("cpu")
        else:
            size, device = _feature_size(system)
        # Zero-initialised (V = 0 at first): deterministic, and it draws nothing from the run's RNG.
        self.value_head = nn.Linear(size, 1, device=device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def _values(self, features: torch.Tensor) -> torch.Tensor:
        head_device = self.value_head.weight.device
        values: torch.Tensor = self.value_head(features.to(head_device)).squeeze(-1)  # (B,)
        return values

    def flatten(self, graphs: Sequence[Graph[StateT, ActionT]]) -> Sequence[PPOExample[StateT, ActionT]]:
        """Every turn with a finite reward (episode by episode, breadth first), with pi_old, pi_ref
        and V_old recorded now, before any update on this experience: one batched call each."""
        nodes = finite([node for graph in graphs for node in graph.nodes()])
        if not nodes:
            return []
        contexts = [node.context for node in nodes]
        probes = [node.probe for node in nodes]
        with torch.no_grad():
            old = frozen(self.system.tester_logprobs(contexts, probes))  # (N,)
            reference = frozen(self.system.baseline_logprobs(contexts, probes))  # (N,)
            features = frozen(self.features.state_features(contexts)).to(self.value_head.weight.device)  # (N, H)
            old_values = self._values(features)  # (N,)
        return [
            PPOExample(node.context, node.probe, node.reward, o, r, v, f)
            for node, o, r, v, f in zip(
                nodes, old.tolist(), reference.tolist(), old_values.tolist(), features, strict=True
            )
        ]

    def collate_fn(self, examples: Sequence[PPOExample[StateT, ActionT]]) -> PPOBatch[StateT, ActionT]:
        """Turns side by side; the recorded numbers as (B,) tensors, features as (B, H)."""
        return PPOBatch(
            contexts=[e.context for e in examples],
            probes=[e.probe for e in examples],
            rewards=torch.tensor([e.reward for e in examples], dtype=torch.float32),
            old_logprobs=torch.tensor([e.old_logprob for e in examples], dtype=torch.float32),
            baseline_logprobs=torch.tensor([e.baseline_logprob for e in examples], dtype=torch.float32),
            old_values=torch.tensor([e.old_value for e in examples], dtype=torch.float32),
            features=torch.stack([e.features for e in examples]),
        )

    def loss(self, batch: PPOBatch[StateT, ActionT]) -> tuple[torch.Tensor, dict[str, float]]:
        """The PPO loss of `batch` and its metrics (``ppo/...``)."""
        # Log-probs are sequence-level sums (one number per probe), so a batch of sequences needs
        # no padding or mask here: the system handles token lengths inside tester_logprobs.
        logprobs = self.system.tester_logprobs(batch.contexts, batch.probes).float()  # (B,)
        device = logprobs.device
        returns = batch.rewards.to(device)  # (B,)
        # A = R - V_old(s), fixed for the whole experience                             (B,)
        advantages = returns - batch.old_values.to(device)
        if self.normalize_advantages and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        values = self._values(batch.features).to(device)  # (B,) with gradients into the head
        result = ppo_loss(
            logprobs,
            batch.old_logprobs.to(device),
            batch.baseline_logprobs.to(device),
            advantages,
            values,
            returns,
            clip_range=self.clip_range,
            vf_coef=self.vf_coef,
            kl_coef=self.kl_coef,
            kl_estimator=self.kl_estimator,
        )
        logs = {
            "ppo/loss": float(result.loss.detach()),
            "ppo/policy_loss": float(result.policy_loss),
            "ppo/value_loss": float(result.value_loss),
            "ppo/kl": float(result.kl),
            "ppo/approx_kl": float(result.approx_kl),
            "ppo/clip_fraction": float(result.clip_fraction),
            "ppo/value_mean": float(values.detach().mean()),
        }
        return result.loss, logs

    def parameters(self) -> Iterator[nn.Parameter]:
        """The tester's parameters, then the value head's."""
        yield from self.system.parameters()
        yield from self.value_head.parameters()
