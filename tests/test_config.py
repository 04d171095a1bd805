"""TrainingConfiguration, component references and the run file: defaults and clear errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from astra_core.config import ComponentRef, RunConfig, TrainingConfiguration, load_run_file, parse_run_config
from astra_core.errors import ConfigError

if TYPE_CHECKING:
    from conftest import Kit


def test_defaults_keep_the_classic_behaviour() -> None:
    config = TrainingConfiguration()
    assert config.lr == 3e-3
    assert config.batch_size == 16
    assert config.optimizer == ComponentRef(name="adamw")
    assert config.gradient_accumulation_steps == 1
    assert config.training_steps == 1024
    assert config.num_episodes_per_experience == 8


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0),
        ("lr", -1e-3),
        ("lr", math.inf),
        ("lr", math.nan),
        ("batch_size", 0),
        ("batch_size", -4),
        ("gradient_accumulation_steps", 0),
        ("training_steps", 0),
        ("num_episodes_per_experience", 0),
        ("seed", -1),
        ("max_grad_norm", 0),
        ("max_grad_norm", math.nan),
        ("warmup_steps", -1),
        ("checkpoint_every", 0),
        ("keep_checkpoints", 0),
        ("eval_every", 0),
        ("max_nonfinite_in_a_row", 0),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        TrainingConfiguration(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("lr", -1.0), ("training_steps", -3)])
def test_invalid_values_in_a_run_file_are_config_errors_naming_source_and_key(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"run\.toml: training\.{field}: "):
        parse_run_config({"training": {field: value}}, "run.toml")


def test_unknown_training_key_is_an_error() -> None:
    with pytest.raises(ValidationError, match="batchsize"):
        TrainingConfiguration(batchsize=4)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"training\.batchsize: unknown key"):
        parse_run_config({"training": {"batchsize": 4}})


def test_unknown_top_level_table_is_an_error() -> None:
    with pytest.raises(ConfigError, match="algorithms: unknown key"):
        parse_run_config({"algorithms": "dpo"})


def test_checkpoint_every_without_output_dir_is_left_to_the_trainer() -> None:
    # The Trainer rejects it (tests/test_trainer_followups.py); a run file may rely on `astra train`'s directory.
    assert TrainingConfiguration(checkpoint_every=2).checkpoint_every == 2
    assert TrainingConfiguration(checkpoint_every=2, output_dir="run").checkpoint_every == 2


def test_assignment_is_validated() -> None:
    config = TrainingConfiguration()
    with pytest.raises(ValidationError, match="batch_size"):
        config.batch_size = 0


def test_component_ref_parses_names_tables_and_nested_options() -> None:
    assert ComponentRef.parse("sgd") == ComponentRef(name="sgd")
    assert ComponentRef.parse({"name": "sgd", "momentum": 0.9}).options == {"momentum": 0.9}
    assert ComponentRef.parse({"name": "sgd", "options": {"momentum": 0.9}}).options == {"momentum": 0.9}
    with pytest.raises(ValueError, match="'name' key"):
        ComponentRef.parse({"momentum": 0.9})
    with pytest.raises(ValueError, match="'name' must be a string"):
        ComponentRef.parse({"name": 3})


def test_optimizer_and_scheduler_take_a_name_or_a_table() -> None:
    config = TrainingConfiguration(
        optimizer={"name": "sgd", "momentum": 0.9},
        lr_scheduler="cosine",
    )
    assert config.optimizer == ComponentRef(name="sgd", options={"momentum": 0.9})
    assert config.lr_scheduler == ComponentRef(name="cosine")


def test_warmup_steps_is_folded_into_the_scheduler_options() -> None:
    config = TrainingConfiguration(warmup_steps=5, lr_scheduler="linear")
    assert config.scheduler_ref() == ComponentRef(name="linear", options={"warmup_steps": 5})
    assert TrainingConfiguration().scheduler_ref() == ComponentRef(name="constant")


def test_conflicting_warmup_settings_are_an_error() -> None:
    with pytest.raises(ValidationError, match="set only one"):
        TrainingConfiguration(warmup_steps=5, lr_scheduler={"name": "linear", "warmup_steps": 3})


def test_run_file_round_trips_through_to_dict(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'sampler = "toy"\n'
        "[training]\n"
        "lr = 0.01\n"
        "batch_size = 4\n"
        'optimizer = { name = "sgd", momentum = 0.5 }\n'
        "[algorithm]\n"
        'name = "dpo"\n'
        "beta = 0.2\n"
        "[[callbacks]]\n"
        'name = "jsonl"\n',
        encoding="utf-8",
    )
    config = load_run_file(path)
    assert config.training.lr == 0.01
    assert config.training.optimizer.options == {"momentum": 0.5}
    assert config.sampler == ComponentRef(name="toy")
    assert config.algorithm == ComponentRef(name="dpo", options={"beta": 0.2})
    assert [c.name for c in config.callbacks] == ["jsonl"]
    assert parse_run_config(config.to_dict()) == config


def test_evaluator_none_disables_it() -> None:
    assert RunConfig.model_validate({"evaluator": "none"}).evaluator is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such run file"),
        (b"[training\n", "invalid TOML"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_unreadable_run_files_are_config_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "run.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_run_file(path)


def toy_registries(algorithm: Any) -> Any:
    """The core's registries plus an in-process plugin registering `algorithm` as "toy-dpo"."""
    import os

    from astra_core.hooks import hookimpl
    from astra_core.plugins import discover
    from astra_core.registry import Registrar

    class Plugin:
        @hookimpl
        def astra_register(self, registrar: Registrar) -> None:
            registrar.algorithm("toy-dpo", algorithm, summary="the tests' DPO")

    saved = os.environ.get("ASTRA_PLUGINS")
    os.environ["ASTRA_PLUGINS"] = "core"
    try:
        return discover(extra=[("tests", Plugin())]).registries
    finally:
        if saved is None:
            del os.environ["ASTRA_PLUGINS"]
        else:
            os.environ["ASTRA_PLUGINS"] = saved


