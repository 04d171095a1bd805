"""`mypy --strict` on a plugin package alone rejects components that do not match their kind.

The package is written here into a temp dir, with its own ``pyproject.toml`` and mypy config
(strict, no pydantic plugin), as a third-party author would have it; Astra Core is found as an
installed, typed package. Each ``bad_*`` module breaks one contract and must be rejected with
the error mypy gives for it, and nothing else; the good modules (components declared with
`astra_core.factories`, the plugin module, a `TrainingConfiguration(...)` call) type-check.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

import pytest

PYPROJECT = """\
[project]
name = "astra-typed-plugin"
version = "0.1.0"
dependencies = ["astra-core"]

[project.entry-points.astra_core]
typed = "typed_plugin.plugin"

[tool.mypy]
strict = true
"""

GOOD = {
    "components": '''\
"""Components declared with astra_core.factories: mypy checks each against its kind."""

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic

import torch

from astra_core import Graph, Node, Reduction, System, factories
from astra_core.types import ActionT, StateT


class Chain(Generic[StateT, ActionT]):
    def __init__(self, system: System[StateT, ActionT], depth: int = 3, *, openers: Sequence[StateT]) -> None:
        self.system = system
        self.depth = depth
        self.openers = list(openers)

    def rollout(self) -> Graph[StateT, ActionT]:
        return Graph(random.choice(self.openers))

    def rollouts(self, count: int) -> list[Graph[StateT, ActionT]]:
        return [self.rollout() for _ in range(count)]

    def eval_rollout(self, prompt: StateT) -> Graph[StateT, ActionT]:
        return Graph(prompt)


@dataclass
class Batch:
    contexts: list[str]
    probes: list[str]


class Imitate:
    def __init__(self, system: System[str, str], reduction: Reduction = "mean") -> None:
        self.system = system
        self.reduction: Reduction = reduction

    def flatten(self, graph: Graph[str, str]) -> list[Node[str, str]]:
        return list(graph.nodes())

    def collate_fn(self, steps: Sequence[Node[str, str]]) -> Batch:
        return Batch([s.context for s in steps], [s.probe for s in steps])

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = -self.system.tester_logprobs(batch.contexts, batch.probes, self.reduction).mean()
        return loss, {"loss": float(loss.detach())}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.system.parameters()


class Words:
    def score(self, items: Sequence[str]) -> list[float]:
        return [float("bad" in item) for item in items]


chain = factories.sampler(Chain)
imitate = factories.algorithm(Imitate)
words = factories.scorer(Words)
signsgd = factories.optimizer(torch.optim.SGD)
''',
    "plugin": '''\
"""The plugin module: registers by path, imports nothing heavy."""

from astra_core import Registrar, hookimpl


@hookimpl
def astra_register(registrar: Registrar) -> None:
    registrar.sampler("typed-chain", "typed_plugin.components:chain", summary="a chain")
    registrar.algorithm("typed-imitate", "typed_plugin.components:imitate")
    registrar.add("scorer", "typed-words", "typed_plugin.components:words")
''',
    "configuration": '''\
"""A training configuration built in code, defaults filled in."""

from astra_core import ComponentRef, TrainingConfiguration

config = TrainingConfiguration(training_steps=8, lr=1e-3, optimizer=ComponentRef(name="sgd"))
default = TrainingConfiguration()
''',
}

# module -> (error code, fragment of mypy's message)
BAD = {
    "bad_rollouts": (
        '''\
"""A sampler whose rollouts are strings, not rollout trees."""

from astra_core import Graph, System, factories


class Strings:
    def __init__(self, system: System[str, str]) -> None:
        self.system = system

    def rollout(self) -> str:
        return "hello"

    def rollouts(self, count: int) -> list[str]:
        return ["hello"] * count

    def eval_rollout(self, prompt: str) -> Graph[str, str]:
        return Graph(prompt)


factory = factories.sampler(Strings)
''',
        "arg-type",
        'Argument 1 to "sampler" has incompatible type "type[Strings]"',
    ),
    "bad_collate": (
        '''\
"""An algorithm whose collate_fn returns what its step cannot take."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from astra_core import Graph, Node, System, factories


@dataclass
class Batch:
    contexts: list[str]


class Mismatched:
    def __init__(self, system: System[str, str]) -> None:
        self.system = system

    def flatten(self, graph: Graph[str, str]) -> list[Node[str, str]]:
        return list(graph.nodes())

    def collate_fn(self, steps: Sequence[Node[str, str]]) -> list[str]:
        return [s.context for s in steps]

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.zeros(()), {}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.system.parameters()


factory = factories.algorithm(Mismatched)
''',
        "misc",
        'Cannot infer value of type parameter "B" of "algorithm"',
    ),
    "bad_step": (
        '''\
"""An algorithm whose step returns a bare float, not (loss, logs)."""

from collections.abc import Iterator, Sequence

import torch

from astra_core import Graph, Node, System, factories


class FloatLoss:
    def __init__(self, system: System[str, str]) -> None:
        self.system = system

    def flatten(self, graph: Graph[str, str]) -> list[Node[str, str]]:
        return list(graph.nodes())

    def collate_fn(self, steps: Sequence[Node[str, str]]) -> list[Node[str, str]]:
        return list(steps)

    def step(self, batch: list[Node[str, str]]) -> float:
        return 0.0

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.system.parameters()


