"""Times and counts a training step from outside the components it runs.

A `Recorder` wraps methods (the system's rollout and log-prob methods, the scorer, the tokenizers,
``torch.autograd.backward``, the optimizer) with `time.perf_counter` and keeps *exclusive* time per
category, so a tokenizer call inside a rollout counts as tokenisation, not twice. Forward hooks on
each distinct Hugging Face model (and its ``base_model``, which systems call directly to skip the
LM head) count the token positions every outermost forward processes, classified by the phase the
forward runs in: a rollout's forwards are ``prefill`` (more than one new position per sequence) or
``decode`` (one); forwards under autograd through trainable weights are ``train_forward`` and
become ``backward`` positions when a backward runs; the rest are ``frozen_forward``.

Everything installed is undone by `Recorder.restore` (or leaving the ``with`` block).

>>> # with Recorder() as recorder:
>>> #     recorder.watch_system(system); recorder.watch_optimizer(trainer.optimizer)
>>> #     recorder.reset(); trainer.train_step(); print(recorder.snapshot())
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from torch import nn

CATEGORIES = ("generate", "logprob_forwards", "backward", "optimizer", "scorer", "tokenisation")
"""The timed categories; a step's remaining time is reported as ``other``."""

POSITION_KINDS = ("prefill", "decode", "train_forward", "frozen_forward", "backward")
"""How token positions are split per model."""

_ROLE_ORDER = ("tester", "target", "baseline")


@dataclass
class StepCounts:
    """What one step did, as counted by a `Recorder` (see `Recorder.snapshot`)."""

    seconds: dict[str, float]
    positions: dict[str, dict[str, int]]
    forwards: dict[str, int]
    calls: dict[str, int]


@dataclass
class _Watched:
    name: str
    trainable: bool
    depth: int = 0
    pending_backward: int = 0
    handles: list[Any] = field(default_factory=list)


def _input_shape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int] | None:
    tensor = kwargs.get("input_ids")
    if tensor is None and args and isinstance(args[0], torch.Tensor):
        tensor = args[0]
    if tensor is None:
        tensor = kwargs.get("inputs_embeds")
        if isinstance(tensor, torch.Tensor):
            return (int(tensor.shape[0]), int(tensor.shape[1])) if tensor.dim() == 3 else (1, int(tensor.shape[0]))
        return None
    if not isinstance(tensor, torch.Tensor):
        return None
    return (int(tensor.shape[0]), int(tensor.shape[1])) if tensor.dim() >= 2 else (1, int(tensor.shape[0]))


