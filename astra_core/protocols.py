"""The contracts between components, as generic `typing.Protocol` classes.

A plugin implements these structurally (no base class to inherit). They are generic over the
state and action types so that `mypy --strict` rejects a sampler and an algorithm that disagree,
and a plugin class whose methods do not match. Nothing here imports torch at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from astra_core.graph import Graph
from astra_core.types import (
    JSON,
    ActionT,
    ActionT_contra,
    BatchT,
    StateT,
    StateT_contra,
    StepT,
)

if TYPE_CHECKING:
    import torch
    from torch.nn import Parameter

Reduction = Literal["sum", "mean"]
"""How per-token log-probs of a continuation are reduced: summed, or averaged over its tokens."""


class Scorer(Protocol[StateT_contra, ActionT_contra]):
    """Scores texts (or states) for harm: one float in [0, 1] per input, in input order."""

    def score(self, items: Sequence[StateT_contra | ActionT_contra]) -> list[float]:
        """Return one score in [0, 1] for each item."""
        ...


class System(Protocol[StateT, ActionT]):
    """The models of a stress test: the trainable tester, the frozen target and baseline.

    Log-prob methods take parallel sequences of contexts and continuations and return a 1-D
    tensor with one value per pair: the continuation's log-probability given its context, summed
    (or averaged, with `reduction="mean"`) over the continuation's tokens. Only the tester's
    carry gradients.
    """

    scorer: Scorer[StateT, ActionT]

    def tester_logprobs(
        self,
        contexts: Sequence[StateT],
        continuations: Sequence[ActionT],
        reduction: Reduction = "sum",
    ) -> torch.Tensor:
        """Log-probs of the tester writing `continuations` after `contexts` (with gradients)."""
        ...

    def baseline_logprobs(
        self,
        contexts: Sequence[StateT],
        continuations: Sequence[ActionT],
        reduction: Reduction = "sum",
    ) -> torch.Tensor:
        """Log-probs under the frozen baseline (no gradients)."""
        ...

    def target_logprobs(
        self,
        contexts: Sequence[StateT],
        continuations: Sequence[ActionT],
        reduction: Reduction = "sum",
    ) -> torch.Tensor:
        """Log-probs under the frozen target (no gradients)."""
        ...

    def rollout_tester(self, contexts: Sequence[StateT]) -> list[ActionT]:
        """Sample one probe per context from the tester, batched."""
        ...

    def rollout_target(self, contexts: Sequence[StateT]) -> list[StateT]:
        """Sample one response per context (context already ends with the probe), batched."""
        ...

    def advance(self, context: StateT, probe: ActionT, response: StateT) -> StateT:
        """The state after a turn: context, then probe, then response."""
        ...

    def join(self, context: StateT, probe: ActionT) -> StateT:
        """The state the target answers: context followed by the probe."""
        ...

    def parameters(self) -> Iterator[Parameter]:
        """The tester's trainable parameters."""
        ...


@runtime_checkable
class FeatureSystem(Protocol[StateT_contra]):
    """A system that can describe states as feature vectors (what PPO's value head reads)."""

    def state_features(self, contexts: Sequence[StateT_contra]) -> torch.Tensor:
        """A detached (batch, features) tensor of the tester's view of each context."""
        ...


@runtime_checkable
class PairLogprobSystem(Protocol):
    """A system that scores a preference pair's two continuations on one pass of their shared
    context: `tester_pair_logprobs` returns (chosen, rejected) log-probs, each (B,), with the same
    values and gradients as two `tester_logprobs` calls."""

    def tester_pair_logprobs(
        self,
        contexts: Sequence[Any],
        chosen: Sequence[Any],
        rejected: Sequence[Any],
        reduction: Reduction = "sum",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) tester log-probs after each context, with gradients."""
        ...


@runtime_checkable
class SavableSystem(Protocol):
    """A system that can save its tester in a native format (the Trainer saves it after training)."""

    def save_pretrained(self, directory: str) -> None:
        """Write the tester to `directory`."""
        ...


class Sampler(Protocol[StateT, ActionT]):
    """Rolls a system out into rollout trees."""

    @property
    def system(self) -> System[StateT, ActionT]:
        """The system this sampler rolls out (a plain attribute satisfies this)."""
        ...

    def rollout(self) -> Graph[StateT, ActionT]:
        """One training episode from a fresh opening context."""
        ...

    def eval_rollout(self, prompt: StateT) -> Graph[StateT, ActionT]:
        """One evaluation episode from `prompt`: a width-1 chain of turns."""
        ...


@runtime_checkable
class BatchedSampler(Protocol[StateT, ActionT]):
    """A sampler that can roll many episodes out together (one model call per tree level)."""

    def rollouts(self, count: int) -> list[Graph[StateT, ActionT]]:
        """`count` training episodes, generated together."""
        ...


@runtime_checkable
class TreeSampler(Protocol):
    """A sampler whose episodes are trees of a known shape (bounds what an experience can yield)."""

    tree_width: int
    tree_depth: int


class Algorithm(Protocol[StateT, ActionT, StepT, BatchT]):
    """Turns rollout trees into training steps, and batches of steps into a loss."""

    def flatten(self, graph: Graph[StateT, ActionT]) -> Sequence[StepT]:
        """The training steps in one episode (possibly none)."""
        ...

    def collate_fn(self, steps: Sequence[StepT]) -> BatchT:
        """Batch steps for `step`; used as the DataLoader's collate function."""
        ...

    def step(self, batch: BatchT) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss for a batch, and metrics to log."""
        ...

    def parameters(self) -> Iterable[Parameter]:
        """Everything the optimiser trains: the tester's parameters and the algorithm's own."""
        ...


@runtime_checkable
class MultiEpochAlgorithm(Protocol):
    """An algorithm that wants several passes over each experience (PPO's epochs)."""

    epochs_per_experience: int


@dataclass
class EvaluationReport:
    """What an evaluator returns: aggregate `metrics`, per-rollout `details`, and a summary."""

    metrics: dict[str, float]
    details: JSON = None
    markdown: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    """Measures how often and how badly the target breaks under the current tester."""

    def evaluate(self) -> EvaluationReport:
        """Run the evaluation and report."""
        ...


@runtime_checkable
class ComparingEvaluator(Protocol):
    """An evaluator that can lay several reports side by side (e.g. base vs trained tester)."""

    def compare(self, reports: Mapping[str, EvaluationReport]) -> str:
        """One markdown document comparing the labelled reports."""
        ...


class TrainerView(Protocol):
    """What callbacks may read of a running trainer."""

    @property
    def global_step(self) -> int: ...

    @property
    def run_dir(self) -> str | None: ...


class Callback(Protocol):
    """Observes training. Every method is optional at run time; implement what you need."""

    def on_train_begin(self, trainer: TrainerView) -> None: ...

    def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None: ...

    def on_evaluate(self, trainer: TrainerView, step: int, report: EvaluationReport) -> None: ...

    def on_train_end(self, trainer: TrainerView) -> None: ...
