"""Identity Preference Optimization (IPO) on rollout trees.

Paper: Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", https://arxiv.org/abs/2310.12036 (the empirical loss is eq. 17; beta is the
paper's tau). Unlike DPO's sigmoid, the squared loss does not push the margin to infinity on
deterministic preferences: it regresses it to 1/(2 beta).

With x a context, y_w the chosen and y_l the rejected probe, pi_theta the tester and pi_ref the
frozen baseline::

    h      = log pi_theta(y_w|x) - log pi_ref(y_w|x) - (log pi_theta(y_l|x) - log pi_ref(y_l|x))
    L_IPO  = (h - 1 / (2 beta))^2

With ``length_normalize`` (the default, as in TRL) the log-probs are per-token means.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from astra_algorithms._common import validated
from astra_algorithms.options import IPOOptions
from astra_algorithms.preference import PreferenceAlgorithm, PreferenceBatch
from astra_core.protocols import Reduction, System
from astra_core.types import ActionT, StateT


class IPOLoss(NamedTuple):
    """The mean loss and the per-pair log-ratio difference h (detached)."""

    loss: torch.Tensor  # ()
    h: torch.Tensor  # (B,)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> IPOLoss:
    """The IPO loss (eq. 17 of the paper) of a batch of pairs, each argument a (B,) tensor."""
    # log pi_theta(y_w|x) / pi_ref(y_w|x) and the same for y_l                      (B,)
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    # h_pi(y_w, y_l, x)                                                              (B,)
    h = chosen_logratios - rejected_logratios
    # (h - 1/(2 tau))^2                                                              (B,)
    losses = (h - 1 / (2 * beta)) ** 2
    return IPOLoss(losses.mean(), h.detach())


class IPO(PreferenceAlgorithm[StateT, ActionT]):
    """IPO over the best-versus-worst sibling pair of every branching node.

    >>> # algorithm = IPO(system, beta=0.1)      # or, in a run file: algorithm = "ipo"
    """

    def __init__(self, system: System[StateT, ActionT], beta: float = 0.1, length_normalize: bool = True) -> None:
        super().__init__(system)
        self.options = validated(IPOOptions, "ipo", {"beta": beta, "length_normalize": length_normalize})
        self.beta = self.options.beta
        self.length_normalize = self.options.length_normalize

    def loss(self, batch: PreferenceBatch[StateT, ActionT]) -> tuple[torch.Tensor, dict[str, float]]:
        """The IPO loss of `batch` and its metrics (``ipo/...``)."""
        reduction: Reduction = "mean" if self.length_normalize else "sum"
        pi_chosen, pi_rejected, ref_chosen, ref_rejected = self.logprobs(batch, reduction)  # each (B,)
        loss, h = ipo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, self.beta)
        chosen_logratios = (pi_chosen - ref_chosen).detach()  # (B,)
        rejected_logratios = (pi_rejected - ref_rejected).detach()  # (B,)
        logs = {
            "ipo/loss": float(loss.detach()),
            "ipo/logratio/chosen": float(chosen_logratios.mean()),
            "ipo/logratio/rejected": float(rejected_logratios.mean()),
            "ipo/accuracy": float((h > 0).float().mean()),
            "ipo/margin": float(h.mean()),
            "ipo/target_margin": 1 / (2 * self.beta),
        }
        return loss, logs
