"""Follow-ups in the core: where cross-field checks live, unknown-key hints, shared weight
loading, seeding before building, strict JSON from evaluations, and `astra train --nproc`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import astra_core
from astra_core import checkpoint as ckpt
from astra_core.cli import common as cli
from astra_core.config import load_run_file, parse_run_config, read_run_file
from astra_core.errors import CheckpointError, ConfigError
from astra_core.protocols import EvaluationReport
from astra_core.trainer import seed_everything, trainable_parameters

# --- 1. checkpoint_every without output_dir: the Trainer's call, not the run file's -----------


def test_a_run_file_may_set_checkpoint_every_without_output_dir(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[training]\ncheckpoint_every = 2\n", encoding="utf-8")
    assert load_run_file(path).training.checkpoint_every == 2


def test_the_trainer_rejects_checkpoint_every_without_output_dir(kit: Any) -> None:
    with pytest.raises(ConfigError, match=r"checkpoint_every is set but training\.output_dir is not"):
        kit.trainer(kit.config(checkpoint_every=2), kit.parts())


def test_read_run_file_returns_the_raw_data_and_checks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('algorithm = "dpo"\n[training]\nlr = 0.5\n', encoding="utf-8")
    assert read_run_file(path) == {"algorithm": "dpo", "training": {"lr": 0.5}}
    with pytest.raises(ConfigError, match="no such run file"):
        read_run_file(tmp_path / "missing.toml")
    path.write_text("[training\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"run\.toml: invalid TOML"):
        read_run_file(path)


def test_the_cli_no_longer_keeps_its_own_copies() -> None:
    for copy in ("_read_run_text", "_check_keys", "_unknown_key", "_unique_trainable"):
        assert not hasattr(cli, copy), copy


# --- 2. unknown keys: did-you-mean and the valid keys, from config.py ----------------------------


def test_an_unknown_training_key_suggests_the_closest_and_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_run_config({"training": {"batchsize": 4}}, "run.toml")
    message = str(caught.value)
    assert message.startswith("run.toml: training.batchsize: unknown key")
    assert "did you mean 'batch_size'?" in message
    assert "valid [training] keys: lr, batch_size, optimizer" in message
    assert "\n" not in message


def test_an_unknown_top_level_key_lists_the_component_kinds() -> None:
    with pytest.raises(
        ConfigError, match=r"algoritm: unknown key .*did you mean 'algorithm'\? valid top-level keys: training, scorer"
    ):
        parse_run_config({"algoritm": "dpo"}, "run.toml")


def test_a_key_with_no_close_match_gets_no_guess() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_run_config({"training": {"zzzz": 1}}, "run.toml")
    assert "did you mean" not in str(caught.value) and "valid [training] keys" in str(caught.value)


# --- 3. one weight loader for resume and evaluate -------------------------------------------------


def test_trainable_parameters_skips_frozen_and_repeated_ones() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    assert trainable_parameters([a, b, a]) == [a]


def test_load_weights_restores_what_the_trainer_saved(kit: Any, tmp_path: Path) -> None:
    trainer = kit.trainer(kit.config(training_steps=2, output_dir=str(tmp_path)), kit.parts())
    trainer.train()
    fresh = kit.parts()
    assert not all(torch.equal(a, b) for a, b in zip(fresh.system.parameters(), trainer.parameters, strict=True))
    checkpoint = ckpt.latest_checkpoint(tmp_path)
    assert checkpoint is not None
    ckpt.load_weights(checkpoint, trainable_parameters(fresh.algorithm.parameters()))
    for loaded, saved in zip(fresh.system.parameters(), trainer.parameters, strict=True):
        assert torch.equal(loaded, saved)


def test_load_weights_rejects_another_model(kit: Any, tmp_path: Path) -> None:
    kit.trainer(kit.config(training_steps=1, output_dir=str(tmp_path)), kit.parts()).train()
    checkpoint = ckpt.latest_checkpoint(tmp_path)
    assert checkpoint is not None
    with pytest.raises(CheckpointError, match="different model"):
        ckpt.load_weights(checkpoint, [torch.nn.Parameter(torch.zeros(3))])
    wrong_shapes = [torch.nn.Parameter(torch.zeros(1)) for _ in trainable_parameters(kit.parts().system.parameters())]
    with pytest.raises(CheckpointError, match="parameter 0 is of shape"):
        ckpt.load_weights(checkpoint, wrong_shapes)


# --- 4. seeding before building ----------------------------------------------------------------


def test_seed_everything_is_exported_lazily() -> None:
    assert astra_core.seed_everything is seed_everything
    assert "seed_everything" in astra_core.__all__


def test_seeding_before_building_repeats_random_initialisation() -> None:
    def build() -> torch.Tensor:
        return torch.nn.Linear(3, 3).weight.detach().clone()  # a component initialised from the global RNG

    seed_everything(5)
    first = build()
    seed_everything(5)
    assert torch.equal(build(), first)


# --- 5. strict JSON from evaluations ---------------------------------------------------------


class NaNEvaluator:
    """An evaluator whose report holds non-finite numbers."""

    def evaluate(self) -> EvaluationReport:
        return EvaluationReport(
            metrics={"asr": math.nan, "mean": 0.5}, details={"scores": [math.inf, 1.0]}, markdown=""
        )


def test_evaluation_files_hold_null_for_non_finite_numbers(kit: Any, tmp_path: Path) -> None:
    parts = kit.parts()
    trainer = kit.trainer(kit.config(output_dir=str(tmp_path)), parts, evaluator=NaNEvaluator())
    trainer.evaluate()
    text = (tmp_path / "eval" / "step-00000000.json").read_text(encoding="utf-8")

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    data = json.loads(text, parse_constant=refuse)
    assert data["metrics"] == {"asr": None, "mean": 0.5}
    assert data["details"] == {"scores": [None, 1.0]}


# --- 6. astra train --nproc ----------------------------------------------------------------------

NPROC_RUN = """\
system = "toy"
scorer = "toy"
sampler = "toy"
algorithm = "dpo"
evaluator = "none"

