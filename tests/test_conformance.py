"""The conformance kit passes the toy components and names the contract each broken variant breaks."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch

from astra_core import Graph, Node, Registrar, hookimpl, kinds, testing
from astra_core.plugins import discover
from astra_core.protocols import Reduction
from astra_core.testing import (
    ConformanceError,
    check_algorithm,
    check_optimizer,
    check_sampler,
    check_scorer,
    check_system,
)
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem

CONTEXTS = ["hello there", "nice day", "ok maybe"]
PROBES = ["nice day ok", "bad awful hate", "thanks friend yes"]


def broken(contract: str, *fragments: str) -> Any:
    """Expect a ConformanceError for `contract` whose message contains every fragment."""

    class Expect:
        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> bool:
            assert isinstance(error, ConformanceError), f"expected ConformanceError({contract}), got {error!r}"
            assert error.contract == contract, str(error)
            message = str(error)
            assert f"breaks the {contract} contract" in message
            for fragment in fragments:
                assert fragment in message, message
            return True

    return Expect()


@pytest.fixture
def system() -> ToySystem:
    return ToySystem(seed=0)


# --- the kit itself ---------------------------------------------------------------------------


def test_conformance_error_is_an_assertion_error_naming_component_and_contract() -> None:
    error = ConformanceError("system Toy", "shape", "bad")
    assert isinstance(error, AssertionError)
    assert str(error) == "system Toy breaks the shape contract: bad"


def test_importing_the_kit_does_not_import_torch() -> None:
    code = "import sys, astra_core.testing; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_checks_give_back_the_callers_random_state(system: ToySystem) -> None:
    random.seed(7)
    torch.manual_seed(7)
    check_sampler(ToySampler(system, ToyScorer()))
    after = (random.random(), float(torch.rand(())))
    random.seed(7)
    torch.manual_seed(7)
    assert (random.random(), float(torch.rand(()))) == after


# --- systems ----------------------------------------------------------------------------------


def test_toy_system_passes(system: ToySystem) -> None:
    check_system(system, CONTEXTS, PROBES)


class TwoDimensionalLogprobs(ToySystem):
    def tester_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> Any:
        return super().tester_logprobs(contexts, continuations, reduction).unsqueeze(-1)


class IntegerBaseline(ToySystem):
    def baseline_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> Any:
        return torch.zeros(len(contexts), dtype=torch.long)


class DetachedTester(ToySystem):
    def tester_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> Any:
        return super().tester_logprobs(contexts, continuations, reduction).detach()


class CutTester(ToySystem):
    """Requires grad, but the graph is cut: no path back to the tester's weights."""

    def tester_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> Any:
        return super().tester_logprobs(contexts, continuations, reduction).detach().requires_grad_()


class TrainableBaseline(ToySystem):
    def baseline_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> Any:
        return self.tester_logprobs(contexts, continuations, reduction)


class PositiveTarget(ToySystem):
    def target_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> Any:
        return -super().target_logprobs(contexts, continuations, reduction)


class NaNTarget(ToySystem):
    def target_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> Any:
        return torch.full((len(contexts),), float("nan"))


class LenientLengths(ToySystem):
    """Scores the continuations and silently ignores how many contexts there were."""

    def tester_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> Any:
        return self._logprobs(self.tester, continuations, reduction)


class DropsARollout(ToySystem):
    def rollout_tester(self, contexts: Sequence[str]) -> list[str]:
        return super().rollout_tester(contexts)[:-1]