class Recorder:
    """Exclusive time per category and token positions per model, for the current step.

    Use it as a context manager so every wrapper and hook is removed afterwards; `reset` starts
    a new step's counts and `snapshot` returns them.
    """

    def __init__(self) -> None:
        self.enabled = True
        self._undo: list[Callable[[], None]] = []
        self._models: dict[int, _Watched] = {}
        self._stack: list[float] = []  # child time accumulated by each open timed region
        self._phase: list[str] = []
        self.reset()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.restore()

    # -- counts ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the counts so far (call it at the start of each step)."""
        self.seconds: dict[str, float] = defaultdict(float)
        self.positions: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(POSITION_KINDS, 0))
        self.forwards: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        for watched in self._models.values():
            watched.pending_backward = 0

    def snapshot(self) -> StepCounts:
        """The counts since the last `reset`, as plain dictionaries."""
        return StepCounts(
            seconds={key: self.seconds.get(key, 0.0) for key in CATEGORIES},
            positions={name: dict(kinds) for name, kinds in self.positions.items()},
            forwards=dict(self.forwards),
            calls=dict(self.calls),
        )

    @contextlib.contextmanager
    def timed(self, category: str) -> Iterator[None]:
        """Add the block's time to `category`, minus the time of timed blocks nested in it."""
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        self._stack.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            children = self._stack.pop()
            self.seconds[category] += elapsed - children
            if self._stack:
                self._stack[-1] += elapsed

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Classify the forwards run inside the block as part of phase `name` (a method name)."""
        self._phase.append(name)
        try:
            yield
        finally:
            self._phase.pop()

    # -- installing wrappers -----------------------------------------------------------------

    def wrap(self, owner: Any, name: str, category: str, *, phase: str | None = None, on_class: bool = False) -> bool:
        """Time `owner.name` as `category` (and run it in `phase`); False when it cannot be wrapped.

        The wrapper goes on the instance (or on the class with `on_class`, for dunder methods such
        as a tokenizer's ``__call__`` that Python looks up on the type); `restore` removes it.
        """
        original = getattr(owner, name, None)
        if original is None or not callable(original):
            return False
        recorder = self

        if on_class:

            @functools.wraps(original)
            def unbound(*args: Any, **kwargs: Any) -> Any:
                with recorder.timed(category):
                    return original(*args, **kwargs)

            replacement: Callable[..., Any] = unbound
        else:

            @functools.wraps(original)
            def bound(*args: Any, **kwargs: Any) -> Any:
                recorder.calls[name] += 1
                with recorder.timed(category), contextlib.ExitStack() as stack:
                    if phase is not None:
                        stack.enter_context(recorder.phase(phase))
                    return original(*args, **kwargs)

            replacement = bound
        had_own = name in vars(owner) if hasattr(owner, "__dict__") else False
        previous = vars(owner).get(name) if had_own else None
        try:
            setattr(owner, name, replacement)
        except (AttributeError, TypeError):
            return False

        def undo() -> None:
            if had_own:
                setattr(owner, name, previous)
            else:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)

        self._undo.append(undo)
        return True

    def watch_system(self, system: Any, scorer: Any = None) -> None:
        """Wrap a text system's rollout and log-prob methods, its tokenizers and models, and `scorer`.

        Any public method whose name contains ``rollout`` counts as generation and any whose name
        contains ``logprob`` as a log-prob forward, so methods a system adds are timed too.
        """
        for name in dir(type(system)):
            if name.startswith("_"):
                continue
            if "rollout" in name:
                self.wrap(system, name, "generate", phase=name)
            elif "logprob" in name:
                self.wrap(system, name, "logprob_forwards", phase=name)
        if scorer is not None:
            self.wrap(scorer, "score", "scorer")
        tokenizer_types = set()
        for attribute in ("tokenizer", "target_tokenizer"):
            tokenizer = getattr(system, attribute, None)
            if tokenizer is not None:
                tokenizer_types.add(type(tokenizer))
        for kind in tokenizer_types:
            for method in ("__call__", "encode", "decode", "batch_decode"):
                self.wrap(kind, method, "tokenisation", on_class=True)
        roles: dict[int, tuple[nn.Module, list[str]]] = {}
        for role in _ROLE_ORDER:
            model = getattr(system, role, None)
            if isinstance(model, nn.Module):
                roles.setdefault(id(model), (model, []))[1].append(role)
        for model, names in roles.values():
            self.watch_model(model, "+".join(names))

    def watch_model(self, model: nn.Module, name: str) -> None:
        """Count token positions of every outermost forward of `model` (or its ``base_model``)."""
        watched = _Watched(name, any(p.requires_grad for p in model.parameters()))
        self._models[id(model)] = watched
        modules = [model]
        base = getattr(model, "base_model", None)
        if isinstance(base, nn.Module) and base is not model:
            modules.append(base)

        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            watched.depth += 1
            if watched.depth == 1:
                self._count(watched, _input_shape(args, kwargs))

        def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            watched.depth -= 1

        for module in modules:
            watched.handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            watched.handles.append(module.register_forward_hook(after, always_call=True))

        def undo() -> None:
            for handle in watched.handles:
                handle.remove()

        self._undo.append(undo)

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Time the optimizer's ``step`` and ``zero_grad`` as ``optimizer``."""
        self.wrap(optimizer, "step", "optimizer")
        self.wrap(optimizer, "zero_grad", "optimizer")

    def watch_backward(self) -> None:
        """Time ``torch.autograd.backward`` (what the Trainer calls) as ``backward``, and turn the
        positions of the trainable forwards since the last backward into backward positions."""
        original = torch.autograd.backward
        recorder = self

        @functools.wraps(original)
        def backward(*args: Any, **kwargs: Any) -> Any:
            recorder.calls["backward"] += 1
            for watched in recorder._models.values():
                recorder.positions[watched.name]["backward"] += watched.pending_backward
                watched.pending_backward = 0
            with recorder.timed("backward"):
                return original(*args, **kwargs)

        torch.autograd.backward = backward

        def undo() -> None:
            torch.autograd.backward = original

        self._undo.append(undo)

    def restore(self) -> None:
        """Remove every wrapper and hook, newest first."""
        while self._undo:
            self._undo.pop()()
        self._models.clear()

    def _count(self, watched: _Watched, shape: tuple[int, int] | None) -> None:
        if shape is None:
            return
        batch, length = shape
        positions = batch * length
        phase = self._phase[-1] if self._phase else ""
        if "rollout" in phase:
            kind = "prefill" if length > 1 else "decode"
        elif watched.trainable and torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            kind = "train_forward"
            watched.pending_backward += positions
        else:
            kind = "frozen_forward"
        self.positions[watched.name][kind] += positions
        self.forwards[watched.name] += 1
