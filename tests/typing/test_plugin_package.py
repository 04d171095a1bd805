"""`mypy --strict` on a plugin package alone rejects components that do not match their kind.

The package is written here into a temp dir, with its own ``pyproject.toml`` and mypy config
(strict, no pydantic plugin), as a third-party author would have it; Astra Core is found as an
installed, typed package. Its good modules (components declared with `astra_core.factories`, the
plugin module, a `TrainingConfiguration(...)` call) type-check; each bad module is a good one
with one contract broken, and must be rejected with the error mypy gives for it and no other.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
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
    "sampler": '''\
"""A chain sampler for any system."""

import random
from collections.abc import Sequence
from typing import Generic

from astra_core import Graph, System, factories
from astra_core.types import ActionT, StateT


class Chain(Generic[StateT, ActionT]):
    def __init__(self, system: System[StateT, ActionT], depth: int = 3, *, openers: Sequence[StateT]) -> None:
        self.system = system
        self.depth = depth
        self.openers = list(openers)

    def rollout(self) -> Graph[StateT, ActionT]:
        return Graph(random.choice(self.openers))

    def rollouts(self, count: int) -> list[Graph[StateT, ActionT]]:
        return [Graph(random.choice(self.openers)) for _ in range(count)]

    def eval_rollout(self, prompt: StateT) -> Graph[StateT, ActionT]:
        return Graph(prompt)


factory = factories.sampler(Chain)
''',
    "algorithm": '''\
"""An algorithm over text systems, with its own batch type."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from astra_core import Graph, Node, Reduction, System, factories


@dataclass
class Batch:
    contexts: list[str]
    probes: list[str]


class Imitate:
    def __init__(self, system: System[str, str], reduction: Reduction = "mean") -> None:
        self.system = system
        self.reduction: Reduction = reduction

    def flatten(self, graph: Graph[str, str]) -> list[Node[str, str]]:
        return [node for level in graph.levels() for node in level]

    def collate_fn(self, steps: Sequence[Node[str, str]]) -> Batch:
        return Batch([s.context for s in steps], [s.probe for s in steps])

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = -self.system.tester_logprobs(batch.contexts, batch.probes, self.reduction).mean()
        return loss, {"loss": float(loss.detach())}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.system.parameters()


factory = factories.algorithm(Imitate)
''',
    "scorer": '''\
"""A keyword scorer."""

from collections.abc import Sequence

from astra_core import factories


class Words:
    def score(self, items: Sequence[str]) -> list[float]:
        return [float("bad" in item) for item in items]


factory = factories.scorer(Words)
''',
    "optimizer": '''\
"""torch's SGD, declared as an optimizer factory."""

import torch

from astra_core import factories

factory = factories.optimizer(torch.optim.SGD)
''',
    "plugin": '''\
"""The plugin module: registers by path, imports nothing heavy."""

from astra_core import Registrar, hookimpl


@hookimpl
def astra_register(registrar: Registrar) -> None:
    registrar.sampler("typed-chain", "typed_plugin.sampler:factory", summary="a chain")
    registrar.algorithm("typed-imitate", "typed_plugin.algorithm:factory", aliases=["imitate"])
    registrar.add("scorer", "typed-words", "typed_plugin.scorer:factory")
''',
    "configuration": '''\
"""A training configuration built in code, defaults filled in."""

from astra_core import ComponentRef, TrainingConfiguration

