"""PPO on the toy system: the clip range is used, the value head learns, old log-probs are old."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytest
import torch

from astra_algorithms.ppo import PPO, PPOBatch
from astra_core.errors import ConfigError, OptionsError
from astra_core.protocols import Reduction
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem


def rollout_batch(algorithm: PPO[str, str], sampler: ToySampler) -> PPOBatch[str, str]:
    random.seed(0)
    torch.manual_seed(0)
    return algorithm.collate_fn(algorithm.flatten(sampler.rollouts(1)))


def hand_batch(system: ToySystem, shift: float) -> PPOBatch[str, str]:
    """Two turns with reward 1 and V_old = 0 (so A = 1), whose old log-probs are the current
    ones minus `shift` (so the ratio is e^shift)."""
    contexts, probes = ["hello there", "nice day"], ["bad awful hate", "good ok yes"]
    with torch.no_grad():
        current = system.tester_logprobs(contexts, probes)
        baseline = system.baseline_logprobs(contexts, probes).clone()
    return PPOBatch(
        contexts=contexts,
        probes=probes,
        rewards=torch.ones(2),
        old_logprobs=current - shift,
        baseline_logprobs=baseline,
        old_values=torch.zeros(2),
        features=system.state_features(contexts),
    )


def test_clip_range_changes_the_loss_when_the_ratio_is_outside_it() -> None:
    system = ToySystem()
    batch = hand_batch(system, shift=1.0)  # ratio e ~ 2.72, outside both ranges
    tight = PPO(system, clip_range=0.1, normalize_advantages=False)
    loose = PPO(system, clip_range=0.3, normalize_advantages=False)
    _, tight_logs = tight.loss(batch)
    _, loose_logs = loose.loss(batch)
    # A = 1 > 0 and r > 1 + eps: max(-A r, -A (1 + eps)) = -(1 + eps)
    assert tight_logs["ppo/policy_loss"] == pytest.approx(-1.1)
    assert loose_logs["ppo/policy_loss"] == pytest.approx(-1.3)
    assert tight_logs["ppo/clip_fraction"] == loose_logs["ppo/clip_fraction"] == 1.0


def test_clip_range_does_not_matter_when_the_ratio_is_one() -> None:
    system = ToySystem()
    batch = hand_batch(system, shift=0.0)
    tight, _ = PPO(system, clip_range=0.1, normalize_advantages=False).loss(batch)
    loose, _ = PPO(system, clip_range=0.3, normalize_advantages=False).loss(batch)
    assert tight.item() == pytest.approx(loose.item())


def test_value_head_is_trained_and_returned_by_parameters() -> None:
    system = ToySystem()
    algorithm = PPO(system)
    head = list(algorithm.value_head.parameters())
    assert {id(p) for p in head} <= {id(p) for p in algorithm.parameters()}
    assert len(list(algorithm.parameters())) == len(list(system.parameters())) + len(head)
    before = [p.detach().clone() for p in head]
    batch = hand_batch(system, shift=0.0)
    optimizer = torch.optim.SGD(algorithm.parameters(), lr=0.1)
    loss, logs = algorithm.loss(batch)
    loss.backward()
    optimizer.step()
    assert logs["ppo/value_loss"] == pytest.approx(0.5)  # V = 0 at first, returns 1
    assert any(not torch.equal(b, p) for b, p in zip(before, head, strict=True))


def test_old_logprobs_are_recorded_at_flatten_before_any_update() -> None:
    system = ToySystem()
    sampler = ToySampler(system, ToyScorer(), 2, 2)
    algorithm = PPO(system, kl_coef=0.0)
    batch = rollout_batch(algorithm, sampler)
    with torch.no_grad():
        before_update = system.tester_logprobs(batch.contexts, batch.probes)
    assert batch.old_logprobs.tolist() == pytest.approx(before_update.tolist(), abs=1e-6)
    assert not batch.old_logprobs.requires_grad
    # First pass: nothing changed since flatten, so every ratio is 1.
    loss, logs = algorithm.loss(batch)
    assert logs["ppo/approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert logs["ppo/clip_fraction"] == 0.0
    optimizer = torch.optim.SGD(algorithm.parameters(), lr=1.0)
    loss.backward()
    optimizer.step()
    # Second pass on the same experience: the ratio is measured against the pre-update tester.
    _, later = algorithm.loss(batch)
    with torch.no_grad():
        after_update = system.tester_logprobs(batch.contexts, batch.probes)
    assert later["ppo/approx_kl"] > 1e-6
    assert batch.old_logprobs.tolist() == pytest.approx(before_update.tolist(), abs=1e-6)
    assert not torch.allclose(after_update, before_update)


def test_baseline_logprobs_and_old_values_are_recorded_at_flatten() -> None:
    system = ToySystem()
    algorithm = PPO(system)
    batch = rollout_batch(algorithm, ToySampler(system, ToyScorer(), 2, 2))
    expected = system.baseline_logprobs(batch.contexts, batch.probes)
    assert batch.baseline_logprobs.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert batch.old_values.tolist() == [0.0] * len(batch.contexts)  # the head starts at zero
    assert batch.features.shape == (len(batch.contexts), 32)


def test_ppo_epochs_is_exposed_to_the_trainer() -> None:
    from astra_core.protocols import MultiEpochAlgorithm

    algorithm = PPO(ToySystem(), ppo_epochs=3)
    assert isinstance(algorithm, MultiEpochAlgorithm)
    assert algorithm.epochs_per_experience == 3


def test_nonfinite_rewards_are_not_trained_on() -> None:
    system = ToySystem()
    graph = ToySampler(system, ToyScorer(), 2, 1).rollouts(1)[0]
    graph.children[0].reward = float("nan")
    steps = PPO(system).flatten([graph])
    assert [s.probe for s in steps] == [graph.children[1].probe]


class NoFeatures:
    """A real system (the toy one, delegated to) that offers no state_features."""

    def __init__(self) -> None:
        self.inner = ToySystem()

    def tester_logprobs(self, c: Sequence[str], p: Sequence[str], reduction: Reduction = "sum") -> torch.Tensor:
        return self.inner.tester_logprobs(c, p, reduction)

    def baseline_logprobs(self, c: Sequence[str], p: Sequence[str], reduction: Reduction = "sum") -> torch.Tensor:
        return self.inner.baseline_logprobs(c, p, reduction)

    def target_logprobs(self, c: Sequence[str], p: Sequence[str], reduction: Reduction = "sum") -> torch.Tensor:
        return self.inner.target_logprobs(c, p, reduction)

    def rollout_tester(self, contexts: Sequence[str]) -> list[str]:
        return self.inner.rollout_tester(contexts)

    def rollout_target(self, contexts: Sequence[str]) -> list[str]:
        return self.inner.rollout_target(contexts)

    def advance(self, context: str, probe: str, response: str) -> str:
        return self.inner.advance(context, probe, response)

    def join(self, context: str, probe: str) -> str:
        return self.inner.join(context, probe)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.inner.parameters()


def test_a_system_without_state_features_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match=r"needs a system with state_features.*use 'grpo' or 'dpo'"):
        PPO(NoFeatures())


def test_feature_size_option_sets_the_value_head_width() -> None:
    algorithm = PPO(ToySystem(), feature_size=32)
    assert algorithm.value_head.in_features == 32


def test_bad_options_raise_options_error() -> None:
    with pytest.raises(OptionsError, match="clip_range"):
        PPO(ToySystem(), clip_range=0.0)


class EmptyAwareToySystem(ToySystem):
    """Answers no contexts with a (0, H) tensor, as the transformers system does, and refuses ""."""

    def state_features(self, contexts: Sequence[str]) -> torch.Tensor:
        if not contexts:
            return torch.zeros((0, 32))
        if "" in contexts:
            raise ValueError("empty context")
        return super().state_features(contexts)


class BrokenFeaturesToySystem(ToySystem):
    def state_features(self, contexts: Sequence[str]) -> torch.Tensor:
        raise RuntimeError("no features today")


def test_feature_size_is_read_from_an_answer_to_no_contexts() -> None:
    assert PPO(EmptyAwareToySystem()).value_head.in_features == 32


def test_unreadable_feature_size_asks_for_the_option() -> None:
    with pytest.raises(ConfigError, match="set the ppo option feature_size"):
        PPO(BrokenFeaturesToySystem())
    assert PPO(BrokenFeaturesToySystem(), feature_size=8).value_head.in_features == 8