factory = factories.algorithm(FloatLoss)
''',
        "arg-type",
        'Argument 1 to "algorithm" has incompatible type "type[FloatLoss]"',
    ),
    "bad_scorer": (
        '''\
"""A scorer whose scores are labels."""

from collections.abc import Sequence

from astra_core import factories


class Labels:
    def score(self, items: Sequence[str]) -> list[str]:
        return ["toxic" for _ in items]


factory = factories.scorer(Labels)
''',
        "arg-type",
        'Argument 1 to "scorer" has incompatible type "type[Labels]"',
    ),
    "bad_dependency": (
        '''\
"""A sampler built from a scorer: the core passes it the system."""

from astra_core import Graph, Scorer, System, factories


class FromScorer:
    def __init__(self, scorer: Scorer[str, str]) -> None:
        self.scorer = scorer

    @property
    def system(self) -> System[str, str]:
        raise NotImplementedError

    def rollout(self) -> Graph[str, str]:
        return Graph("hello")

    def eval_rollout(self, prompt: str) -> Graph[str, str]:
        return Graph(prompt)


factory = factories.sampler(FromScorer)
''',
        "arg-type",
        'Argument 1 to "sampler" has incompatible type "type[FromScorer]"',
    ),
    "bad_kind": (
        '''\
"""An algorithm declared as a sampler."""

from collections.abc import Iterator, Sequence

import torch

from astra_core import Graph, Node, System, factories


class Algorithmish:
    def __init__(self, system: System[str, str]) -> None:
        self.system = system

    def flatten(self, graph: Graph[str, str]) -> list[Node[str, str]]:
        return list(graph.nodes())

    def collate_fn(self, steps: Sequence[Node[str, str]]) -> list[Node[str, str]]:
        return list(steps)

    def step(self, batch: list[Node[str, str]]) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.zeros(()), {}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.system.parameters()


factory = factories.sampler(Algorithmish)
''',
        "arg-type",
        'Argument 1 to "sampler" has incompatible type "type[Algorithmish]"',
    ),
    "bad_registrar": (
        '''\
"""A misspelt registration method."""

from astra_core import Registrar, hookimpl


@hookimpl
def astra_register(registrar: Registrar) -> None:
    registrar.samplr("typo", "typed_plugin.components:chain")
''',
        "attr-defined",
        '"Registrar" has no attribute "samplr"',
    ),
    "bad_configuration": (
        '''\
"""A training option of the wrong type."""

from astra_core import TrainingConfiguration

config = TrainingConfiguration(training_steps="many")
''',
        "arg-type",
        'Argument "training_steps" to "TrainingConfiguration" has incompatible type "str"; expected "int"',
    ),
}

_LINE = re.compile(r"^typed_plugin/(?P<module>\w+)\.py:\d+: error: (?P<message>.*?)  \[(?P<code>[a-z-]+)\]$")


@pytest.fixture(scope="module")
def errors() -> dict[str, list[tuple[str, str]]]:
    """mypy's errors on the package, by module: (code, message)."""
    from mypy import api
    from mypy import version as mypy_version

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
        package = root / "typed_plugin"
        package.mkdir()
        (package / "__init__.py").write_text("", encoding="utf-8")
        (package / "py.typed").write_text("", encoding="utf-8")
        for module, text in GOOD.items():
            (package / f"{module}.py").write_text(text, encoding="utf-8")
        for module, (text, _, _) in BAD.items():
            (package / f"{module}.py").write_text(text, encoding="utf-8")
        # A cache that outlives the temp dir: the first run reads torch's types (a minute or so).
        digest = hashlib.sha256(str(Path(__file__).resolve()).encode()).hexdigest()[:12]
        cache = Path(tempfile.gettempdir()) / f"astra-plugin-mypy-{mypy_version.__version__}-{digest}"
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(root)
            patch.delenv("MYPYPATH", raising=False)
            stdout, stderr, status = api.run(
                [
                    "--config-file",
                    "pyproject.toml",
                    "--cache-dir",
                    str(cache),
                    "--no-error-summary",
                    "--hide-error-context",
                    "--no-pretty",
                    "--show-error-codes",
                    "typed_plugin",
                ]
            )
    assert status in (0, 1), f"mypy crashed (status {status}):\n{stdout}\n{stderr}"
    found: dict[str, list[tuple[str, str]]] = {}
    for line in stdout.splitlines():
        match = _LINE.match(line)
        if match:
            found.setdefault(match["module"], []).append((match["code"], match["message"]))
        elif ": error: " in line:
            raise AssertionError(f"unparsed mypy output: {line!r}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(GOOD))
def test_a_well_typed_module_passes(module: str, errors: dict[str, list[tuple[str, str]]]) -> None:
    assert errors.get(module, []) == []


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(BAD))
def test_a_component_that_breaks_its_kind_is_rejected(module: str, errors: dict[str, list[tuple[str, str]]]) -> None:
    _, code, fragment = BAD[module]
    found = errors.get(module, [])
    assert found, f"{module} should be rejected with [{code}] but type-checks"
    assert all(c == code for c, _ in found), f"{module}: unexpected errors {found}"
    assert any(fragment in message for _, message in found), f"{module}: no error says {fragment!r}: {found}"
