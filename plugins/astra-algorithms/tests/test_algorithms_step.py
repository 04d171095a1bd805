"""DPO, IPO and GRPO steps on the toy system: calls, gradients, logs and option checks."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from astra_algorithms.dpo import DPO
from astra_algorithms.grpo import GRPO
from astra_algorithms.ipo import IPO
from astra_algorithms.preference import PreferencePair
from astra_core.errors import OptionsError
from astra_core.graph import Graph, Node
from astra_core.protocols import Reduction
from astra_core.testing.toy import ToySystem


class CountingToySystem(ToySystem):
    """The toy system, recording every log-prob call (reduction and batch size)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Reduction, int]] = []

    def tester_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        self.calls.append(("tester", reduction, len(continuations)))
        return super().tester_logprobs(contexts, continuations, reduction)

    def baseline_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        self.calls.append(("baseline", reduction, len(continuations)))
        return super().baseline_logprobs(contexts, continuations, reduction)


PAIRS = [
    PreferencePair("hello there", "bad awful hate", "good ok yes", 1.0, 0.0),
    PreferencePair("nice day", "stupid bad day", "thanks friend nice", 0.67, 0.0),
    PreferencePair("ok maybe", "hate yes bad", "ok ok ok", 0.67, 0.0),
]


def test_dpo_runs_chosen_and_rejected_through_each_model_in_one_call() -> None:
    system = CountingToySystem()
    algorithm = DPO(system)
    algorithm.loss(algorithm.collate_fn(PAIRS))
    assert system.calls == [("tester", "sum", 6), ("baseline", "sum", 6)]


def test_dpo_first_step_has_loss_log_2_and_zero_implicit_rewards() -> None:
    # The tester starts as a copy of the baseline: h = 0, loss = -log sigma(0) = log 2.
    algorithm = DPO(ToySystem(), beta=0.3)
    loss, logs = algorithm.loss(algorithm.collate_fn(PAIRS))
    assert loss.item() == pytest.approx(0.693147, abs=1e-5)
    assert logs["dpo/loss"] == pytest.approx(loss.item())
    assert logs["dpo/rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert logs["dpo/rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    assert set(logs) == {
        "dpo/loss",
        "dpo/rewards/chosen",
        "dpo/rewards/rejected",
        "dpo/rewards/accuracy",
        "dpo/rewards/margin",
    }


def test_dpo_update_raises_chosen_above_rejected() -> None:
    system = ToySystem()
    algorithm = DPO(system, beta=1.0)
    optimizer = torch.optim.SGD(algorithm.parameters(), lr=0.5)
    batch = algorithm.collate_fn(PAIRS)
    loss, _ = algorithm.loss(batch)
    loss.backward()
    optimizer.step()
    _, logs = algorithm.loss(batch)
    assert logs["dpo/rewards/margin"] > 0
    assert logs["dpo/rewards/accuracy"] == 1.0
    assert all(not p.requires_grad for p in system.baseline.parameters())


def test_ipo_length_normalize_selects_mean_logprobs() -> None:
    system = CountingToySystem()
    IPO(system).loss(IPO(system).collate_fn(PAIRS))
    IPO(system, length_normalize=False).loss(IPO(system).collate_fn(PAIRS))
    assert [reduction for _, reduction, _ in system.calls] == ["mean", "mean", "sum", "sum"]


def test_ipo_first_step_loss_is_target_margin_squared() -> None:
    # h = 0 at the start, so the loss is (0 - 1/(2 beta))^2 = (1/0.5)^2 = 4 for beta = 0.25.
    algorithm = IPO(ToySystem(), beta=0.25)
    loss, logs = algorithm.loss(algorithm.collate_fn(PAIRS))
    assert loss.item() == pytest.approx(4.0, abs=1e-5)
    assert logs["ipo/target_margin"] == 2.0


def test_grpo_skips_the_baseline_without_kl_and_uses_it_with() -> None:
    system = CountingToySystem()
    steps = GRPO(system).flatten([_graph()])
    GRPO(system).loss(GRPO(system).collate_fn(steps))
    assert [who for who, _, _ in system.calls] == ["tester"]
    system.calls.clear()
    loss, logs = GRPO(system, kl_coef=0.5).loss(GRPO(system).collate_fn(steps))
    assert [who for who, _, _ in system.calls] == ["tester", "baseline"]
    assert logs["grpo/kl"] == pytest.approx(0.0, abs=1e-6)  # tester == baseline at the start
    assert loss.requires_grad


def test_grpo_gradient_raises_the_logprob_of_positive_advantages() -> None:
    system = ToySystem()
    algorithm = GRPO(system)
    batch = algorithm.collate_fn(algorithm.flatten([_graph()]))
    before = system.tester_logprobs(batch.contexts, batch.probes).detach()
    optimizer = torch.optim.SGD(algorithm.parameters(), lr=0.5)
    loss, _ = algorithm.loss(batch)
    loss.backward()
    optimizer.step()
    after = system.tester_logprobs(batch.contexts, batch.probes).detach()
    assert after[0] > before[0]  # advantage +0.5
    assert after[1] < before[1]  # advantage -0.5


@pytest.mark.parametrize(
    ("factory", "options"),
    [(DPO, {"beta": 0.0}), (DPO, {"label_smoothing": 0.5}), (IPO, {"beta": -1.0}), (GRPO, {"kl_coef": -0.1})],
)
def test_bad_options_raise_options_error(factory: type, options: dict[str, float]) -> None:
    with pytest.raises(OptionsError, match="bad options for algorithm"):
        factory(ToySystem(), **options)


def _graph() -> Graph[str, str]:
    return Graph(
        "hello there",
        [
            Node("hello there", "bad awful hate", "bad awful hate", 1.0),
            Node("hello there", "good ok yes", "good ok yes", 0.0),
        ],
    )