config = TrainingConfiguration(training_steps=8, lr=1e-3, optimizer=ComponentRef(name="sgd"))
default = TrainingConfiguration()
''',
}


@dataclass(frozen=True)
class Broken:
    """A good module with `old` replaced by `new`, and the error mypy must give for it."""

    module: str
    old: str
    new: str
    code: str
    message: str

    def text(self) -> str:
        assert GOOD[self.module].count(self.old) == 1, f"{self.old!r} is not once in {self.module}"
        return GOOD[self.module].replace(self.old, self.new)


BAD = {
    "bad_rollouts": Broken(
        "sampler",
        "def rollout(self) -> Graph[StateT, ActionT]:\n        return Graph(random.choice(self.openers))\n\n"
        "    def rollouts(self, count: int) -> list[Graph[StateT, ActionT]]:\n"
        "        return [Graph(random.choice(self.openers)) for _ in range(count)]",
        'def rollout(self) -> str:\n        return "hello"\n\n'
        "    def rollouts(self, count: int) -> list[str]:\n"
        '        return ["hello"] * count',
        "arg-type",
        'Argument 1 to "sampler" has incompatible type "type[Chain[StateT, ActionT]]"',
    ),
    "bad_dependency": Broken(
        "sampler",
        "def __init__(self, system: System[StateT, ActionT],",
        "def __init__(self, system: Sequence[StateT],",
        "arg-type",
        'Argument 1 to "sampler" has incompatible type "type[Chain[StateT, ActionT]]"',
    ),
    "bad_collate": Broken(
        "algorithm",
        "def collate_fn(self, steps: Sequence[Node[str, str]]) -> Batch:\n"
        "        return Batch([s.context for s in steps], [s.probe for s in steps])",
        "def collate_fn(self, steps: Sequence[Node[str, str]]) -> list[str]:\n"
        "        return [s.context for s in steps]",
        "misc",
        'Cannot infer value of type parameter "B" of "algorithm"',
    ),
    "bad_step": Broken(
        "algorithm",
        "def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:",
        "def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, object]]:",
        "arg-type",
        'Argument 1 to "algorithm" has incompatible type "type[Imitate]"',
    ),
    "bad_scorer": Broken(
        "scorer",
        "def score(self, items: Sequence[str]) -> list[float]:\n        return [float(",
        "def score(self, items: Sequence[str]) -> list[str]:\n        return [str(",
        "arg-type",
        'Argument 1 to "scorer" has incompatible type "type[Words]"',
    ),
    "bad_kind": Broken(
        "scorer",
        "factories.scorer(Words)",
        "factories.sampler(Words)",
        "arg-type",
        'Argument 1 to "sampler" has incompatible type "type[Words]"',
    ),
    "bad_optimizer": Broken(
        "optimizer",
        "factories.optimizer(torch.optim.SGD)",
        "factories.optimizer(torch.nn.Linear)",
        "arg-type",
        'Argument 1 to "optimizer" has incompatible type "type[Linear]"',
    ),
    "bad_registrar": Broken(
        "plugin",
        "registrar.sampler(",
        "registrar.samplr(",
        "attr-defined",
        '"Registrar" has no attribute "samplr"',
    ),
    "bad_configuration": Broken(
        "configuration",
        "training_steps=8",
        'training_steps="many"',
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
        modules = {**GOOD, **{name: broken.text() for name, broken in BAD.items()}}
        for module, text in modules.items():
            (package / f"{module}.py").write_text(text, encoding="utf-8")
        # A cache that outlives the temp dir: the first run reads torch's types (a minute or so).
        digest = hashlib.sha256(str(Path(__file__).resolve()).encode()).hexdigest()[:12]
        cache = Path(tempfile.gettempdir()) / f"astra-plugin-mypy-{mypy_version.__version__}-{digest}"
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(root)
            patch.delenv("MYPYPATH", raising=False)
            options = ["--cache-dir", str(cache), "--no-error-summary", "--hide-error-context", "--no-pretty"]
            stdout, stderr, status = api.run(["--config-file", "pyproject.toml", *options, "typed_plugin"])
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
    broken = BAD[module]
    found = errors.get(module, [])
    assert found, f"{module} should be rejected with [{broken.code}] but type-checks"
    assert all(code == broken.code for code, _ in found), f"{module}: unexpected errors {found}"
    assert any(broken.message in message for _, message in found), f"{module}: no error says {broken.message!r}"
