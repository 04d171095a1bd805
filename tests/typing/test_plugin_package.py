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

from astra_core import Graph, Node, Scorer, System, Turn, factories
from astra_core.types import ActionT, StateT


class Chain(Generic[StateT, ActionT]):
    def __init__(
        self, system: System[StateT, ActionT], scorer: Scorer[StateT, ActionT], *, openers: Sequence[StateT]
    ) -> None:
        self.system = system
        self.scorer = scorer
        self.openers = list(openers)

    def rollouts(self, count: int) -> list[Graph[StateT, ActionT]]:
        return self.eval_rollouts([random.choice(self.openers) for _ in range(count)])

    def eval_rollouts(self, prompts: Sequence[StateT]) -> list[Graph[StateT, ActionT]]:
        probes = self.system.rollout_tester(prompts)
        responses = self.system.rollout_target([self.system.join(c, p) for c, p in zip(prompts, probes)])
        rewards = self.scorer.score([Turn(c, p, r) for c, p, r in zip(prompts, probes, responses)])
        return [
            Graph(c, [Node(c, p, r, reward)]) for c, p, r, reward in zip(prompts, probes, responses, rewards)
        ]


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

    def flatten(self, graphs: Sequence[Graph[str, str]]) -> list[Node[str, str]]:
        return [node for graph in graphs for level in graph.levels() for node in level]

    def collate_fn(self, examples: Sequence[Node[str, str]]) -> Batch:
        return Batch([e.context for e in examples], [e.probe for e in examples])

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = -self.system.tester_logprobs(batch.contexts, batch.probes, self.reduction).mean()
        return loss, {"loss": float(loss.detach())}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.system.parameters()


factory = factories.algorithm(Imitate)
''',
    "scorer": '''\
"""A keyword scorer."""

from collections.abc import Sequence

from astra_core import Reads, Turn, factories


class Words:
    reads: Reads = "text"

    def score(self, turns: Sequence[Turn[str, str]]) -> list[float]:
        return [float("bad" in turn.text()) for turn in turns]


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
    "in_process": '''\
"""Registering the declarations themselves, as a test or an embedding program may."""

from astra_core import Registrar, hookimpl
from typed_plugin import algorithm, sampler


@hookimpl
def astra_register(registrar: Registrar) -> None:
    registrar.sampler("typed-chain", sampler.factory)
    registrar.algorithm("typed-imitate", algorithm.factory)
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
        "def rollouts(self, count: int) -> list[Graph[StateT, ActionT]]:\n"
        "        return self.eval_rollouts([random.choice(self.openers) for _ in range(count)])",
        'def rollouts(self, count: int) -> list[str]:\n        return ["hello"] * count',
        "arg-type",
        'Argument 1 to "sampler" has incompatible type "type[Chain[StateT, ActionT]]"',
    ),
    "bad_dependency": Broken(
        "sampler",
        "self, system: System[StateT, ActionT], scorer: Scorer[StateT, ActionT], *,",
        "self, scorer: Scorer[StateT, ActionT], system: System[StateT, ActionT], *,",
        "arg-type",
        'Argument 1 to "sampler" has incompatible type "type[Chain[StateT, ActionT]]"',
    ),
    "bad_collate": Broken(
        "algorithm",
        "def collate_fn(self, examples: Sequence[Node[str, str]]) -> Batch:\n"
        "        return Batch([e.context for e in examples], [e.probe for e in examples])",
        "def collate_fn(self, examples: Sequence[Node[str, str]]) -> list[str]:\n"
        "        return [e.context for e in examples]",
        "misc",
        'Cannot infer value of type parameter "B" of "algorithm"',
    ),
    "bad_loss": Broken(
        "algorithm",
        "def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:",
        "def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, object]]:",
        "arg-type",
        'Argument 1 to "algorithm" has incompatible type "type[Imitate]"',
    ),
    "bad_scorer": Broken(
        "scorer",
        "def score(self, turns: Sequence[Turn[str, str]]) -> list[float]:\n        return [float(",
        "def score(self, turns: Sequence[Turn[str, str]]) -> list[str]:\n        return [str(",
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
    "bad_registered_kind": Broken(
        "in_process",
        'registrar.algorithm("typed-imitate", algorithm.factory)',
        'registrar.algorithm("typed-imitate", sampler.factory)',
        "arg-type",
        "has incompatible type \"TypedFactory[Literal['sampler']]\"",
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
