"""Direct Preference Optimization (DPO) on rollout trees.

Paper: Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", https://arxiv.org/abs/2305.18290 (the loss is eq. 7). Label smoothing is
conservative DPO: Mitchell, 2023, "A note on DPO with noisy preferences and relationship to IPO",
https://ericmitchell.ai/cdpo.pdf.

With x a context, y_w the chosen and y_l the rejected probe, pi_theta the tester and pi_ref the
frozen baseline::

    h      = log pi_theta(y_w|x) - log pi_ref(y_w|x) - (log pi_theta(y_l|x) - log pi_ref(y_l|x))
    L_DPO  = -(1 - eps) * log sigma(beta * h) - eps * log sigma(-beta * h)

Log-probs are summed over each probe's tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from astra_algorithms._common import validated
from astra_algorithms.options import DPOOptions
from astra_algorithms.preference import (  # noqa: F401  (re-exported for callers of the pair path)
    PairLogprobSystem,
    PreferenceAlgorithm,
    PreferenceBatch,
    pair_logprobs,
)
from astra_core.protocols import System
from astra_core.types import ActionT, StateT


class DPOLoss(NamedTuple):
    """The mean loss and, per pair, the implicit rewards beta * log(pi_theta / pi_ref) (detached)."""

    loss: torch.Tensor  # ()
    chosen_rewards: torch.Tensor  # (B,)
    rejected_rewards: torch.Tensor  # (B,)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> DPOLoss:
    """The DPO loss (eq. 7 of the paper) of a batch of pairs, each argument a (B,) tensor of
    summed log-probs; `label_smoothing` > 0 gives conservative DPO."""
    # log pi_theta(y_w|x) / pi_ref(y_w|x) and the same for y_l                      (B,)
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    # h: how much more the tester moved towards y_w than towards y_l                (B,)
    h = chosen_logratios - rejected_logratios
    # -log sigma(beta h); with probability eps the label is flipped                 (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    # the implicit rewards r(x, y) = beta log pi_theta(y|x) / pi_ref(y|x)          (B,)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return DPOLoss(losses.mean(), chosen_rewards, rejected_rewards)


class DPO(PreferenceAlgorithm[StateT, ActionT]):
    """DPO over the best-versus-worst sibling pair of every branching node.

    >>> # algorithm = DPO(system, beta=0.1)      # or, in a run file: algorithm = "dpo"
    """

    def __init__(self, system: System[StateT, ActionT], beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        super().__init__(system)
        self.options = validated(DPOOptions, "dpo", {"beta": beta, "label_smoothing": label_smoothing})
        self.beta = self.options.beta
        self.label_smoothing = self.options.label_smoothing

    def loss(self, batch: PreferenceBatch[StateT, ActionT]) -> tuple[torch.Tensor, dict[str, float]]:
        """The DPO loss of `batch` and its metrics (``dpo/...``)."""
        pi_chosen, pi_rejected, ref_chosen, ref_rejected = self.logprobs(batch, "sum")  # each (B,)
        loss, chosen_rewards, rejected_rewards = dpo_loss(
            pi_chosen, pi_rejected, ref_chosen, ref_rejected, self.beta, self.label_smoothing
        )
        margins = chosen_rewards - rejected_rewards  # (B,)
        logs = {
            "dpo/loss": float(loss.detach()),
            "dpo/rewards/chosen": float(chosen_rewards.mean()),
            "dpo/rewards/rejected": float(rejected_rewards.mean()),
            "dpo/rewards/accuracy": float((margins > 0).float().mean()),
            "dpo/rewards/margin": float(margins.mean()),
        }
        return loss, logs
