"""One assembly: a resolved run becomes a ready Trainer, seeded and joined once, optimizer included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import torch

from astra_core import assembly, distributed
from astra_core.build import ResolvedRun, resolve
from astra_core.config import parse_run_config
from astra_core.hooks import hookimpl
from astra_core.plugins import discover
from astra_core.registry import Registrar, Registries
from astra_core.trainer import Trainer

if TYPE_CHECKING:
    from conftest import Kit


@pytest.fixture
def with_dpo(kit: Kit) -> Iterator[Registries]:
    """The core's built-in components plus the tests' ToyDPO as "toy-dpo"."""

    class Plugin:
        @hookimpl
        def astra_register(self, registrar: Registrar) -> None:
            registrar.algorithm("toy-dpo", kit.ToyDPO)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ASTRA_PLUGINS", "core")
        found = discover(extra=[("tests", Plugin())]).registries
    yield found


def toy_run(registries: Registries, **training: Any) -> ResolvedRun:
    values: dict[str, Any] = {"training_steps": 3, "num_episodes_per_experience": 4, "batch_size": 4, "lr": 0.05}
    values.update(training)
    config = parse_run_config(
        {
            "system": "toy",
            "scorer": "toy",
            "sampler": "toy",
            "algorithm": "toy-dpo",
            "evaluator": "none",
            "training": values,
        }
    )
    return resolve(config, registries)


def test_assemble_builds_the_optimizer_and_scheduler_the_run_names(with_dpo: Registries) -> None:
    run = toy_run(with_dpo, optimizer={"name": "sgd", "momentum": 0.5}, lr_scheduler="cosine", warmup_steps=1)
    trainer = assembly.assemble(run)
    assert type(trainer.optimizer).__name__ == "SGD"
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.5
    assert trainer.optimizer.param_groups[0]["params"] == trainer.parameters
    assert trainer.scheduler.optimizer is trainer.optimizer
    assert trainer.resolved_config == run.describe()
    assert len(trainer.train()) == 3


def test_assemble_seeds_and_joins_the_process_group_exactly_once(
    with_dpo: Registries, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    seed, join = assembly.seed_everything, distributed.init_from_env
    monkeypatch.setattr(assembly, "seed_everything", lambda s: (calls.append(f"seed {s}"), seed(s))[1])
    monkeypatch.setattr(distributed, "init_from_env", lambda: (calls.append("join"), join())[1])
    trainer = assembly.assemble(toy_run(with_dpo, seed=7))
    assert calls == ["join", "seed 7"]
    trainer.train()
    assert calls == ["join", "seed 7"]  # one process: no per-step reseeding either


def test_the_same_run_assembled_twice_trains_the_same(with_dpo: Registries) -> None:
    first = assembly.assemble(toy_run(with_dpo, seed=3)).train()
    torch.manual_seed(123)  # whatever happened in between
    second = assembly.assemble(toy_run(with_dpo, seed=3)).train()
    keys = [k for k in first[0] if not k.startswith("time/")]
    assert [[h[k] for k in keys] for h in first] == [[h[k] for k in keys] for h in second]


def test_an_assembled_trainer_looks_nothing_up(with_dpo: Registries, monkeypatch: pytest.MonkeyPatch) -> None:
    run = toy_run(with_dpo)

    def no_lookups(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Trainer looked a component up")

    monkeypatch.setattr("astra_core.plugins.registries", no_lookups)
    monkeypatch.setattr(Registries, "get", no_lookups)
    assert len(assembly.assemble(run).train()) == 3


def test_a_hand_wired_trainer_asks_the_assembly_for_its_optimizer(
    kit: Kit, with_dpo: Registries, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    helper = assembly.optimizer_and_scheduler
    monkeypatch.setattr(
        assembly, "optimizer_and_scheduler", lambda *a, **k: (asked.append("asked"), helper(*a, **k))[1]
    )
    config = kit.config(optimizer="rmsprop", lr_scheduler="linear")
    trainer = Trainer(config, *_parts(kit), registries=with_dpo)
    assert asked == ["asked"]
    assert type(trainer.optimizer).__name__ == "RMSprop"
    assert type(trainer.scheduler).__name__ == "LambdaLR"


def test_a_trainer_given_an_optimizer_needs_its_scheduler(kit: Kit) -> None:
    from astra_core.errors import ConfigError

    parts = kit.parts()
    optimizer = torch.optim.SGD(list(parts.system.parameters()), lr=0.1)
    with pytest.raises(ConfigError, match="needs its scheduler too"):
        Trainer(kit.config(), parts.sampler, parts.algorithm, optimizer=optimizer)


def test_a_hand_wired_and_an_assembled_run_train_alike(kit: Kit, with_dpo: Registries) -> None:
    run = toy_run(with_dpo, seed=5)
    assembled = assembly.assemble(run).train()
    wired = Trainer(run.config.training, *_parts(kit), registries=with_dpo).train()
    keys = [k for k in assembled[0] if not k.startswith("time/")]
    assert [[h[k] for k in keys] for h in assembled] == [[h[k] for k in keys] for h in wired]


def _parts(kit: Kit) -> tuple[Any, Any]:
    parts = kit.parts()
    return parts.sampler, parts.algorithm
