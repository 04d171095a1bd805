"""Each loss function against numbers worked out by hand with `math` (not with the same code)."""

from __future__ import annotations

import math

import pytest
import torch

from astra_algorithms.dpo import dpo_loss
from astra_algorithms.grpo import grpo_loss
from astra_algorithms.ipo import ipo_loss
from astra_algorithms.ppo import ppo_loss


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


# Two pairs. Pair 1: chosen log-ratio +0.5, rejected -0.5, so h = 1.
# Pair 2: chosen log-ratio -1, rejected +1, so h = -2.
PI_CHOSEN, PI_REJECTED = t(-1.0, -3.0), t(-2.0, -1.0)
REF_CHOSEN, REF_REJECTED = t(-1.5, -2.0), t(-1.5, -2.0)


def test_dpo_loss_is_mean_negative_log_sigmoid_of_beta_times_h() -> None:
    beta = 0.5
    # -log sigma(z) = log(1 + e^-z); z = beta h = 0.5 and -1.0
    expected = (softplus(-0.5) + softplus(1.0)) / 2
    loss, chosen, rejected = dpo_loss(PI_CHOSEN, PI_REJECTED, REF_CHOSEN, REF_REJECTED, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert chosen.tolist() == pytest.approx([0.25, -0.5])  # beta * chosen log-ratio
    assert rejected.tolist() == pytest.approx([-0.25, 0.5])


def test_dpo_label_smoothing_mixes_in_the_flipped_label() -> None:
    beta, eps = 0.5, 0.2
    pair1 = (1 - eps) * softplus(-0.5) + eps * softplus(0.5)
    pair2 = (1 - eps) * softplus(1.0) + eps * softplus(-1.0)
    loss = dpo_loss(PI_CHOSEN, PI_REJECTED, REF_CHOSEN, REF_REJECTED, beta, label_smoothing=eps).loss
    assert loss.item() == pytest.approx((pair1 + pair2) / 2, rel=1e-12)


def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected() -> None:
    chosen, rejected = t(-1.0).requires_grad_(), t(-1.0).requires_grad_()
    dpo_loss(chosen, rejected, t(-1.0), t(-1.0), beta=0.1).loss.backward()
    assert chosen.grad is not None and rejected.grad is not None
    # d/dh of -log sigma(beta h) at h = 0 is -beta/2
    assert chosen.grad.item() == pytest.approx(-0.05)
    assert rejected.grad.item() == pytest.approx(0.05)


def test_ipo_loss_regresses_h_to_one_over_two_beta() -> None:
    beta = 0.5  # target margin 1/(2 * 0.5) = 1
    # pair 1: h = 1 -> (1 - 1)^2 = 0; pair 2: h = -2 -> (-2 - 1)^2 = 9
    loss, h = ipo_loss(PI_CHOSEN, PI_REJECTED, REF_CHOSEN, REF_REJECTED, beta)
    assert loss.item() == pytest.approx(4.5)
    assert h.tolist() == pytest.approx([1.0, -2.0])


def test_ipo_loss_with_small_beta_wants_a_large_margin() -> None:
    # beta = 0.1: target 5; pair 1 has h = 1 -> 16; pair 2 h = -2 -> 49
    loss = ipo_loss(PI_CHOSEN, PI_REJECTED, REF_CHOSEN, REF_REJECTED, 0.1).loss
    assert loss.item() == pytest.approx((16 + 49) / 2)


# PPO: old log-probs 0, so the ratios are exp(new) = 1.5, 0.5, 1.1.
NEW = t(math.log(1.5), math.log(0.5), math.log(1.1))
OLD = t(0.0, 0.0, 0.0)
REF = t(0.0, 0.0, 0.0)
ADVANTAGES = t(1.0, 1.0, -1.0)
VALUES, RETURNS = t(0.5, 0.0, 1.0), t(1.0, 0.0, 0.0)


def test_ppo_loss_by_hand() -> None:
    out = ppo_loss(NEW, OLD, REF, ADVANTAGES, VALUES, RETURNS, clip_range=0.2, vf_coef=0.5, kl_coef=0.1)
    # max(-A r, -A clip(r, 0.8, 1.2)): (-1.5, -1.2) -> -1.2; (-0.5, -0.8) -> -0.5; (1.1, 1.1) -> 1.1
    policy = (-1.2 - 0.5 + 1.1) / 3
    value = 0.5 * (0.25 + 0.0 + 1.0) / 3
    # k3 with r = pi_ref / pi = 1 / ratio: r - log r - 1
    kl = sum(1 / q - math.log(1 / q) - 1 for q in (1.5, 0.5, 1.1)) / 3
    approx_kl = sum(q - 1 - math.log(q) for q in (1.5, 0.5, 1.1)) / 3
    assert out.policy_loss.item() == pytest.approx(policy)
    assert out.value_loss.item() == pytest.approx(value)
    assert out.kl.item() == pytest.approx(kl)
    assert out.loss.item() == pytest.approx(policy + 0.5 * value + 0.1 * kl)
    assert out.approx_kl.item() == pytest.approx(approx_kl)
    assert out.clip_fraction.item() == pytest.approx(2 / 3)  # 1.5 and 0.5 are outside [0.8, 1.2]


def test_ppo_loss_uses_the_clip_range() -> None:
    wide = ppo_loss(NEW, OLD, REF, ADVANTAGES, VALUES, RETURNS, clip_range=0.6, vf_coef=0.0, kl_coef=0.0)
    # clip(r, 0.4, 1.6) leaves 1.5 and 0.5 alone: (-1.5 - 0.5 + 1.1) / 3
    assert wide.policy_loss.item() == pytest.approx(-0.3)
    assert wide.clip_fraction.item() == 0.0


def test_ppo_k1_estimator_is_the_log_ratio() -> None:
    out = ppo_loss(NEW, OLD, REF, ADVANTAGES, VALUES, RETURNS, clip_range=0.2, vf_coef=0, kl_coef=1, kl_estimator="k1")
    assert out.kl.item() == pytest.approx((math.log(1.5) + math.log(0.5) + math.log(1.1)) / 3)


def test_grpo_loss_is_minus_mean_advantage_times_logprob() -> None:
    logprobs, advantages = t(-1.0, -2.0, -0.5), t(0.5, -0.5, 0.0)
    out = grpo_loss(logprobs, advantages, None, kl_coef=0.0)
    # -(0.5 * -1 + -0.5 * -2 + 0) / 3 = -(-0.5 + 1) / 3
    assert out.loss.item() == pytest.approx(-0.5 / 3)
    assert out.kl.item() == 0.0


def test_grpo_loss_adds_k3_kl_to_the_baseline() -> None:
    logprobs, advantages, reference = t(-1.0, -2.0), t(1.0, -1.0), t(-1.5, -1.0)
    out = grpo_loss(logprobs, advantages, reference, kl_coef=0.2)
    policy = -(1.0 * -1.0 + -1.0 * -2.0) / 2
    # log r = ref - logprob = -0.5 and +1.0
    kl = ((math.exp(-0.5) + 0.5 - 1) + (math.exp(1.0) - 1.0 - 1)) / 2
    assert out.policy_loss.item() == pytest.approx(policy)
    assert out.kl.item() == pytest.approx(kl)
    assert out.loss.item() == pytest.approx(policy + 0.2 * kl)