class PrivateGenerator(ToySystem):
    """Draws from its own state (a call counter) instead of the global RNGs the Trainer seeds."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def rollout_tester(self, contexts: Sequence[str]) -> list[str]:
        self.calls += 1
        words = ["hello", "bad", "nice", "ok"]
        return [" ".join(words[(self.calls + i + j) % 4] for j in range(3)) for i in range(len(contexts))]


class Without:
    """Everything of `inner` but `member`."""

    def __init__(self, inner: object, member: str) -> None:
        self.inner, self.member = inner, member

    def __getattr__(self, name: str) -> Any:
        if name == self.member:
            raise AttributeError(name)
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    ("variant", "contract", "fragment"),
    [
        (TwoDimensionalLogprobs, "shape", "shape (3, 1)"),
        (IntegerBaseline, "dtype", "torch.int64"),
        (DetachedTester, "gradient", "does not require grad"),
        (CutTester, "gradient", "does not backpropagate"),
        (TrainableBaseline, "gradient", "baseline_logprobs(reduction='sum') requires grad"),
        (PositiveTarget, "range", "<= 0"),
        (NaNTarget, "range", "non-finite"),
        (LenientLengths, "length", "3 contexts with 2 continuations"),
        (DropsARollout, "length", "rollout_tester returned 2 outputs for 3 contexts"),
        (PrivateGenerator, "determinism", "under the same seed"),
    ],
)
def test_broken_system_fails_with_its_contract(
    variant: Callable[[], Any], contract: str, fragment: str
) -> None:
    with broken(contract, f"system {variant.__name__}", fragment):
        check_system(variant(), CONTEXTS, PROBES)


def test_system_without_a_method_fails_the_protocol(system: ToySystem) -> None:
    with broken("protocol", "'join'"):
        check_system(Without(system, "join"), CONTEXTS, PROBES)


def test_system_check_rejects_unequal_inputs(system: ToySystem) -> None:
    with pytest.raises(ValueError, match="equally long"):
        check_system(system, CONTEXTS, PROBES[:2])


# --- scorers ----------------------------------------------------------------------------------


def test_toy_scorer_passes() -> None:
    assert check_scorer(ToyScorer(), ["bad day", "hello there", ""]) == [0.5, 0.0, 0.0]


class Above1(ToyScorer):
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [2.0 * s + 1.0 for s in super().score_texts(texts)]


class OneShort(ToyScorer):
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return super().score_texts(texts)[:-1] if len(texts) > 1 else super().score_texts(texts)


class Noisy(ToyScorer):
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [random.random() for _ in texts]


class BatchDependent(ToyScorer):
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [1.0 / len(texts) for _ in texts]


class Strings(ToyScorer):
    def score_texts(self, texts: Sequence[str]) -> list[Any]:
        return ["0.5" for _ in texts]


class Infinite(ToyScorer):
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [float("inf") for _ in texts]


@pytest.mark.parametrize(
    ("variant", "contract", "fragment"),
    [
        (Above1, "range", "in [0, 1]"),
        (Infinite, "range", "finite"),
        (OneShort, "length", "returned 1 scores for 2 items"),
        (Noisy, "determinism", "twice"),
        (BatchDependent, "determinism", "in a batch"),
        (Strings, "dtype", "str"),
    ],
)
def test_broken_scorer_fails_with_its_contract(variant: type[ToyScorer], contract: str, fragment: str) -> None:
    with broken(contract, f"scorer {variant.__name__}", fragment):
        check_scorer(variant(), ["bad day", "hello there"])


# --- samplers ---------------------------------------------------------------------------------


def test_toy_sampler_passes(system: ToySystem) -> None:
    graphs = check_sampler(ToySampler(system, ToyScorer(), tree_width=2, tree_depth=2), episodes=3)
    assert len(graphs) == 3
    assert all(len(list(g.nodes())) == 6 for g in graphs)


class ClockSeeded(ToySampler):
    """Draws openers from a private generator that nobody seeds."""

    counter = 0

    def rollouts(self, count: int) -> list[Graph[str, str]]:
        graphs = super().rollouts(count)
        for graph in graphs:
            ClockSeeded.counter += 1
            graph.context = f"opener {ClockSeeded.counter}"
            for child in graph.children:
                child.context = graph.context
        return graphs


class ReturnsTuples(ToySampler):
    def rollouts(self, count: int) -> Any:
        return [("hello", []) for _ in range(count)]


class EmptyEpisodes(ToySampler):
    def rollouts(self, count: int) -> list[Graph[str, str]]:
        return [Graph("hello there") for _ in range(count)]


class InfiniteReward(ToySampler):
    def rollouts(self, count: int) -> list[Graph[str, str]]:
        graphs = super().rollouts(count)
        graphs[0].children[0].reward = float("inf")
        return graphs


class TreeForEvaluation(ToySampler):
    def eval_rollouts(self, prompts: Sequence[str]) -> list[Graph[str, str]]:
        graphs = super().rollouts(len(prompts))
        for graph, prompt in zip(graphs, prompts, strict=True):
            graph.context = prompt
            for child in graph.children:
                child.context = prompt
        return graphs


class ShortBatch(ToySampler):
    def rollouts(self, count: int) -> list[Graph[str, str]]:
        graphs = super().rollouts(count)
        return graphs[1:] if count > 1 else graphs  # the batch comes up short


class WrongFirstContext(ToySampler):
    def rollouts(self, count: int) -> list[Graph[str, str]]:
        graphs = super().rollouts(count)
        graphs[0].children[0].context = "somewhere else"
        return graphs


@pytest.mark.parametrize(
    ("variant", "contract", "fragment"),
    [
        (ClockSeeded, "determinism", "same seed"),
        (ReturnsTuples, "graph", "returned tuple; expected a Graph"),
        (EmptyEpisodes, "graph", "no turns"),
        (InfiniteReward, "range", "reward is inf"),
        (TreeForEvaluation, "graph", "width-1 chain"),
        (ShortBatch, "length", "rollouts(2) returned 1"),
        (WrongFirstContext, "graph", "'somewhere else' is not the root's"),
    ],
)
def test_broken_sampler_fails_with_its_contract(
    system: ToySystem, variant: type[ToySampler], contract: str, fragment: str
) -> None:
    with broken(contract, f"sampler {variant.__name__}", fragment):
        check_sampler(variant(system, ToyScorer()), episodes=2)


# --- algorithms -------------------------------------------------------------------------------


class Imitation:
    """A tiny real algorithm: raise the tester's log-prob of every probe, weighted by its reward."""

    def __init__(self, system: ToySystem) -> None:
        self.system = system

    def flatten(self, graphs: Sequence[Graph[str, str]]) -> Sequence[Node[str, str]]:
        return [node for graph in graphs for node in graph.nodes()]

    def collate_fn(self, examples: Sequence[Node[str, str]]) -> list[Node[str, str]]:
        return list(examples)

    def loss(self, batch: list[Node[str, str]]) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs = self.system.tester_logprobs([n.context for n in batch], [n.probe for n in batch])
        weights = torch.tensor([n.reward for n in batch])
        loss = -(weights * logprobs).mean()
        return loss, {"loss": float(loss.detach()), "batch": float(len(batch))}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.system.parameters()


