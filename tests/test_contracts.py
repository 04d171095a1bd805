"""Contracts as wrappers (astra_core.contracts): every component the Trainer receives is held to
its protocol, and a third-party plugin that breaks one stops `astra train` with one line naming
it, exit 2, no traceback on the terminal, and the run directory's earlier files intact.

The end-to-end tests build a plugin package the way a third party ships one: a temporary
directory holding ``astra_contract_breakers`` (its components are tests/contract_breakers.py)
and ``astra_contract_breakers-0.2.dist-info`` whose ``entry_points.txt`` names it in the
``astra_core`` group; each test runs `astra train` in a subprocess with that directory on
``PYTHONPATH``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

from astra_core import contracts
from astra_core.contracts import Guarded, guard
from astra_core.errors import ComponentContractError
from astra_core.graph import Graph
from astra_core.kinds import KINDS_TABLE
from astra_core.protocols import FeatureSystem, PairLogprobSystem
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem
from astra_core.turns import Turn

if TYPE_CHECKING:
    from conftest import Kit

HERE = Path(__file__).resolve().parent
PLUGIN = "breakers (astra-contract-breakers 0.2)"
REGISTRATION = '''\
"""Registers components that each break one contract (tests/test_contracts.py)."""

from astra_core import Registrar, hookimpl

_C = "astra_contract_breakers.components"
_SYSTEM = "astra_core.testing.options:ToySystemOptions"
_SAMPLER = "astra_core.testing.options:ToySamplerOptions"
_SCORER = "astra_core.testing.options:ToyScorerOptions"


@hookimpl
def astra_register(registrar: Registrar) -> None:
    registrar.callback("breakers-arm", f"{_C}:Arm")
    registrar.algorithm("breakers-dpo", f"{_C}:PairDPO")
    for name, cls in [("short-scorer", "ShortScorer"), ("loud-scorer", "LoudScorer"), ("nan-scorer", "NaNScorer")]:
        registrar.scorer(name, f"{_C}:{cls}", options=_SCORER)
    for name, cls in [
        ("nan-logprobs", "NaNLogprobs"),
        ("negated-logprobs", "NegatedLogprobs"),
        ("short-logprobs", "ShortLogprobs"),
        ("column-logprobs", "ColumnLogprobs"),
        ("detached-logprobs", "DetachedLogprobs"),
        ("pair-system", "PairSystem"),
        ("raising-system", "RaisingSystem"),
    ]:
        registrar.system(name, f"{_C}:{cls}", options=_SYSTEM)
    registrar.sampler("short-sampler", f"{_C}:ShortSampler", options=_SAMPLER)
    registrar.sampler("dict-sampler", f"{_C}:DictSampler", options=_SAMPLER)
    registrar.algorithm("vector-loss", f"{_C}:VectorLoss")
    registrar.algorithm("pathless-loss", f"{_C}:PathlessLoss")
    registrar.algorithm("dict-collate", f"{_C}:DictCollate")
'''

RUN = """\
system = "{system}"
scorer = "{scorer}"
sampler = "{sampler}"
algorithm = "{algorithm}"
evaluator = "none"

[training]
training_steps = 4
num_episodes_per_experience = 2
batch_size = 4
lr = 0.01
checkpoint_every = 1

[[callbacks]]
name = "progress"
enabled = false

