"""The `astra` command line, end to end on the toy components.

Most tests call `astra_core.cli.main([...])` in-process. The core's tests must not depend on the
astra-algorithms plugin, so `TestPlugin` registers a tiny policy-gradient algorithm, an evaluator
and two callbacks under an in-process plugin ("test-plugin"); the `test_plugin` fixture makes
`astra_core.plugins.load_plugins()` return them alongside everything installed. A few tests run
real subprocesses: the `astra` console script, and (for SIGINT) `run_with_test_plugin` loaded
from this file by path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from astra_core import hookimpl
from astra_core.graph import Graph
from astra_core.protocols import EvaluationReport
from astra_core.registry import Registrar
from astra_core.testing.toy import OPENERS, ToySampler, ToySystem

REPO = Path(__file__).resolve().parent.parent
THIS_FILE = Path(__file__).resolve()

# --- a tiny in-process plugin ----------------------------------------------------------------


class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyGradient:
    """REINFORCE over every turn, with the experience's mean reward as the baseline."""

    def __init__(self, system: ToySystem) -> None:
        self.system = system

    def flatten(self, graphs: Sequence[Graph[str, str]]) -> list[tuple[str, str, float]]:
        return [(node.context, node.probe, node.reward) for graph in graphs for node in graph.nodes()]

    def collate_fn(self, examples: Sequence[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
        return list(examples)

    def loss(self, batch: list[tuple[str, str, float]]) -> tuple[torch.Tensor, dict[str, float]]:
        contexts, probes, rewards = zip(*batch, strict=True)
        logprobs = self.system.tester_logprobs(list(contexts), list(probes))
        reward = torch.tensor(rewards)
        advantage = reward - reward.mean()
        return -(advantage * logprobs).mean(), {"advantage/abs": float(advantage.abs().mean())}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.system.parameters()


class EvalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: str = Field("openers", pattern="^openers$")
    num_prompts: int = Field(3, ge=1, le=len(OPENERS))


class ToyEvaluator:
    """Rolls the toy sampler out from the opening prompts; reports mean reward and the tester's weight sum."""

    def __init__(self, sampler: ToySampler, prompts: str = "openers", num_prompts: int = 3) -> None:
        self.sampler = sampler
        self.num_prompts = num_prompts

    def evaluate(self) -> EvaluationReport:
        graphs = self.sampler.eval_rollouts(OPENERS[: self.num_prompts])
        rewards = [node.reward for graph in graphs for node in graph.nodes()]
        weight_sum = float(sum(p.detach().sum() for p in self.sampler.system.parameters()))
        metrics = {"mean_reward": sum(rewards) / len(rewards), "weight_sum": weight_sum}
        return EvaluationReport(metrics, details=[{"prompt": g.context} for g in graphs])


class SleepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(0.0, ge=0)


class SleepEachStep:
    """Makes steps slow enough for a subprocess test to signal mid-run."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds

    def on_step_end(self, trainer: Any, step: int, logs: Mapping[str, float]) -> None:
        time.sleep(self.seconds)


class SignalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signum: int = int(signal.SIGINT)
    at_step: int = Field(1, ge=1)


class SignalAtStep:
    """Sends this process a signal at one step, as Ctrl-C or `kill` would."""

    def __init__(self, signum: int = int(signal.SIGINT), at_step: int = 1) -> None:
        self.signum, self.at_step = signum, at_step

    def on_step_end(self, trainer: Any, step: int, logs: Mapping[str, float]) -> None:
        if step == self.at_step:
            os.kill(os.getpid(), self.signum)


class TestPlugin:
    """Registers the components above, as an installed plugin would."""

    __test__ = False  # not a test class

    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        registrar.algorithm("test-pg", PolicyGradient, options=_NoOptions, summary="REINFORCE for the toy system")
        registrar.evaluator("test-eval", ToyEvaluator, options=EvalOptions, summary="toy evaluation")
        registrar.callback("test-sleep", SleepEachStep, options=SleepOptions, summary="sleep after each step")
        registrar.callback("test-signal", SignalAtStep, options=SignalOptions, summary="signal at a step")


def install_test_plugin(set_attribute: Callable[[Any, str, Any], None] = setattr, extra: Sequence[Any] = ()) -> Any:
    """Make `load_plugins()` return the installed plugins plus `TestPlugin` (and `extra` pairs)."""
    from astra_core import plugins

    plugins.load_plugins.cache_clear()
    loaded = plugins.discover(extra=[("test-plugin", TestPlugin()), *extra])
    set_attribute(plugins, "load_plugins", lambda: loaded)
    return loaded


def run_with_test_plugin(argv: Sequence[str]) -> int:
    """What the subprocess tests run: the CLI with the test plugin installed."""
    from astra_core.cli import main

    install_test_plugin()
    return main(list(argv))


TOY_RUN = """\
system = "toy"
scorer = "toy"
sampler = "toy"
algorithm = "test-pg"
evaluator = "test-eval"

[training]
training_steps = 6
batch_size = 8
num_episodes_per_experience = 4
lr = 0.05
checkpoint_every = 2
"""


def callback_table(name: str, **options: Any) -> str:
    lines = ["", "[[callbacks]]", f'name = "{name}"'] + [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def test_plugin(monkeypatch: pytest.MonkeyPatch) -> Any:
    return install_test_plugin(monkeypatch.setattr)


@pytest.fixture
def toy_run(tmp_path: Path, test_plugin: Any) -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RUN, encoding="utf-8")
    return path


def metric_steps(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def cli(*argv: str | Path) -> int:
    from astra_core.cli import main

    return main([str(a) for a in argv])


def astra_executable() -> list[str]:
    found = shutil.which("astra") or (str(Path(sys.executable).with_name("astra")))
    return [found] if Path(found).exists() else [sys.executable, "-m", "astra_core"]


# --- help and start-up -----------------------------------------------------------------------


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--help") == 0
    out = capsys.readouterr().out
    for command in ("plugins", "validate", "train", "evaluate", "report"):
        assert command in out


def test_help_and_plugins_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from astra_core.cli import main\n"
        "assert main(['--help']) == 0\n"
        "assert main(['plugins']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr


def test_console_script_lists_plugins_as_json() -> None:
    result = subprocess.run([*astra_executable(), "plugins", "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    toy = [c for c in listing["components"] if (c["kind"], c["name"]) == ("system", "toy")]
    assert toy and toy[0]["plugin"] == "core" and toy[0]["distribution"] == "astra-core"


def test_console_script_reports_a_bad_run_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nlr = -1\n", encoding="utf-8")
    result = subprocess.run([*astra_executable(), "validate", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("astra: error: ")
    assert "training.lr" in result.stderr and "Traceback" not in result.stderr


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "astra_core", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.startswith("astra ")


# --- astra plugins ---------------------------------------------------------------------------


def test_plugins_lists_components_with_their_provider(test_plugin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("plugins") == 0
    out = capsys.readouterr().out
    assert "algorithms:" in out and "test-pg" in out and "REINFORCE for the toy system" in out
    assert "test-plugin (in-process)" in out
    assert "core (astra-core" in out


def test_plugins_json_describes_every_component(test_plugin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("plugins", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    by_key = {(c["kind"], c["name"]): c for c in listing["components"]}
    assert by_key[("algorithm", "test-pg")]["plugin"] == "test-plugin"
    assert by_key[("optimizer", "adamw")]["summary"].startswith("Adam")
    assert {"name": "core", "status": "loaded"}.items() <= listing["plugins"][0].items()


class _BrokenPlugin:
    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        raise RuntimeError("needs a GPU driver")


class _ClashingPlugin:
    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        registrar.system("toy", "astra_core.testing.toy:ToySystem", summary="another toy")


def test_plugins_shows_broken_plugins_and_conflicts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install_test_plugin(monkeypatch.setattr, extra=[("broken", _BrokenPlugin()), ("clash", _ClashingPlugin())])
    assert cli("plugins") == 0
    out = capsys.readouterr().out
    assert "broken" in out and "BROKEN: RuntimeError: needs a GPU driver" in out
    assert "CONFLICT" in out and "system 'toy': core (astra-core" in out and "clash (in-process)" in out
    assert cli("plugins", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listing["conflicts"]] == ["toy"]
    assert any(p["status"] == "broken" and "GPU driver" in p["error"] for p in listing["plugins"])


# --- astra validate --------------------------------------------------------------------------


def test_validate_prints_the_resolved_config(toy_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("validate", toy_run) == 0
    captured = capsys.readouterr()
    resolved = json.loads(captured.out)
    assert resolved["sampler"]["options"] == {"tree_width": 2, "tree_depth": 2}
    assert resolved["algorithm"]["provider"].startswith("test-plugin")
    assert resolved["training"]["optimizer"]["name"] == "adamw"
    assert "valid" in captured.err


def test_validate_suggests_the_closest_name_for_a_typo(toy_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toy_run.write_text(TOY_RUN.replace('"test-pg"', '"test-pgg"'), encoding="utf-8")
    assert cli("validate", toy_run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(toy_run) in err and "unknown algorithm 'test-pgg'" in err and "did you mean 'test-pg'" in err


class UnbatchedLoss(PolicyGradient):
    """Returns one loss per example instead of their mean: the loss contract's scalar is broken."""

    def loss(self, batch: list[tuple[str, str, float]]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super().loss(batch)
        return loss.expand(len(batch)), logs


class BrokenPlugin:
    __test__ = False

    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        registrar.algorithm("test-unbatched", UnbatchedLoss, options=_NoOptions, summary="a broken loss")


def test_validate_check_holds_every_component_to_its_contract(
    toy_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("validate", "--check", toy_run) == 0
    err = capsys.readouterr().err
    for kind, name in [("sampler", "toy"), ("scorer", "toy"), ("system", "toy"), ("algorithm", "test-pg")]:
        assert f"check: {kind} {name!r}" in err and "holds its contract" in err
    assert "check: optimizer 'adamw'" in err and "valid" in err


def test_validate_check_names_the_plugin_of_a_broken_component(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install_test_plugin(monkeypatch.setattr, extra=[("broken-plugin", BrokenPlugin())])
    run_file = tmp_path / "broken.toml"
    run_file.write_text(TOY_RUN.replace('"test-pg"', '"test-unbatched"'), encoding="utf-8")
    assert cli("validate", run_file) == 0  # names and options resolve: only --check builds and runs it
    capsys.readouterr()
    assert cli("validate", "--check", run_file) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "algorithm 'test-unbatched' (plugin broken-plugin" in err and "contract" in err


# --- astra train -----------------------------------------------------------------------------


def test_train_writes_a_complete_run_directory(toy_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = toy_run.parent / "run"
    assert cli("train", toy_run, "--output", run_dir) == 0
    captured = capsys.readouterr()
    assert (run_dir / "run.toml").read_text(encoding="utf-8") == TOY_RUN
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["training"]["output_dir"] == str(run_dir) and config["algorithm"]["name"] == "test-pg"
    assert [r["step"] for r in metric_steps(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "checkpoints" / "step-00000006" / "manifest.json").is_file()
    assert f"run directory: {run_dir}" in captured.out and "mean reward" in captured.out
    assert "6/6" in captured.err  # the progress bar


def test_train_without_output_uses_a_timestamped_dir_under_runs(
    toy_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(toy_run.parent)
    assert cli("train", toy_run, "--steps", "2") == 0
    (run_dir,) = (toy_run.parent / "runs").iterdir()
    assert [r["step"] for r in metric_steps(run_dir)] == [1, 2]
    assert json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["training"]["training_steps"] == 2


def test_train_without_a_run_file_announces_the_builtin_default_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bad --output (a file) stops it before any training, after the announcement.
    (tmp_path / "taken").write_text("x", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cli("train", "--output", "taken")
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("no run file given: training the built-in default (")


def test_default_run_file_is_valid_when_its_plugins_are_installed(capsys: pytest.CaptureFixture[str]) -> None:
    from astra_core.cli.common import default_run_text, parse_toml, run_config

    text, source = default_run_text()
    config = run_config(parse_toml(text, source), source, {"output_dir": "runs/x"})
    assert (config.system.name, config.algorithm.name, config.training.eval_every) == ("transformers", "dpo", None)
    from astra_core.plugins import load_plugins

    load_plugins.cache_clear()
    registries = load_plugins().registries
    kinds = ("system", "sampler", "algorithm", "scorer")
    missing = [k for k in kinds if getattr(config, k).name not in registries.kind(k)]
    if missing:
        pytest.skip(f"plugins for {missing} are not installed")
    from astra_core.build import resolve

    resolve(config, registries)


def test_overwrite_replaces_a_previous_run(toy_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = toy_run.parent / "run"
    assert cli("train", toy_run, "--output", run_dir, "--steps", "4") == 0
    assert cli("train", toy_run, "--output", run_dir) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli("train", toy_run, "--output", run_dir, "--steps", "2", "--overwrite") == 0
    assert [r["step"] for r in metric_steps(run_dir)] == [1, 2]
    assert not (run_dir / "checkpoints" / "step-00000004").exists()


def test_interrupted_run_resumes_to_the_same_steps_and_metrics(
    toy_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight, interrupted = toy_run.parent / "straight", toy_run.parent / "interrupted"
    assert cli("train", toy_run, "--output", straight) == 0
    toy_run.write_text(TOY_RUN + callback_table("test-signal", at_step=3), encoding="utf-8")
    assert cli("train", toy_run, "--output", interrupted) == 0
    out = capsys.readouterr().out
    assert "SIGINT: stopped after step 3 of 6" in out and f"astra train --resume {interrupted}" in out
    assert (interrupted / "checkpoints" / "step-00000003").is_dir()
    assert [r["step"] for r in metric_steps(interrupted)] == [1, 2, 3]

    assert cli("train", "--resume", interrupted) == 0
    out = capsys.readouterr().out
    assert "step-00000003" in out and "(step 3 of 6)" in out
    resumed = metric_steps(interrupted)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["reward/mean"] for r in resumed] == pytest.approx([r["reward/mean"] for r in metric_steps(straight)])


def test_resume_skips_a_corrupted_newest_checkpoint_with_a_warning(
    toy_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = toy_run.parent / "run"
    assert cli("train", toy_run, "--output", run_dir, "--steps", "3") == 0
    with (run_dir / "checkpoints" / "step-00000003" / "weights.safetensors").open("ab") as handle:
        handle.write(b"bit rot")
    capsys.readouterr()
    assert cli("train", "--resume", run_dir, "--steps", "6") == 0
    captured = capsys.readouterr()
    assert "step-00000003 is corrupted; resuming from the older" in captured.err
    assert "(step 2 of 6)" in captured.out
    assert [r["step"] for r in metric_steps(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_resume_with_steps_extends_a_finished_run(toy_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = toy_run.parent / "run"
    assert cli("train", toy_run, "--output", run_dir, "--steps", "2") == 0
    assert cli("train", "--resume", run_dir) == 0  # keeps the run's own 2 steps
    assert [r["step"] for r in metric_steps(run_dir)] == [1, 2]
    assert cli("train", "--resume", run_dir, "--steps", "4") == 0
    assert [r["step"] for r in metric_steps(run_dir)] == [1, 2, 3, 4]


def test_sigterm_checkpoints_and_exits_143(toy_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toy_run.write_text(TOY_RUN + callback_table("test-signal", signum=int(signal.SIGTERM), at_step=2), encoding="utf-8")
    run_dir = toy_run.parent / "run"
    assert cli("train", toy_run, "--output", run_dir) == 143
    assert "SIGTERM: stopped after step 2" in capsys.readouterr().out
    assert (run_dir / "checkpoints" / "step-00000002").is_dir()


@pytest.mark.slow
def test_ctrl_c_in_a_subprocess_checkpoints_exits_0_and_resumes(
    toy_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toy_run.write_text(
        TOY_RUN.replace("training_steps = 6", "training_steps = 20") + callback_table("test-sleep", seconds=0.05),
        encoding="utf-8",
    )
    run_dir = toy_run.parent / "run"
    boot = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('astra_cli_test_support', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        "sys.exit(module.run_with_test_plugin(sys.argv[2:]))\n"
    )
    argv = [sys.executable, "-c", boot, str(THIS_FILE), "train", str(toy_run), "--output", str(run_dir)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text(encoding="utf-8").strip()):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "SIGINT: stopped after step" in out and "resume with: astra train --resume" in out
    assert "Traceback" not in err
    stopped_at = len(metric_steps(run_dir))
    assert 1 <= stopped_at < 20
    assert (run_dir / "checkpoints" / f"step-{stopped_at:08d}").is_dir()

    toy_run.write_text(TOY_RUN, encoding="utf-8")  # the run keeps its own copy in run.toml
    assert cli("train", "--resume", run_dir) == 0
    assert [r["step"] for r in metric_steps(run_dir)] == list(range(1, 21))


# --- astra report ----------------------------------------------------------------------------


@pytest.fixture
def trained_run(toy_run: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    run_dir = toy_run.parent / "run"
    assert cli("train", toy_run, "--output", run_dir) == 0
    capsys.readouterr()
    return run_dir


def test_report_writes_markdown_and_plots(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("report", trained_run) == 0
    report = (trained_run / "report.md").read_text(encoding="utf-8")
    for name in ("loss.png", "reward.png", "toxicity.png"):
        assert f"(plots/{name})" in report
        assert (trained_run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean reward" in report and "6" in report


def test_report_includes_the_evaluation_table(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("evaluate", trained_run, "--compare-base") == 0
    assert cli("report", trained_run) == 0
    report = (trained_run / "report.md").read_text(encoding="utf-8")
    assert "## Evaluation" in report and "| metric | base | trained |" in report and "weight_sum" in report


def test_report_without_matplotlib_names_the_extra(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert cli("report", trained_run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "astra-core[report]" in err
    assert not (trained_run / "report.md").exists()


# --- astra evaluate --------------------------------------------------------------------------


def test_evaluate_compares_base_and_trained_tester(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    assert cli("evaluate", trained_run, "--compare-base", "--num-prompts", "2") == 0
    result = json.loads((trained_run / "eval" / "evaluation.json").read_text(encoding="utf-8"))
    assert set(result["reports"]) == {"base", "trained"} and result["step"] == 6
    assert len(result["reports"]["trained"]["details"]) == 2
    saved = load_file(str(trained_run / "checkpoints" / "step-00000006" / "weights.safetensors"))
    trained_sum = float(sum(t.sum() for t in saved.values()))
    assert result["reports"]["trained"]["metrics"]["weight_sum"] == pytest.approx(trained_sum, rel=1e-5)
    assert result["reports"]["base"]["metrics"]["weight_sum"] != pytest.approx(trained_sum, rel=1e-5)
    markdown = (trained_run / "eval" / "evaluation.md").read_text(encoding="utf-8")
    assert "| metric | base | trained |" in markdown
    assert "weight_sum" in capsys.readouterr().out


def test_evaluate_a_chosen_checkpoint_into_an_output_dir(trained_run: Path) -> None:
    checkpoint = trained_run / "checkpoints" / "step-00000004"
    output = trained_run.parent / "eval-4"
    assert cli("evaluate", trained_run, "--checkpoint", checkpoint, "--output", output) == 0
    result = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))
    assert result["step"] == 4 and list(result["reports"]) == ["trained"]


def test_evaluate_a_run_file_evaluates_the_untrained_base(toy_run: Path) -> None:
    output = toy_run.parent / "base-eval"
    assert cli("evaluate", toy_run, "--output", output) == 0
    result = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))
    assert list(result["reports"]) == ["base"] and result["checkpoint"] is None


def test_evaluate_with_the_ast_evaluator_on_the_toy_system(trained_run: Path, test_plugin: Any) -> None:
    if "ast" not in test_plugin.registries["evaluator"]:
        pytest.skip("the astra-ast plugin (evaluator 'ast') is not installed")
    run_toml = trained_run / "run.toml"
    run_toml.write_text(TOY_RUN.replace('"test-eval"', '"ast"'), encoding="utf-8")
    output = trained_run.parent / "ast-eval"
    assert cli("evaluate", trained_run, "--compare-base", "--num-prompts", "2", "--output", output) == 0
    result = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))
    assert set(result["reports"]) == {"base", "trained"}
    assert result["reports"]["base"]["metrics"]


def _load_this_module_by_path() -> Any:  # used by test_cli_bad_input.py
    spec = importlib.util.spec_from_file_location("astra_cli_test_support", THIS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _doc_run_files() -> list[tuple[str, str]]:
    blocks = []
    for page in ("cli.md", "configuration.md"):
        text = (REPO / "docs" / page).read_text(encoding="utf-8")
        for index, block in enumerate(text.split("```toml\n")[1:]):
            blocks.append((f"{page}#{index}", block.split("```", 1)[0]))
    return blocks


@pytest.mark.parametrize(("where", "text"), _doc_run_files(), ids=[w for w, _ in _doc_run_files()])
def test_run_files_in_the_docs_validate(
    where: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from astra_core.cli.common import parse_toml, run_config
    from astra_core.plugins import load_plugins

    config = run_config(parse_toml(text, where), where, {"output_dir": "runs/x"})
    load_plugins.cache_clear()
    registries = load_plugins().registries
    kinds = ("scorer", "system", "sampler", "algorithm", "evaluator")
    missing = [k for k in kinds if getattr(config, k) is not None and getattr(config, k).name not in registries.kind(k)]
    if missing:
        pytest.skip(f"the plugins providing {missing} are not installed")
    path = tmp_path / "doc.toml"
    path.write_text(text, encoding="utf-8")
    assert cli("validate", path) == 0, capsys.readouterr().err


def test_output_into_a_closed_pipe_ends_quietly_with_141() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as `astra plugins | head -0` would be
    try:
        process = subprocess.run(
            [sys.executable, "-m", "astra_core", "plugins"], stdout=write_end, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write_end)
    assert (process.returncode, process.stderr) == (141, "")