def test_a_real_algorithm_passes(system: ToySystem) -> None:
    logs = check_algorithm(Imitation(system), ToySampler(system, ToyScorer()))
    assert logs["batch"] == 1.0  # the last batch checked is a batch of one


class GeneratorFlatten(Imitation):
    def flatten(self, graphs: Sequence[Graph[str, str]]) -> Any:
        return (n for graph in graphs for n in graph.nodes())


class NothingToLearn(Imitation):
    def flatten(self, graphs: Sequence[Graph[str, str]]) -> Sequence[Node[str, str]]:
        return []


class CollateNeedsTwo(Imitation):
    def collate_fn(self, examples: Sequence[Node[str, str]]) -> list[Node[str, str]]:
        if len(examples) < 2:
            raise ValueError("need a pair")
        return list(examples)


class PerExampleLoss(Imitation):
    def loss(self, batch: list[Node[str, str]]) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs = self.system.tester_logprobs([n.context for n in batch], [n.probe for n in batch])
        return -logprobs, {}


class DetachedLoss(Imitation):
    def loss(self, batch: list[Node[str, str]]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super().loss(batch)
        return loss.detach().requires_grad_(), logs


class NaNLoss(Imitation):
    def loss(self, batch: list[Node[str, str]]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super().loss(batch)
        return loss * float("nan"), logs


class TensorLogs(Imitation):
    def loss(self, batch: list[Node[str, str]]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, _ = super().loss(batch)
        return loss, {"loss": loss}  # type: ignore[dict-item]


class LossOnly(Imitation):
    def loss(self, batch: list[Node[str, str]]) -> Any:
        return super().loss(batch)[0]


class NoParameters(Imitation):
    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())


@pytest.mark.parametrize(
    ("variant", "contract", "fragment"),
    [
        (GeneratorFlatten, "flatten", "returned generator"),
        (NothingToLearn, "flatten", "no training examples from 4 episodes"),
        (CollateNeedsTwo, "collate", "batch of 1: ValueError: need a pair"),
        (PerExampleLoss, "shape", "expected a scalar"),
        (DetachedLoss, "gradient", "no gradient path"),
        (NaNLoss, "range", "nan"),
        (TensorLogs, "logs", "'loss': Tensor"),
        (LossOnly, "loss", "expected (loss, logs)"),
        (NoParameters, "gradient", "no trainable parameters"),
    ],
)
def test_broken_algorithm_fails_with_its_contract(
    system: ToySystem, variant: type[Imitation], contract: str, fragment: str
) -> None:
    with broken(contract, f"algorithm {variant.__name__}", fragment):
        check_algorithm(variant(system), ToySampler(system, ToyScorer()))


# --- optimizers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "adagrad"])
def test_builtin_optimizers_pass_by_name(name: str) -> None:
    check_optimizer(name, registries=discover().registries)


class Ascent(torch.optim.SGD):
    """SGD with the sign flipped: climbs the quadratic."""

    def __init__(self, params: Any, lr: float = 0.01) -> None:
        super().__init__(params, lr=lr, maximize=True)


class SetState(torch.optim.SGD):
    """Keeps a Python set in its state, which a JSON checkpoint cannot hold."""

    def step(self, closure: Any = None) -> Any:
        result = super().step(closure)
        for parameter in self.param_groups[0]["params"]:
            self.state[parameter]["seen"] = {1, 2}
        return result


class _BrokenOptimizers:
    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        registrar.optimizer("ascent", Ascent)
        registrar.optimizer("not-an-optimizer", lambda params, lr: object())
        registrar.optimizer("set-state", SetState)


def test_optimizer_that_climbs_fails_by_name() -> None:
    registries = discover(extra=[("broken-optimizers", _BrokenOptimizers())]).registries
    with broken("optimizer", "optimizer 'ascent'", "step 1", "must decrease"):
        check_optimizer("ascent", registries=registries)


def test_factory_that_is_not_an_optimizer_fails() -> None:
    registries = discover(extra=[("broken-optimizers", _BrokenOptimizers())]).registries
    with broken("optimizer", "built object"):
        check_optimizer("not-an-optimizer", registries=registries)


def test_optimizer_state_that_cannot_be_checkpointed_fails() -> None:
    with broken("optimizer", "optimizer 'SetState'", "round-trip"):
        check_optimizer(SetState)


def test_optimizer_options_reach_the_factory() -> None:
    check_optimizer(torch.optim.SGD, {"momentum": 0.9})
    with broken("optimizer", "must decrease"):
        check_optimizer(torch.optim.SGD, {"maximize": True})


# --- the kit's method lists are the protocols' ----------------------------------------------


def _checks(system: ToySystem) -> dict[str, tuple[object, Callable[[Any], object]]]:
    """Each kind with a conformance check: a passing component, and the check run on a stand-in."""
    sampler = ToySampler(system, ToyScorer(), tree_width=2, tree_depth=2)
    return {
        "scorer": (ToyScorer(), lambda c: check_scorer(c, ["bad day"])),
        "system": (system, lambda c: check_system(c, CONTEXTS, PROBES)),
        "sampler": (sampler, lambda c: check_sampler(c, episodes=1)),
        "algorithm": (Imitation(system), lambda c: check_algorithm(c, sampler, episodes=1)),
    }


@pytest.mark.parametrize(
    ("kind", "member"),
    [(kind, member) for kind in ("scorer", "system", "sampler", "algorithm") for member in kinds.kind(kind).required],
)
def test_a_component_without_any_required_member_fails_the_protocol(system: ToySystem, kind: Any, member: str) -> None:
    component, check = _checks(system)[kind]
    with broken("protocol", f"{member!r}"):
        check(Without(component, member))


def test_every_kind_with_a_conformance_check_is_covered_here(system: ToySystem) -> None:
    covered = {k.name for k in kinds.KINDS_TABLE.values() if k.conformance and k.name != "optimizer"}
    assert covered == set(_checks(system))
    for record in kinds.KINDS_TABLE.values():
        if record.conformance:
            assert callable(getattr(testing, record.conformance)), record.conformance
