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
from astra_core.turns import Reads, Turn
from astra_core.types import (
    JSON,
    ActionT,
    ActionT_contra,
    BatchT,
    ExampleT,
    StateT,
    StateT_contra,
)

if TYPE_CHECKING:
    import torch
    from torch.nn import Parameter

Reduction = Literal["sum", "mean"]
"""How per-token log-probs of a continuation are reduced: summed, or averaged over its tokens."""


class Scorer(Protocol[StateT_contra, ActionT_contra]):
    """Scores turns for harm: one float in [0, 1] per turn, in input order.

    A scorer judges each turn in its context (see `astra_core.turns.Turn`) and says what it read
    through `reads`. A plain text scorer is one line: ``text_scorer(fn)``.
    """

    @property
    def reads(self) -> Reads:
        """``"text"`` (only each turn's text: its response, or its probe alone) or ``"turn"``."""
        ...

    def score(self, turns: Sequence[Turn[StateT_contra, ActionT_contra]]) -> list[float]:
        """Return one score in [0, 1] for each turn."""
        ...


class System(Protocol[StateT, ActionT]):
    """The models of a stress test: the trainable tester, the frozen target and baseline.

    Log-prob methods take parallel sequences of contexts and continuations and return a 1-D
    tensor with one value per pair: the continuation's log-probability given its context, summed
    (or averaged, with `reduction="mean"`) over the continuation's tokens. Only the tester's
    carry gradients.
    """

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

    def rollout_target(self, contexts: Sequence[StateT]) -> list[str]:
        """Sample one response text per context (context already ends with the probe), batched.
        A response is text whatever the state is (a chat system's state is a conversation)."""
        ...

    def opening(self, prompt: str) -> StateT:
        """The state an episode opens with, from a prompt text (for text states: the text itself)."""
        ...

    def advance(self, context: StateT, probe: ActionT, response: str) -> StateT:
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
class TurnTextSystem(Protocol):
    """A system that says how a turn's probe and response read as one text: what a reward
    scores when it judges them together (the ``ast`` reward's combined term). A text system
    joins them as it joins states (``probe + response``); without this method a reward puts
    them on two lines."""

    def turn_text(self, probe: str, response: str) -> str:
        """The probe followed by the response, as one text."""
        ...


@runtime_checkable
class SavableSystem(Protocol):
    """A system that can save its tester in a native format (the Trainer saves it after training)."""

    def save_pretrained(self, directory: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write the tester to `directory`; with `state_dict`, these full weights (by the tester
        module's own names) rather than the module's, which hold only shards under FSDP."""
        ...


@runtime_checkable
class NamedParameters(Protocol):
    """A system that names its trainable parameters, so checkpoints store weights by name and a
    tester loads into a system without its algorithm (`astra_core.checkpoint`)."""

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(name, parameter) for each trainable parameter, names unique."""
        ...


class Sampler(Protocol[StateT, ActionT]):
    """Rolls a system out into rollout trees and rewards each turn with its scorer.

    Both methods are batch-first: a sampler grows all the episodes it is asked for together
    (one model call per tree level for all of them, when it can).
    """

    @property
    def system(self) -> System[StateT, ActionT]:
        """The system this sampler rolls out (a plain attribute satisfies this)."""
        ...

    @property
    def scorer(self) -> Scorer[StateT, ActionT]:
        """The scorer its reward uses (evaluators score with it too)."""
        ...

    def rollouts(self, count: int) -> list[Graph[StateT, ActionT]]:
        """Exactly `count` training episodes, each from a fresh opening context."""
        ...

    def eval_rollouts(self, prompts: Sequence[str]) -> list[Graph[StateT, ActionT]]:
        """One evaluation episode per prompt text, in order: a width-1 chain of turns from
        ``system.opening(prompt)``."""
        ...


@runtime_checkable
class StatefulSampler(Protocol):
    """A sampler with state of its own (a memory its reward reads): the Trainer saves it in each
    checkpoint's state.json and gives it back on resume."""

    def state_dict(self) -> dict[str, JSON]:
        """The sampler's state, as JSON data."""
        ...

    def load_state_dict(self, state: Mapping[str, JSON]) -> None:
        """Restore what `state_dict` returned."""
        ...


@runtime_checkable
class TreeSampler(Protocol):
    """A sampler whose episodes are trees of a known shape (bounds what an experience can yield)."""

    tree_width: int
    tree_depth: int


class Algorithm(Protocol[StateT, ActionT, ExampleT, BatchT]):
    """Turns an experience's rollout trees into training examples, and a batch of them into a loss.

    A training *step* is one experience and every optimizer update over it; the algorithm sees
    the experience once through `flatten`, then one `loss` call per batch of examples.
    """

    def flatten(self, graphs: Sequence[Graph[StateT, ActionT]]) -> Sequence[ExampleT]:
        """The training examples of one experience (possibly none), called once per step.

        Ordering contract: the examples of ``graphs[0]`` come first, then those of ``graphs[1]``,
        and so on; within an episode, in an order the algorithm fixes (the same trees always
        give the same examples in the same order). The harness may shuffle them afterwards
        (``training.shuffle``) with a generator seeded from the run's seed and the step, so a
        run repeats exactly only if `flatten` is deterministic; with ``shuffle_by = "episode"``
        it permutes `graphs` before this call and relies on this order to keep each episode's
        examples together.
        """
        ...

    def collate_fn(self, examples: Sequence[ExampleT]) -> BatchT:
        """Batch examples for `loss`; used as the DataLoader's collate function."""
        ...

    def loss(self, batch: BatchT) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of a batch, and metrics to log."""
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