[training]
training_steps = 2
batch_size = 4
num_episodes_per_experience = 4
lr = 0.05
checkpoint_every = 1
"""


def test_astra_train_nproc_runs_two_processes_and_rank_zero_writes_the_run(tmp_path: Path) -> None:
    from astra_core.plugins import load_plugins

    if "dpo" not in load_plugins().registries.kind("algorithm"):
        pytest.skip("needs the astra-algorithms plugin (dpo)")
    (tmp_path / "run.toml").write_text(NPROC_RUN, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "astra_core", "train", "run.toml", "--nproc", "2", "--output", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    launched = result.stdout.splitlines()[0]
    assert "--nproc_per_node=2" in launched and launched.endswith("-m astra_core train run.toml --output out")
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # one writer: each step once
    assert all(r["episodes"] == 4 for r in records)  # the global count, over both ranks
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert state["world_size"] == 2


# --- docs/scaling.md stays true ------------------------------------------------------------------

SCALING = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"


def _blocks(language: str) -> list[str]:
    return [block.split("```", 1)[0] for block in SCALING.read_text(encoding="utf-8").split(f"```{language}\n")[1:]]


def test_the_scaling_run_file_validates() -> None:
    from astra_core.build import resolve
    from astra_core.plugins import load_plugins

    (text,) = _blocks("toml")
    config = cli.run_config(cli.parse_toml(text, "scaling.md"), "scaling.md", {"output_dir": "runs/x"})
    assert (config.training.num_episodes_per_experience, config.training.batch_size) == (32, 16)
    registries = load_plugins().registries
    if any(getattr(config, k).name not in registries.kind(k) for k in ("system", "scorer", "sampler", "algorithm")):
        pytest.skip("the first-party plugins are not installed")
    assert resolve(config, registries).config.system.options["device"] == "cuda"


def test_the_scaling_python_example_runs_in_one_process(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("astra_algorithms.dpo")
    (code,) = _blocks("python")
    exec(compile(code, str(SCALING), "exec"), {})
    assert capsys.readouterr().out.strip() == "3 steps, 4 episodes in the last"
