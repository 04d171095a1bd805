"""SIGTERM and SIGHUP at any moment of `astra train` (building models, between steps, inside a
step that does not end, saving the tester) end the process within 10 seconds with 143 / 129,
and resuming gives bitwise the weights of an uninterrupted run."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from astra_core import Registrar, hookimpl
from astra_core import checkpoint as ckpt
from astra_core.graph import Graph
from astra_core.testing.toy import ToySampler, ToySystem


def _support() -> Any:
    name = "astra_cli_test_support"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_cli.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


support = _support()
STEPS = 6
pytestmark = pytest.mark.slow  # each test starts two or three training processes


def _seconds(variable: str) -> float:
    return float(os.environ.get(variable, "0"))


class SlowToySystem(ToySystem):
    """The toy system, slow to build (ASTRA_TEST_BUILD_SECONDS) and saving itself in two files
    with a pause between them (ASTRA_TEST_SAVE_SECONDS), announcing each on stdout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _seconds("ASTRA_TEST_BUILD_SECONDS"):
            print("building", flush=True)
            time.sleep(_seconds("ASTRA_TEST_BUILD_SECONDS"))
        super().__init__(*args, **kwargs)

    def save_pretrained(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        save_file({n: p.detach().contiguous() for n, p in self.named_parameters()}, f"{directory}/model.safetensors")
        if _seconds("ASTRA_TEST_SAVE_SECONDS"):
            print("saving", flush=True)
            time.sleep(_seconds("ASTRA_TEST_SAVE_SECONDS"))
        Path(directory, "config.json").write_text("{}", encoding="utf-8")


class SlowToySampler(ToySampler):
    """The toy sampler; its call number ASTRA_TEST_SLOW_CALL takes ASTRA_TEST_SLOW_SECONDS."""

    calls = 0

    def rollouts(self, count: int) -> list[Graph[str, str]]:
        SlowToySampler.calls += 1
        if SlowToySampler.calls == int(os.environ.get("ASTRA_TEST_SLOW_CALL", "0")):
            print("slow step", flush=True)
            time.sleep(_seconds("ASTRA_TEST_SLOW_SECONDS"))
        return super().rollouts(count)


class Announce:
    """Prints "step N" after each step, then sleeps ASTRA_TEST_STEP_SECONDS."""

    def on_step_end(self, trainer: Any, step: int, logs: Mapping[str, float]) -> None:
        print(f"step {step}", flush=True)
        time.sleep(_seconds("ASTRA_TEST_STEP_SECONDS"))


class SignalsPlugin:
    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        registrar.system("slow-toy", SlowToySystem, options="astra_core.testing.options:ToySystemOptions")
        registrar.sampler("slow-toy", SlowToySampler, options="astra_core.testing.options:ToySamplerOptions")
        registrar.callback("announce", Announce)


RUN = support.TOY_RUN.replace('system = "toy"', 'system = "slow-toy"').replace(
    'sampler = "toy"', 'sampler = "slow-toy"'
) + support.callback_table("announce")


def install(set_attribute: Any = setattr) -> None:
    support.install_test_plugin(set_attribute, extra=[("signals", SignalsPlugin())])


def run_with_plugins(argv: Sequence[str]) -> int:
    from astra_core.cli import main

    install()
    return main(list(argv))


BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('astra_signals_test_support', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "sys.exit(module.run_with_plugins(sys.argv[2:]))\n"
)


def train(argv: Sequence[str | Path], **env: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", BOOT, str(Path(__file__).resolve()), "train", *map(str, argv)]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )


def signal_when(process: subprocess.Popen[str], line: str, signum: int) -> tuple[int, float, str, str]:
    """Send `signum` once `process` prints `line`; return its exit code, the seconds it took to
    exit after the signal, its stdout and its stderr."""
    assert process.stdout is not None
    seen = []
    for out in process.stdout:
        seen.append(out)
        if out.strip() == line:
            break
    else:
        raise AssertionError(f"never printed {line!r}: {''.join(seen)} {process.communicate()}")
    sent = time.monotonic()
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return process.returncode, time.monotonic() - sent, "".join(seen) + out, err


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{STEPS:08d}" / "weights.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("reference")
    (root / "run.toml").write_text(RUN, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        install(patch.setattr)
        from astra_core.cli import main

        assert main(["train", str(root / "run.toml"), "--output", str(root / "run")]) == 0
    return final_weights(root / "run")


@pytest.fixture
def run_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "run.toml"
    path.write_text(RUN, encoding="utf-8")
    yield path


def resume_and_compare(run_dir: Path, reference: Mapping[str, torch.Tensor]) -> None:
    process = train(["--resume", run_dir])
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, (out, err)
    weights = final_weights(run_dir)
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[name], reference[name]) for name in reference)
    assert (run_dir / "tester" / "model.safetensors").is_file() and (run_dir / "tester" / "config.json").is_file()
    assert not [p for p in run_dir.rglob(".tmp-*")]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_while_models_are_built_exits_at_once_and_leaves_no_directory(
    run_file: Path, signum: int, code: int
) -> None:
    run_dir = run_file.parent / "run"
    returncode, took, out, err = signal_when(
        train([run_file, "--output", run_dir], ASTRA_TEST_BUILD_SECONDS="60"), "building", signum
    )
    assert (returncode, "Traceback" in err) == (code, False), (out, err)
    assert took < 10
    assert f"{signal.Signals(signum).name}: stopped before training finished" in out
    assert not run_dir.exists()


def test_sighup_between_steps_checkpoints_exits_129_and_resumes_exactly(
    run_file: Path, reference: Mapping[str, torch.Tensor]
) -> None:
    run_dir = run_file.parent / "run"
    process = train([run_file, "--output", run_dir], ASTRA_TEST_STEP_SECONDS="0.5")
    returncode, took, out, err = signal_when(process, "step 3", signal.SIGHUP)
    assert (returncode, "Traceback" in err) == (129, False), (out, err)
    assert took < 10
    assert "SIGHUP: stopped after step 3" in out
    assert ckpt.latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000003"
    resume_and_compare(run_dir, reference)


def test_sigterm_inside_a_step_that_does_not_end_abandons_it_within_10_seconds(
    run_file: Path, reference: Mapping[str, torch.Tensor]
) -> None:
    run_dir = run_file.parent / "run"
    process = train([run_file, "--output", run_dir], ASTRA_TEST_SLOW_CALL="4", ASTRA_TEST_SLOW_SECONDS="600")
    returncode, took, out, err = signal_when(process, "slow step", signal.SIGTERM)
    assert (returncode, "Traceback" in err) == (143, False), (out, err)
    assert took < 10
    assert "SIGTERM: stopped after step 3" in out and "abandoned" in out
    assert ckpt.latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000002"  # checkpoint_every = 2
    resume_and_compare(run_dir, reference)


def test_sigterm_while_the_tester_is_saved_keeps_no_half_folder_and_resumes(
    run_file: Path, reference: Mapping[str, torch.Tensor]
) -> None:
    run_dir = run_file.parent / "run"
    process = train([run_file, "--output", run_dir], ASTRA_TEST_SAVE_SECONDS="600")
    returncode, took, out, err = signal_when(process, "saving", signal.SIGTERM)
    assert (returncode, "Traceback" in err) == (143, False), (out, err)
    assert took < 10
    assert "resume with: astra train --resume" in out
    assert not (run_dir / "tester").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".tmp-")]
    resume_and_compare(run_dir, reference)
