"""Conformance checks for plugin authors: one call per component kind, to run in your own tests.

Like Gymnasium's ``check_env``, each check exercises a live component against the contract the
core relies on and raises `ConformanceError` (an `AssertionError`, so pytest shows it as a test
failure) whose message names the component, the broken contract and what was observed::

    from astra_core.testing import check_algorithm, check_sampler, check_system
    from astra_core.testing.toy import ToyScorer, ToySampler, ToySystem

    system = ToySystem()
    check_system(system, ["hello there"], ["nice day ok"])
    check_sampler(ToySampler(system, ToyScorer()))

The contracts (`ConformanceError.contract`): ``protocol`` (a method or attribute is missing),
``shape`` (log-probs are 1-D with one value per pair; a loss is a scalar), ``dtype`` (floating
point), ``gradient`` (the tester's log-probs and the loss reach ``parameters()``; the baseline's
and target's carry no gradient), ``length`` (mismatched lists are rejected; one output per input),
``range`` (scores in [0, 1], log-probs <= 0, everything finite), ``determinism`` (the same torch
and ``random`` seed gives the same result), ``graph`` (rollout trees are well formed), ``flatten``,
``collate`` and ``loss`` (the algorithm's three calls), ``logs`` (metrics are ``dict[str, float]``)
and ``optimizer`` (built by name, it descends a quadratic and its state round-trips).

Importing this module is light: torch is imported inside the checks.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from astra_core import kinds
from astra_core.kinds import ComponentKind

if TYPE_CHECKING:
    import torch

    from astra_core.graph import Graph
    from astra_core.registry import Registries

__all__ = [
    "ConformanceError",
    "check_algorithm",
    "check_optimizer",
    "check_sampler",
    "check_scorer",
    "check_system",
]

SEED = 1234
"""The seed the determinism checks use (the caller's RNG state is restored afterwards)."""

_LOGPROB_SLACK = 1e-5  # float rounding may put a certain continuation a hair above 0


class ConformanceError(AssertionError):
    """A component broke one of the contracts the core relies on.

    `component` names the object checked, `contract` the broken contract (see the module doc),
    and the message says what was expected and what was observed.
    """

    def __init__(self, component: str, contract: str, detail: str) -> None:
        self.component, self.contract, self.detail = component, contract, detail
        super().__init__(f"{component} breaks the {contract} contract: {detail}")


def _name(obj: object) -> str:
    return type(obj).__name__


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's and Python's global RNGs, and give the caller's states back afterwards."""
    import torch

    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


def _require(obj: object, component: str, kind: ComponentKind) -> None:
    for name in kinds.kind(kind).required:  # the protocol's members (astra_core.kinds)
        if not hasattr(obj, name):
            raise ConformanceError(component, "protocol", f"it has no {name!r} (required by the protocol)")


# --- scorers --------------------------------------------------------------------------------


def check_scorer(scorer: Any, items: Sequence[Any]) -> list[float]:
    """Check a `Scorer` on `items` (`Turn`s, or plain texts, each scored alone as
    ``Turn("", text)``) and return its scores.

    A scorer says what it reads (``reads`` is ``"text"`` or ``"turn"``) and returns a list with
    exactly one finite float in [0, 1] per item, in order; an empty
    input gives an empty list; scoring is deterministic, and scoring items one at a time gives the
    same scores as scoring them together (to 1e-3, for batched neural scorers' padding).
    """
    component = f"scorer {_name(scorer)}"
    if not items:
        raise ValueError("check_scorer needs at least one item to score")
    from astra_core.turns import Turn

    _require(scorer, component, "scorer")
    if scorer.reads not in ("text", "turn"):
        raise ConformanceError(component, "protocol", f"reads is {scorer.reads!r}; expected 'text' or 'turn'")
    items = [item if isinstance(item, Turn) else Turn("", item) for item in items]
    scores = scorer.score(list(items))
    if not isinstance(scores, Sequence):
        raise ConformanceError(component, "dtype", f"score() returned {type(scores).__name__}, expected list[float]")
    if len(scores) != len(items):
        raise ConformanceError(
            component, "length", f"score() returned {len(scores)} scores for {len(items)} items; expected one per item"
        )
    for index, value in enumerate(scores):
        if isinstance(value, bool) or not isinstance(value, (float, int)):
            raise ConformanceError(
                component, "dtype", f"score {index} is {type(value).__name__} {value!r}; expected a Python float"
            )
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConformanceError(component, "range", f"score {index} is {value}; scores must be finite, in [0, 1]")
    empty = scorer.score([])
    if len(empty) != 0:
        raise ConformanceError(component, "length", f"score([]) returned {len(empty)} scores; expected none")
    again = scorer.score(list(items))
    if list(again) != list(scores):
        raise ConformanceError(
            component, "determinism", f"scoring the same items twice gave {list(scores)} then {list(again)}"
        )
    singles = [scorer.score([item])[0] for item in items]
    for index, (single, batched) in enumerate(zip(singles, scores, strict=True)):
        if abs(single - batched) > 1e-3:
            raise ConformanceError(
                component,
                "determinism",
                f"item {index} scores {batched} in a batch but {single} alone; a score must not depend on its batch",
            )
    return [float(s) for s in scores]


# --- systems --------------------------------------------------------------------------------


def _check_logprobs(component: str, which: str, values: Any, count: int, *, with_grad: bool) -> None:
    import torch

    if not isinstance(values, torch.Tensor):
        raise ConformanceError(component, "dtype", f"{which} returned {type(values).__name__}, expected a torch.Tensor")
    if values.dim() != 1 or values.shape[0] != count:
        raise ConformanceError(
            component,
            "shape",
            f"{which} returned shape {tuple(values.shape)} for {count} pairs; expected 1-D, shape ({count},)",
        )
    if not values.is_floating_point():
        raise ConformanceError(component, "dtype", f"{which} returned dtype {values.dtype}; expected a floating dtype")
    if not bool(torch.isfinite(values).all()):
        raise ConformanceError(component, "range", f"{which} returned non-finite values {values.tolist()}")
    if bool((values > _LOGPROB_SLACK).any()):
        raise ConformanceError(component, "range", f"{which} returned {values.tolist()}; log-probs must be <= 0")
    if with_grad and not values.requires_grad:
        raise ConformanceError(component, "gradient", f"{which} does not require grad; the tester's log-probs must")
    if not with_grad and values.requires_grad:
        raise ConformanceError(
            component, "gradient", f"{which} requires grad; only the tester's log-probs may (compute it under no_grad)"
        )


def check_system(system: Any, contexts: Sequence[Any], continuations: Sequence[Any]) -> None:
    """Check a `System` on parallel `contexts` and `continuations` (the tester's probes).

    Every log-prob method, with both reductions, returns a finite floating 1-D tensor with one
    value <= 0 per pair; the tester's requires grad and backpropagates to ``parameters()``, the
    baseline's and target's do not require grad; mismatched lists raise. ``rollout_tester`` and
    ``rollout_target`` return one output per context and repeat under the same seed.
    """
    import torch

    component = f"system {_name(system)}"
    if not contexts or len(contexts) != len(continuations):
        raise ValueError("check_system needs equally long, non-empty contexts and continuations")
    _require(system, component, "system")
    parameters = [p for p in system.parameters() if p.requires_grad]
    if not parameters:
        raise ConformanceError(component, "gradient", "parameters() yielded no trainable parameters")
    count = len(contexts)
    for which in ("tester_logprobs", "baseline_logprobs", "target_logprobs"):
        method = getattr(system, which)
        for reduction in ("sum", "mean"):
            values = method(list(contexts), list(continuations), reduction=reduction)
            label = f"{which}(reduction={reduction!r})"
            _check_logprobs(component, label, values, count, with_grad=which == "tester_logprobs")
            if which == "tester_logprobs":
                grads = torch.autograd.grad(values.sum(), parameters, allow_unused=True)
                if all(g is None for g in grads):
                    raise ConformanceError(
                        component,
                        "gradient",
                        f"{which}(reduction={reduction!r}) does not backpropagate to any of parameters()",
                    )
        _check_rejects_mismatch(component, which, method, contexts, continuations)
    with _seeded(SEED):
        first = system.rollout_tester(list(contexts))
    with _seeded(SEED):
        second = system.rollout_tester(list(contexts))
    _check_outputs(component, "rollout_tester", first, second, count)
    joined = [system.join(c, p) for c, p in zip(contexts, first, strict=True)]
    with _seeded(SEED):
        responses = system.rollout_target(joined)
    with _seeded(SEED):
        again = system.rollout_target(joined)
    _check_outputs(component, "rollout_target", responses, again, count)
    for context, probe, response in zip(contexts, first, responses, strict=True):
        system.advance(context, probe, response)


def _check_rejects_mismatch(
    component: str, which: str, method: Callable[..., Any], contexts: Sequence[Any], continuations: Sequence[Any]
) -> None:
    shorter = list(continuations)[:-1]
    try:
        method(list(contexts), shorter)
    except Exception:
        return
    raise ConformanceError(
        component,
        "length",
        f"{which} accepted {len(contexts)} contexts with {len(shorter)} continuations; mismatched lists must raise",
    )


def _check_outputs(component: str, which: str, first: Any, second: Any, count: int) -> None:
    if not isinstance(first, list):
        raise ConformanceError(component, "dtype", f"{which} returned {type(first).__name__}; expected a list")
    if len(first) != count:
        raise ConformanceError(
            component, "length", f"{which} returned {len(first)} outputs for {count} contexts; expected one each"
        )
    if first != second:
        raise ConformanceError(
            component,
            "determinism",
            f"{which} gave {first!r} then {second!r} under the same seed; sample with torch's and Python's global "
            "RNGs, which the Trainer seeds",
        )


# --- samplers -------------------------------------------------------------------------------


def _signature(graph: Graph[Any, Any]) -> list[Any]:
    rows: list[Any] = [graph.context]
    for level in graph.levels():
        rows.append([(n.context, n.probe, n.response, n.reward, len(n.children)) for n in level])
    return rows


def _check_graph(component: str, which: str, graph: Any) -> None:
    from astra_core.graph import Graph

    if not isinstance(graph, Graph):
        raise ConformanceError(component, "graph", f"{which} returned {type(graph).__name__}; expected a Graph")
    if not graph.children:
        raise ConformanceError(component, "graph", f"{which} returned a Graph with no turns")
    for child in graph.children:
        if child.context != graph.context:
            raise ConformanceError(
                component, "graph", f"{which}: a first turn's context {child.context!r} is not the root's"
            )
    for node in graph.nodes():
        reward = node.reward
        if isinstance(reward, bool) or not isinstance(reward, (float, int)) or not math.isfinite(reward):
            raise ConformanceError(component, "range", f"{which}: a node's reward is {reward!r}; expected finite")
        if not isinstance(node.children, list):
            raise ConformanceError(component, "graph", f"{which}: a node's children are not a list")


def check_sampler(sampler: Any, episodes: int = 2) -> list[Graph[Any, Any]]:
    """Check a `Sampler` and return the `episodes` rollouts it produced.

    ``rollouts(n)`` returns a list of exactly `n` non-empty `Graph`s whose first turns start from
    the root's context and whose rewards are finite numbers; the same seed gives the same
    episodes (for a sampler with ``state_dict()``, from the same state); ``eval_rollouts(prompts)``
    returns one width-1 chain per prompt text, in order, each starting from ``system.opening(prompt)``.
    The sampler exposes the ``system`` it rolls out and the ``scorer``
    its reward uses.
    """
    component = f"sampler {_name(sampler)}"
    if episodes < 1:
        raise ValueError("check_sampler needs episodes >= 1")
    _require(sampler, component, "sampler")
    which = f"rollouts({episodes})"
    # A sampler may keep state its rewards read (a memory of past probes): repeat from the same state.
    state = copy.deepcopy(sampler.state_dict()) if callable(getattr(sampler, "state_dict", None)) else None

    def restart() -> None:
        if state is not None:
            sampler.load_state_dict(copy.deepcopy(state))

    restart()
    with _seeded(SEED):
        graphs = sampler.rollouts(episodes)
    if not isinstance(graphs, list) or len(graphs) != episodes:
        got = len(graphs) if isinstance(graphs, list) else type(graphs).__name__
        raise ConformanceError(component, "length", f"{which} returned {got}; expected {episodes}")
    for graph in graphs:
        _check_graph(component, which, graph)
    restart()
    with _seeded(SEED):
        again = sampler.rollouts(episodes)
    if [_signature(g) for g in graphs] != [_signature(g) for g in again]:
        raise ConformanceError(
            component,
            "determinism",
            f"{which} gave different episodes under the same seed; sample with torch's and Python's global RNGs",
        )
    # Prompts are texts; a text sampler's opening contexts serve, others get a neutral one.
    prompts = [g.context for g in graphs] if all(isinstance(g.context, str) for g in graphs) else ["hello there"]
    with _seeded(SEED):
        chains = sampler.eval_rollouts(prompts)
    if not isinstance(chains, list) or len(chains) != len(prompts):
        got = len(chains) if isinstance(chains, list) else type(chains).__name__
        raise ConformanceError(
            component, "length", f"eval_rollouts({len(prompts)} prompts) returned {got}; expected one per prompt"
        )
    for prompt, chain in zip(prompts, chains, strict=True):
        _check_graph(component, "eval_rollouts(prompts)", chain)
        opened = sampler.system.opening(prompt)
        if chain.context != opened:
            raise ConformanceError(
                component,
                "graph",
                f"eval_rollouts: the episode of {prompt!r} starts from {chain.context!r}, "
                f"not from system.opening(prompt) = {opened!r}",
            )
        widths = [len(level) for level in chain.levels()]
        if any(width != 1 for width in widths):
            raise ConformanceError(
                component, "graph", f"eval_rollouts returned levels of widths {widths}; expected a width-1 chain"
            )
    return graphs


# --- algorithms -----------------------------------------------------------------------------


def check_algorithm(algorithm: Any, sampler: Any, episodes: int = 4) -> dict[str, float]:
    """Check an `Algorithm` on rollouts from `sampler`; return the logs of its last `loss` call.

    ``flatten`` returns a sequence of training examples (at least one from `episodes` seeded
    rollouts flattened as one experience);
    ``collate_fn`` batches them in a real ``DataLoader`` (a full batch and a batch of one);
    ``loss`` returns ``(loss, logs)`` where the loss is a finite floating scalar tensor whose
    gradient reaches ``parameters()``, and the logs are a ``dict[str, float]``.
    """
    from torch.utils.data import DataLoader

    component = f"algorithm {_name(algorithm)}"
    _require(algorithm, component, "algorithm")
    parameters = [p for p in algorithm.parameters() if p.requires_grad]
    if not parameters:
        raise ConformanceError(component, "gradient", "parameters() yielded no trainable parameters")
    with _seeded(SEED):
        graphs = sampler.rollouts(episodes)
    flat = algorithm.flatten(graphs)
    if not isinstance(flat, Sequence) or isinstance(flat, (str, bytes)):
        raise ConformanceError(
            component,
            "flatten",
            f"flatten() returned {type(flat).__name__}; expected a sequence (list) of training examples",
        )
    examples = list(flat)
    if not examples:
        raise ConformanceError(
            component,
            "flatten",
            f"flatten() produced no training examples from {episodes} episodes; cannot check loss()",
        )
    logs: dict[str, float] = {}
    for size in (min(len(examples), 4), 1):
        loader: DataLoader[Any] = DataLoader(
            _examples_dataset(examples), batch_size=size, shuffle=False, collate_fn=algorithm.collate_fn
        )
        try:
            batch = next(iter(loader))
        except Exception as error:
            raise ConformanceError(
                component, "collate", f"collate_fn failed on a batch of {size}: {type(error).__name__}: {error}"
            ) from error
        logs = _check_loss(component, algorithm, batch, size, parameters)
    return logs


def _examples_dataset(examples: list[Any]) -> Any:
    from torch.utils.data import Dataset

    class Examples(Dataset[Any]):
        def __len__(self) -> int:
            return len(examples)

        def __getitem__(self, index: int) -> Any:
            return examples[index]

    return Examples()


def _check_loss(
    component: str, algorithm: Any, batch: Any, size: int, parameters: list[torch.Tensor]
) -> dict[str, float]:
    import torch

    result = algorithm.loss(batch)
    if not isinstance(result, tuple) or len(result) != 2:
        raise ConformanceError(component, "loss", f"loss() returned {type(result).__name__}; expected (loss, logs)")
    loss, logs = result
    if not isinstance(loss, torch.Tensor):
        raise ConformanceError(component, "loss", f"loss()'s loss is {type(loss).__name__}; expected a torch.Tensor")
    if loss.numel() != 1 or loss.dim() != 0:
        raise ConformanceError(
            component, "shape", f"loss()'s loss has shape {tuple(loss.shape)} (batch of {size}); expected a scalar"
        )
    if not loss.is_floating_point():
        raise ConformanceError(component, "dtype", f"loss()'s loss has dtype {loss.dtype}; expected floating point")
    if not bool(torch.isfinite(loss)):
        value = float(loss.detach())
        raise ConformanceError(component, "range", f"loss()'s loss is {value} (batch of {size}); expected finite")
    if not loss.requires_grad:
        raise ConformanceError(component, "gradient", "loss()'s loss does not require grad")
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    if all(g is None for g in grads):
        raise ConformanceError(component, "gradient", "loss()'s loss has no gradient path to parameters()")
    if not isinstance(logs, dict):
        raise ConformanceError(component, "logs", f"loss()'s logs are {type(logs).__name__}; expected dict[str, float]")
    for key, value in logs.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (float, int)):
            raise ConformanceError(
                component,
                "logs",
                f"loss()'s logs have {key!r}: {type(value).__name__}; expected str keys and float values "
                "(use float(tensor))",
            )
    return {key: float(value) for key, value in logs.items()}