def test_resolve_validates_everything_then_build_wires_dependencies_in_order(kit: Kit) -> None:
    from astra_core.build import build, resolve

    registries = toy_registries(kit.ToyDPO)
    config = parse_run_config(
        {
            "training": {"optimizer": {"name": "sgd", "momentum": 0.5}, "warmup_steps": 2},
            "scorer": "toy",
            "system": {"name": "toy", "probe_length": 2},
            "sampler": {"name": "toy", "tree_width": 3},
            "algorithm": {"name": "toy-dpo", "beta": 0.25},
            "evaluator": "none",
            "callbacks": ["jsonl"],
        }
    )
    resolved = resolve(config, registries)
    described = resolved.describe()
    assert described["training"]["optimizer"]["options"]["momentum"] == 0.5
    assert described["training"]["lr_scheduler"]["options"] == {"warmup_steps": 2}
    assert described["sampler"]["options"] == {"tree_width": 3, "tree_depth": 2}
    assert described["algorithm"]["options"] == {"beta": 0.25, "keep_ties": False}

    built = build(resolved)
    assert built.sampler.scorer is built.scorer and built.system.probe_length == 2
    assert built.sampler.system is built.system and built.sampler.tree_width == 3
    assert built.algorithm.system is built.system and built.algorithm.beta == 0.25
    assert built.evaluator is None
    assert [type(c).__name__ for c in built.callbacks] == ["MetricsJSONL"]


def test_resolve_reports_a_bad_option_before_building_anything(kit: Kit) -> None:
    from astra_core.build import resolve
    from astra_core.errors import OptionsError

    config = parse_run_config(
        {"scorer": "toy", "system": {"name": "toy", "probe_length": 0}, "sampler": "toy", "algorithm": "toy-dpo"}
    )
    with pytest.raises(OptionsError, match=r"bad options for system 'toy': probe_length"):
        resolve(config, toy_registries(kit.ToyDPO))