[[callbacks]]
name = "breakers-arm"
step = 2
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the third-party plugin package and its distribution metadata."""
    root = tmp_path_factory.mktemp("site")
    package = root / "astra_contract_breakers"
    package.mkdir()
    (package / "__init__.py").write_text(REGISTRATION, encoding="utf-8")
    (package / "components.py").write_text((HERE / "contract_breakers.py").read_text(encoding="utf-8"))
    info = root / "astra_contract_breakers-0.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: astra-contract-breakers\nVersion: 0.2\n")
    (info / "entry_points.txt").write_text("[astra_core]\nbreakers = astra_contract_breakers\n")
    (info / "top_level.txt").write_text("astra_contract_breakers\n")
    return root


@dataclass
class Outcome:
    code: int
    stderr: str
    run_dir: Path

    @property
    def line(self) -> str:
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("astra: error: "), self.stderr
        return lines[0]


def train(plugin_path: Path, tmp_path: Path, **components: str) -> Outcome:
    names = {"system": "toy", "scorer": "toy", "sampler": "toy", "algorithm": "breakers-dpo", **components}
    run_file = tmp_path / "run.toml"
    run_file.write_text(RUN.format(**names), encoding="utf-8")
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_path), os.environ.get("PYTHONPATH")]))}
    env.pop("ASTRA_PLUGINS", None)
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "astra_core.cli", "train", str(run_file), "--output", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    return Outcome(result.returncode, result.stderr, run_dir)


def assert_breach_after_two_steps(outcome: Outcome, *fragments: str) -> None:
    """Exit 2, one stderr line naming the plugin and each fragment, no traceback; the two steps
    before the breach kept their checkpoints and metrics; the traceback is in the run's log."""
    assert outcome.code == 2, outcome.stderr
    assert "Traceback" not in outcome.stderr
    line = outcome.line
    assert f"(plugin {PLUGIN})" in line, line
    for fragment in fragments:
        assert fragment in line, line
    run_dir = outcome.run_dir
    assert (run_dir / "config.json").is_file() and (run_dir / "run.toml").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    records = [json.loads(text) for text in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [record["step"] for record in records if "loss" in record] == [1, 2]
    log = (run_dir / "astra.log").read_text(encoding="utf-8")
    assert "Traceback" in log and "ComponentContractError" in log
    assert f"traceback in {run_dir / 'astra.log'}" in line


# --- every breach, from a third-party plugin, end to end ----------------------------------------


@pytest.mark.parametrize(
    ("components", "fragments"),
    [
        (
            {"system": "nan-logprobs"},
            ["system 'nan-logprobs'", "NaNLogprobs.tester_logprobs(", "returned nan", "never NaN"],
        ),
        (
            {"system": "negated-logprobs"},
            ["system 'negated-logprobs'", "NegatedLogprobs.baseline_logprobs(", "log-probs are <= 0"],
        ),
        (
            {"system": "short-logprobs"},
            ["ShortLogprobs.baseline_logprobs(", "contexts) returned shape (", "one per (context, continuation) pair"],
        ),
        (
            {"system": "column-logprobs"},
            ["ColumnLogprobs.tester_logprobs(", ", 1); log-probs have shape ("],
        ),
        (
            {"system": "detached-logprobs"},
            ["DetachedLogprobs.tester_logprobs(", "carry no gradient"],
        ),
        (
            {"system": "pair-system"},
            ["system 'pair-system'", "PairSystem.tester_pair_logprobs(", "(item 1 of the tuple)", "<= 0"],
        ),
        (
            {"scorer": "short-scorer"},
            ["scorer 'short-scorer'", "ShortScorer.score(", "one score per item"],
        ),
        (
            {"scorer": "loud-scorer"},
            ["scorer 'loud-scorer'", "LoudScorer.score(", "returned 1.5 at index 0", "in [0, 1]"],
        ),
        (
            {"scorer": "nan-scorer"},
            ["scorer 'nan-scorer'", "NaNScorer.score(", "returned nan at index 0", "finite"],
        ),
        (
            {"sampler": "short-sampler"},
            ["sampler 'short-sampler'", "ShortSampler.rollouts(2) returned 1 episodes", "exactly 2"],
        ),
        (
            {"sampler": "dict-sampler"},
            ["sampler 'dict-sampler'", "DictSampler.rollouts(2) returned a dict at index 0", "rollout trees"],
        ),
        (
            {"algorithm": "vector-loss"},
            ["algorithm 'vector-loss'", "VectorLoss.loss(", "a loss that is a Tensor of shape (", "0-dim"],
        ),
        (
            {"algorithm": "dict-collate"},
            ["algorithm 'dict-collate'", "DictCollate.loss(", "raised AttributeError", "collate_fn()", "loss()"],
        ),
    ],
    ids=[
        "logprob-nan",
        "logprob-positive",
        "logprob-length",
        "logprob-shape",
        "logprob-no-gradient",
        "optional-pair-logprobs",
        "scorer-count",
        "scorer-range",
        "scorer-nan",
        "sampler-count",
        "sampler-type",
        "loss-not-scalar",
        "collate-mismatch",
    ],
)
def test_a_third_party_plugin_breaking_a_contract_stops_the_run_in_one_line(
    plugin_path: Path, tmp_path: Path, components: dict[str, str], fragments: list[str]
) -> None:
    assert_breach_after_two_steps(train(plugin_path, tmp_path, **components), *fragments)


def test_a_raising_method_leaves_its_own_traceback_in_the_log(plugin_path: Path, tmp_path: Path) -> None:
    outcome = train(plugin_path, tmp_path, system="raising-system")
    assert_breach_after_two_steps(
        outcome, "system 'raising-system'", "RaisingSystem.rollout_target(", "raised RuntimeError", "unreachable"
    )
    log = (outcome.run_dir / "astra.log").read_text(encoding="utf-8")
    assert "RuntimeError: the target's server is unreachable" in log
    assert "in rollout_target" in log  # the plugin's frame, for its author


def test_a_loss_with_no_gradient_path_stops_the_first_step(plugin_path: Path, tmp_path: Path) -> None:
    # Checked on the first call (a graph walk), so the run stops before any step is written.
    outcome = train(plugin_path, tmp_path, algorithm="pathless-loss")
    assert outcome.code == 2 and "Traceback" not in outcome.stderr
    line = outcome.line
    assert f"algorithm 'pathless-loss' (plugin {PLUGIN}): PathlessLoss.loss(" in line
    assert "no gradient path to any of parameters()" in line
    assert (outcome.run_dir / "config.json").is_file() and (outcome.run_dir / "run.toml").is_file()
    assert not (outcome.run_dir / "checkpoints").exists() or not any((outcome.run_dir / "checkpoints").iterdir())


class _Node:
    """A C++ autograd node as torch exposes it: its Python wrapper lives only while referenced,
    and the next access after it is freed makes a new one (which may reuse a freed id)."""

    def __init__(self, children: list[_Node], variable: torch.Tensor | None = None) -> None:
        self.children, self.variable = children, variable
        self.wrapper: Any = None

    def wrap(self) -> Any:
        import weakref

        live = self.wrapper() if self.wrapper is not None else None
        if live is None:
            live = _Wrapper(self)
            self.wrapper = weakref.ref(live)
        return live


class _Wrapper:
    def __init__(self, node: _Node) -> None:
        self._node = node
        if node.variable is not None:
            self.variable = node.variable

    @property
    def next_functions(self) -> tuple[tuple[Any, int], ...]:
        return tuple((child.wrap(), 0) for child in self._node.children)


def test_the_gradient_path_walk_holds_on_to_transient_graph_nodes() -> None:
    # A long chain with side branches, as a transformer's graph has: a walk that keys visited
    # nodes by the id of wrappers it lets go of takes a new wrapper for one already seen.
    weight = torch.nn.Parameter(torch.ones(2))
    node = _Node([], variable=weight)
    for _ in range(200):
        node = _Node([node, _Node([]), _Node([])])
    loss: Any = type("Loss", (), {"grad_fn": property(lambda self: node.wrap())})()
    holder: Any = type("Holder", (), {"parameters": lambda self: iter([weight])})()
    guarded: Any = type("GuardedLike", (), {"__guard_component__": holder})()
    assert contracts._reaches(loss, guarded)
    stranger: Any = type("Holder", (), {"parameters": lambda self: iter([torch.nn.Parameter(torch.ones(2))])})()
    assert not contracts._reaches(loss, type("GuardedLike", (), {"__guard_component__": stranger})())


def test_the_breakers_train_cleanly_until_armed(plugin_path: Path, tmp_path: Path) -> None:
    # The control: unarmed (the arming step is past the last), the breakers train to the end.
    (tmp_path / "late").mkdir()
    text = RUN.replace("step = 2", "step = 99")
    names = {"system": "pair-system", "scorer": "nan-scorer", "sampler": "dict-sampler", "algorithm": "dict-collate"}
    (tmp_path / "late" / "run.toml").write_text(text.format(**names), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_path), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "astra_core.cli", "train", "run.toml", "--output", "run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path / "late",
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


# --- hand-wired components --------------------------------------------------------------------


def test_hand_wired_components_given_to_the_trainer_are_guarded(kit: Kit) -> None:
    parts = kit.parts()
    trainer = kit.trainer(kit.config(training_steps=1), parts)
    sampler, algorithm = trainer.harness.sampler, trainer.harness.algorithm
    assert type(sampler) is Guarded and type(algorithm) is Guarded
    assert isinstance(sampler, ToySampler) and contracts.unwrap(sampler) is parts.sampler
    # Their dependencies are re-pointed to guards, so the sampler's and the algorithm's own calls
    # to the system and the scorer are checked too.
    held: Any = parts.sampler.system
    assert type(held) is Guarded and parts.algorithm.system is held
    assert type(parts.sampler.scorer) is Guarded
    trainer.train()


def test_a_hand_wired_scorer_returning_nan_is_named_on_first_use(kit: Kit) -> None:
    parts = kit.parts(scorer=kit.NaNScorer())
    trainer = kit.trainer(kit.config(training_steps=1), parts)
    with pytest.raises(ComponentContractError, match=r"^scorer NaNScorer \(module .*\): NaNScorer\.score\(8 turns\) "):
        trainer.train()


def test_a_hand_wired_component_is_named_by_its_module_and_distribution() -> None:
    origin = contracts.origin_of(ToySampler(ToySystem(), ToyScorer()), "sampler")
    assert (origin.component, origin.module) == ("ToySampler", "astra_core.testing.toy")
    assert origin.distribution is not None and origin.distribution.startswith("astra-core ")
    assert str(origin) == f"sampler ToySampler (module astra_core.testing.toy, distribution {origin.distribution})"


def test_a_nonfinite_loss_is_numerical_trouble_not_a_breach(kit: Kit) -> None:
    # The NaN policy: a NaN loss is skipped and counted by the Trainer (tests/test_trainer.py);
    # the contract only asks for a floating scalar with a gradient.
    parts = kit.parts(algorithm=lambda system: kit.NaNLossAfter(system, after=0, keep_ties=True))
    history = kit.trainer(kit.config(training_steps=1), parts).train()
    assert history[-1]["skipped_updates"] >= 1 and history[-1]["nonfinite_total"] >= 1


def test_negative_infinity_is_a_valid_logprob() -> None:
    class Impossible(ToySystem):
        def baseline_logprobs(self, contexts: Sequence[str], continuations: Sequence[str], reduction: Any = "") -> Any:
            return torch.full((len(contexts),), -math.inf)

    system = guard("system", Impossible())
    assert system.baseline_logprobs(["a"], ["hello there friend"]).tolist() == [-math.inf]


# --- what the wrapper covers, read from the protocols -----------------------------------------


def test_every_protocol_method_of_every_kind_has_a_check_by_what_it_returns() -> None:
    expected = {
        "scorer": {"score": "scores"},
        "system": {
            "tester_logprobs": "log-probs",
            "baseline_logprobs": "log-probs",
            "target_logprobs": "log-probs",
            "rollout_tester": "one output per input",
            "rollout_target": "one output per input",
            "opening": "call",
            "advance": "call",
            "join": "call",
            "parameters": "parameters",
            "state_features": "one row per input",
            "tester_pair_logprobs": "log-probs",
            "turn_text": "call",
            "save_pretrained": "call",
            "named_parameters": "named parameters",
        },
        "sampler": {
            "rollouts": "rollout trees",
            "eval_rollouts": "rollout trees",
            "state_dict": "JSON data",
            "load_state_dict": "call",
        },
        "algorithm": {"flatten": "sequence", "collate_fn": "call", "loss": "loss", "parameters": "parameters"},
        "evaluator": {"evaluate": "evaluation report", "compare": "call"},
        "callback": {"on_train_begin": "call", "on_step_end": "call", "on_evaluate": "call", "on_train_end": "call"},
        "optimizer": {},
        "scheduler": {},
    }
    found = {kind: {n: c.what for n, c in contracts.method_contracts(kind).items()} for kind in KINDS_TABLE}
    assert found == expected
    algorithm = contracts.method_contracts("algorithm")
    assert (algorithm["loss"].consumes, algorithm["collate_fn"].consumes) == ("collate_fn", "flatten")


def test_optional_methods_are_checked_and_absent_ones_stay_absent() -> None:
    class Pairs(ToySystem):
        def tester_pair_logprobs(self, contexts: Any, chosen: Any, rejected: Any, reduction: Any = "sum") -> Any:
            return self.tester_logprobs(contexts, chosen), self.tester_logprobs(contexts, rejected)[:1]

    plain = guard("system", ToySystem())
    assert isinstance(plain, FeatureSystem) and not isinstance(plain, PairLogprobSystem)
    assert not hasattr(plain, "tester_pair_logprobs")
    pairs = guard("system", Pairs())
    assert isinstance(pairs, PairLogprobSystem)
    with pytest.raises(ComponentContractError, match=r"tester_pair_logprobs\(2 contexts\) returned shape \(1,\)"):
        pairs.tester_pair_logprobs(["a", "b"], ["hello there friend"] * 2, ["nice day ok"] * 2)
    with pytest.raises(ComponentContractError, match=r"state_features\(1 contexts\) returned a list"):
        guard("system", _ListFeatures()).state_features(["a"])


class _ListFeatures(ToySystem):
    def state_features(self, contexts: Sequence[str]) -> Any:
        return [[0.0]] * len(contexts)


@dataclass(frozen=True)
class FrozenSampler:
    """A frozen dataclass sampler: patching methods onto it is impossible, wrapping it is not."""

    system: Any
    scorer: Any

    def eval_rollouts(self, prompts: Sequence[str]) -> list[Graph[str, str]]:
        return [Graph(prompt) for prompt in prompts]

    def rollouts(self, count: int) -> list[Graph[str, str]]:
        return ToySampler(self.system, self.scorer).rollouts(count)[: count - 1]


class SlottedScorer:
    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0

    def score(self, turns: Sequence[Turn[str, str]]) -> list[float]:
        self.calls += 1
        return [2.0] * len(turns)


def test_frozen_and_slotted_components_are_checked() -> None:
    sampler = guard("sampler", FrozenSampler(ToySystem(), SlottedScorer()))
    assert type(sampler.system) is Guarded and type(sampler.scorer) is Guarded
    with pytest.raises(ComponentContractError, match=r"SlottedScorer\.score\(\d+ turns\) returned 2\.0"):
        sampler.rollouts(2)
    with pytest.raises(ComponentContractError, match=r"FrozenSampler\.rollouts\(2\) returned 1 episodes"):
        guard("sampler", FrozenSampler(ToySystem(), ToyScorer())).rollouts(2)


def test_guarding_is_idempotent_and_attributes_pass_through() -> None:
    raw = ToySampler(ToySystem(), ToyScorer(), tree_width=3)
    sampler = guard("sampler", raw)
    assert guard("sampler", sampler) is sampler and guard("sampler", raw) is sampler
    assert sampler.tree_width == 3
    sampler.tree_width = 2
    assert raw.tree_width == 2
    assert guard("optimizer", raw) is raw  # no run-time contract for torch's kinds


def test_astra_errors_and_os_errors_pass_through_unchanged() -> None:
    class Full(ToyScorer):
        def score_texts(self, texts: Sequence[str]) -> list[float]:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as caught:
        guard("scorer", Full()).score([Turn("", "a probe", "a response")])
    assert not isinstance(caught.value, ComponentContractError)


def test_a_samplers_checkpointed_state_must_be_json() -> None:
    class Remembers(ToySampler):
        def state_dict(self) -> Any:
            return {"seen": {"hello there"}}  # a set: json cannot write it into state.json

        def load_state_dict(self, state: Any) -> None:
            pass

    sampler = guard("sampler", Remembers(ToySystem(), ToyScorer()))
    with pytest.raises(ComponentContractError, match=r"Remembers\.state_dict\(\) returned data that is not JSON"):
        sampler.state_dict()