# --- optimizers -----------------------------------------------------------------------------


def check_optimizer(
    name_or_factory: str | Callable[..., Any],
    options: Mapping[str, Any] | None = None,
    *,
    lr: float = 0.01,
    steps: int = 5,
    registries: Registries | None = None,
) -> None:
    """Check an optimizer, by registered name (built through the registry) or factory.

    Built on one tiny parameter as the Trainer builds it (``factory(params, lr=lr, **options)``),
    it is a ``torch.optim.Optimizer``; `steps` steps on a quadratic decrease it at every step; its
    state survives the checkpoint format (tensors and JSON) into a fresh optimizer.
    """
    import torch

    from astra_core import checkpoint

    parameter = torch.nn.Parameter(torch.tensor([1.5, -2.0, 0.5]))

    def build(params: list[torch.nn.Parameter]) -> Any:
        if isinstance(name_or_factory, str):
            info = (registries if registries is not None else _loaded_registries()).get("optimizer", name_or_factory)
            return info.build(params, options=dict(options or {}), lr=lr)
        return name_or_factory(params, lr=lr, **dict(options or {}))

    label = name_or_factory if isinstance(name_or_factory, str) else getattr(name_or_factory, "__name__", "factory")
    component = f"optimizer {label!r}"
    optimizer = build([parameter])
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConformanceError(
            component, "optimizer", f"built {type(optimizer).__name__}; expected a torch.optim.Optimizer"
        )

    def quadratic() -> torch.Tensor:
        return (parameter**2).sum()

    previous = float(quadratic().detach())
    for index in range(steps):
        optimizer.zero_grad()
        torch.autograd.backward(quadratic())
        optimizer.step()
        current = float(quadratic().detach())
        if not current < previous:
            raise ConformanceError(
                component,
                "optimizer",
                f"step {index + 1} moved a quadratic from {previous:.6g} to {current:.6g}; one step must decrease it",
            )
        previous = current
    tensors, data = checkpoint.optimizer_state(optimizer)
    fresh = build([torch.nn.Parameter(parameter.detach().clone())])
    try:
        # A checkpoint stores the non-tensor state as JSON: go through it as a real save would.
        checkpoint.load_optimizer_state(fresh, tensors, json.loads(json.dumps(data)))
    except Exception as error:
        raise ConformanceError(
            component, "optimizer", f"its state does not round-trip a checkpoint: {type(error).__name__}: {error}"
        ) from error


def _loaded_registries() -> Registries:
    from astra_core.plugins import registries

    return registries()
