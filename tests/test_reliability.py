"""Faults survived: a disk that is full or unwritable, and plugins that break at import, at
registration, at build, or at run time. Each fault is named in one clear line (exit 2 from the
CLI), loses nothing that was saved, and leaves the other plugins working."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from astra_core import Registrar, hookimpl
from astra_core import checkpoint as ckpt
from astra_core.build import ComponentContractError, guard_sampler, guard_system
from astra_core.cli import main
from astra_core.errors import CheckpointError, ComponentBuildError, ConfigError, PluginLoadError
from astra_core.graph import Graph
from astra_core.plugins import load_plugins
from astra_core.scoring import ScorerError
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem

if TYPE_CHECKING:
    from conftest import Kit


def _support() -> Any:
    """tests/test_cli.py, for its toy run file and its test plugin (loaded once per process)."""
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
TOY_OPTIONS = "astra_core.testing.options:ToySystemOptions"
SAMPLER_OPTIONS = "astra_core.testing.options:ToySamplerOptions"
PROBES = ["bad day ok", "hate awful stupid"]


# --- faulty components: each breaks one contract ------------------------------------------------


def exploding_system(probe_length: int = 3, seed: int = 0) -> ToySystem:
    raise RuntimeError("no GPU here")


def no_sampler(system: Any, scorer: Any, tree_width: int = 2, tree_depth: int = 2) -> None:
    return None  # forgot the return statement


class ShortScorer(ToyScorer):
    """One score too few."""

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return super().score_texts(texts)[:-1]


class LoudScorer(ToyScorer):
    """Scores outside [0, 1]."""

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [1.5 for _ in texts]


class ColumnSystem(ToySystem):
    """tester_logprobs returns (B, 1) instead of (B,): it broadcasts silently against (B,) tensors."""

    def tester_logprobs(self, contexts: Sequence[str], continuations: Sequence[str], reduction: Any = "sum") -> Any:
        return super().tester_logprobs(contexts, continuations, reduction).unsqueeze(1)


class ShortRolloutSystem(ToySystem):
    """rollout_tester drops the last probe."""

    def rollout_tester(self, contexts: Sequence[str]) -> list[str]:
        return super().rollout_tester(contexts)[:-1]


class ShortSampler(ToySampler):
    """rollouts(count) returns one episode too few."""

    def rollouts(self, count: int) -> list[Graph[str, str]]:
        return super().rollouts(count)[:-1]


class DiskFullAt:
    """A callback whose write hits a full disk at one step (as a metrics writer would)."""

    def __init__(self, at_step: int = 3) -> None:
        self.at_step = at_step

    def on_step_end(self, trainer: Any, step: int, logs: Any) -> None:
        if step == self.at_step:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "metrics.jsonl")


class Faulty:
    """A plugin whose components are each broken in one way."""

    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        registrar.system("exploding-system", exploding_system)
        registrar.sampler("no-sampler", no_sampler)
        registrar.scorer("short-scorer", ShortScorer)
        registrar.scorer("loud-scorer", LoudScorer)
        registrar.system("column-system", ColumnSystem, options=TOY_OPTIONS)
        registrar.system("short-rollout-system", ShortRolloutSystem, options=TOY_OPTIONS)
        registrar.sampler("short-sampler", ShortSampler, options=SAMPLER_OPTIONS)
        registrar.callback("disk-full-at", DiskFullAt)
        registrar.system("saving-toy", SavingToySystem, options=TOY_OPTIONS)


class RaisesAtRegistration:
    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        raise RuntimeError("misconfigured plugin")


@pytest.fixture(autouse=True)
def _clean_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for variable in ("ASTRA_PLUGINS", "ASTRA_DISABLE_PLUGINS", "ASTRA_STRICT_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    load_plugins.cache_clear()
    yield
    load_plugins.cache_clear()


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch) -> Any:
    return support.install_test_plugin(monkeypatch.setattr, extra=[("faulty", Faulty())])


def run_file(tmp_path: Path, replace: dict[str, str] | None = None, extra: str = "") -> Path:
    text = support.TOY_RUN
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    quiet = '\n[[callbacks]]\nname = "progress"\nenabled = false\n'  # keep stderr to the error line
    path = tmp_path / "run.toml"
    path.write_text(text + quiet + extra, encoding="utf-8")
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("astra: error: ")
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def plugin(loaded: Any) -> str:
    """How errors name the Faulty plugin (its provider)."""
    return str(loaded.registries.get("system", "column-system").provider)


def trained(kit: Kit, run_dir: Path, steps: int) -> Any:
    trainer = kit.trainer(kit.config(training_steps=steps, output_dir=str(run_dir)), kit.parts())
    trainer.train()
    return trainer


def resumes_at(kit: Kit, run_dir: Path, steps: int) -> int:
    trainer = kit.trainer(kit.config(training_steps=steps, output_dir=str(run_dir)), kit.parts())
    trainer.resume()
    return trainer.global_step


# --- disk faults: refused before training ----------------------------------------------------------


def test_an_output_dir_under_a_regular_file_is_refused_before_anything_is_built(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("not a directory", encoding="utf-8")
    # The system would fail to build: seeing the disk error instead shows the probe came first.
    path = run_file(tmp_path, {'system = "toy"': 'system = "exploding-system"'})
    assert main(["train", str(path), "--output", str(tmp_path / "afile" / "run")]) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path / 'afile' / 'run'}: cannot write the run directory: Not a directory (ENOTDIR)" in line
    assert "--output DIR" in line and "no GPU here" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "run.toml"]


def test_a_full_disk_is_refused_by_the_probe_and_the_probe_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "new" / "run"
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", no_space)  # a full disk refuses the data when it is flushed
        with pytest.raises(ConfigError, match=r"new/run: cannot write the run directory: No space left on device"):
            ckpt.check_writable(target)
    assert list(tmp_path.iterdir()) == []  # the directories it created are gone again
    ckpt.check_writable(target)
    assert list(tmp_path.iterdir()) == []


def test_resuming_into_an_unwritable_run_dir_is_refused_before_building(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    path = run_file(tmp_path, {"training_steps = 6": "training_steps = 2"})
    assert main(["train", str(path), "--output", str(run_dir)]) == 0
    capsys.readouterr()
    real_open = os.open

    def read_only(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and Path(file).parent == run_dir:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["train", "--resume", str(run_dir), "--steps", "4"]) == 2
    assert "cannot write the run directory: Read-only file system (EROFS)" in one_error_line(capsys)


# --- disk faults: a checkpoint write that fails -------------------------------------------------


def test_enospc_while_writing_tensors_is_a_checkpoint_error_and_the_previous_checkpoint_loads(
    kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = trained(kit, tmp_path, 2)
    previous = tmp_path / "checkpoints" / "step-00000002"
    assert ckpt.latest_checkpoint(tmp_path) == previous

    def full_disk(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
        if filename.endswith("optimizer.safetensors"):  # what safetensors raises on ENOSPC
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    trainer.train_step()
    with pytest.raises(CheckpointError) as caught:
        trainer.save_checkpoint()
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'checkpoints'}: cannot write checkpoint step-00000003: ")
    assert "No space left on device (ENOSPC)" in message
    assert f"the previous checkpoint {previous} is intact" in message
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]  # no staging left
    assert ckpt.latest_checkpoint(tmp_path) == previous
    monkeypatch.undo()
    assert resumes_at(kit, tmp_path, 4) == 2


def test_a_failed_replacement_of_the_same_step_keeps_the_old_checkpoint(
    kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = trained(kit, tmp_path, 2)
    final = tmp_path / "checkpoints" / "step-00000002"
    manifest = (final / ckpt.MANIFEST).read_bytes()
    real_replace = os.replace

    def failing_replace(source: Any, target: Any) -> None:
        if Path(source).name.startswith(".tmp-step-"):  # the new checkpoint's own rename
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointError, match=r"Input/output error \(EIO\)"):
        ckpt.save_checkpoint(
            tmp_path, 2, trainer.parameters, trainer.optimizer, trainer.scheduler, {"global_step": 2}, {}
        )
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]
    assert (final / ckpt.MANIFEST).read_bytes() == manifest
    ckpt.verify(final)


def test_a_checkpoint_failing_during_astra_train_is_one_line_and_resume_completes(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    write_json = ckpt._write_json

    def full_at_step_4(path: Path, data: Any) -> None:
        if path.parent.name.startswith(".tmp-step-00000004"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_json(path, data)

    monkeypatch.setattr(ckpt, "_write_json", full_at_step_4)
    assert main(["train", str(run_file(tmp_path)), "--output", str(run_dir)]) == 2
    line = one_error_line(capsys)
    assert f"{run_dir / 'checkpoints'}: cannot write checkpoint step-00000004: No space left on device" in line
    assert "step-00000002 is intact" in line
    monkeypatch.setattr(ckpt, "_write_json", write_json)  # space freed
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert ckpt.latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000006"


def test_enospc_on_the_first_checkpoint_advises_a_resume_that_works(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    write_json = ckpt._write_json

    def full(path: Path, data: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt, "_write_json", full)
    assert main(["train", str(run_file(tmp_path)), "--output", str(run_dir)]) == 2
    line = one_error_line(capsys)
    assert "cannot write checkpoint step-00000002: No space left on device" in line
    assert "no complete earlier checkpoint exists" in line and "then resume" in line
    monkeypatch.setattr(ckpt, "_write_json", write_json)  # space freed
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert "no checkpoint was written yet, starting again at step 0" in capsys.readouterr().out
    assert ckpt.latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000006"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the records of the first attempt were dropped


class SavingToySystem(ToySystem):
    """A toy system that saves itself (as a Hugging Face system would), through `write`."""

    def save_pretrained(self, directory: str) -> None:
        Path(directory).mkdir()
        SavingToySystem.write(Path(directory) / "config.json", "{}")
        SavingToySystem.write(Path(directory) / "model.safetensors", "weights")

    @staticmethod
    def write(path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")


def test_enospc_while_the_tester_is_saved_is_one_line_keeps_no_half_folder_and_resumes(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    write = SavingToySystem.write

    def full_at_weights(path: Path, text: str) -> None:
        if path.name == "model.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, text)

    monkeypatch.setattr(SavingToySystem, "write", staticmethod(full_at_weights))
    path = run_file(tmp_path, replace={'system = "toy"': 'system = "saving-toy"'})
    assert main(["train", str(path), "--output", str(run_dir)]) == 2
    line = one_error_line(capsys)
    assert "training stopped at step 6: No space left on device (ENOSPC)" in line
    assert f"astra train --resume {run_dir}" in line
    assert not (run_dir / "tester").exists() and not list(run_dir.glob(".tmp-*"))
    monkeypatch.setattr(SavingToySystem, "write", staticmethod(write))
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert sorted(p.name for p in (run_dir / "tester").iterdir()) == ["config.json", "model.safetensors"]


def test_enospc_while_an_evaluation_is_written_is_one_line(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from astra_core import rundir

    run_dir = tmp_path / "run"
    write_atomic = rundir.write_atomic

    def full_under_eval(path: Path, text: str) -> None:
        if path.parent.name == "eval":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_atomic(path, text)

    monkeypatch.setattr(rundir, "write_atomic", full_under_eval)
    path = run_file(tmp_path, extra="")
    path.write_text(path.read_text(encoding="utf-8").replace("[training]\n", "[training]\neval_every = 3\n"))
    assert main(["train", str(path), "--output", str(run_dir)]) == 2
    line = one_error_line(capsys)
    assert "training stopped at step 3: No space left on device (ENOSPC)" in line and "step-00000003.json" in line
    monkeypatch.setattr(rundir, "write_atomic", write_atomic)
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert sorted(p.name for p in (run_dir / "eval").glob("step-*.json")) == [
        "step-00000003.json",
        "step-00000006.json",
    ]


def test_a_full_disk_under_a_callback_is_one_line_naming_the_resume(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    path = run_file(tmp_path, extra='\n[[callbacks]]\nname = "disk-full-at"\nat_step = 3\n')
    assert main(["train", str(path), "--output", str(run_dir)]) == 2
    line = one_error_line(capsys)
    assert f"{run_dir}: training stopped at step 3: No space left on device (ENOSPC) (metrics.jsonl)" in line
    assert f"astra train --resume {run_dir}" in line
    assert ckpt.latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000002"


# --- disk faults: a real full disk (a small tmpfs, where this process may mount one) -------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte (unbuffered, so nothing is left to fail on close)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        for chunk in (65536, 4096, 1):
            try:
                while handle.write(b"\0" * chunk):
                    pass
            except OSError as error:
                assert error.errno == errno.ENOSPC
    return filler


def test_a_really_full_disk_fails_the_checkpoint_cleanly_and_the_run_resumes_after_cleanup(
    kit: Kit, small_disk: Path
) -> None:
    run_dir = small_disk / "run"
    trainer = trained(kit, run_dir, 2)
    filler = fill(small_disk)
    trainer.train_step()
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint step-00000003: No space left on device"):
        trainer.save_checkpoint()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000002"]
    filler.unlink()
    assert resumes_at(kit, run_dir, 4) == 2


def test_a_really_full_disk_is_refused_before_training(
    small_disk: Path, tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(small_disk)
    assert main(["train", str(run_file(tmp_path)), "--output", str(small_disk / "run")]) == 2
    assert "run: cannot write the run directory: No space left on device (ENOSPC)" in one_error_line(capsys)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


# --- plugin faults: load ------------------------------------------------------------------------


def test_a_plugin_failing_at_registration_is_listed_and_the_others_still_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    support.install_test_plugin(monkeypatch.setattr, extra=[("half", RaisesAtRegistration())])
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "BROKEN: RuntimeError: misconfigured plugin" in out and "1 plugin(s) failed to load" in out
    path = run_file(tmp_path, {"training_steps = 6": "training_steps = 2"})
    assert main(["train", str(path), "--output", str(tmp_path / "run")]) == 0


@pytest.fixture
def broken_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution whose plugin module raises on import."""
    (tmp_path / "astra_reliability_broken.py").write_text("raise ImportError('needs libfoo')\n")
    info = tmp_path / "astra_reliability_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: astra-reliability-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[astra_core]\nrelbroken = astra_reliability_broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "relbroken"


def test_a_plugin_failing_at_import_is_reported_and_fatal_only_in_strict_mode(
    broken_import: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_file(
        tmp_path, {'algorithm = "test-pg"': 'algorithm = "dpo"', 'evaluator = "test-eval"': 'evaluator = "none"'}
    )
    assert main(["validate", str(path)]) == 0  # dpo comes from another plugin, which still loads
    capsys.readouterr()
    monkeypatch.setenv("ASTRA_STRICT_PLUGINS", "1")
    load_plugins.cache_clear()
    assert main(["validate", str(path)]) == 2
    line = one_error_line(capsys)
    assert "plugin 'relbroken' from astra-reliability-broken 1.0 failed to load: ImportError: needs libfoo" in line
    with pytest.raises(PluginLoadError):
        load_plugins()


# --- plugin faults: build -----------------------------------------------------------------------


def test_a_factory_that_raises_is_one_line_naming_kind_name_plugin_and_error(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_file(tmp_path, {'system = "toy"': 'system = "exploding-system"'})
    assert main(["train", str(path), "--output", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert f"building system 'exploding-system' (plugin {plugin(faulty)})" in line
    assert "RuntimeError: no GPU here" in line
    assert not (tmp_path / "run").exists()


def test_a_factory_returning_no_component_is_a_build_error_naming_what_it_lacks(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_file(tmp_path, {'sampler = "toy"': 'sampler = "no-sampler"'})
    assert main(["train", str(path), "--output", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    expected = f"sampler 'no-sampler' (plugin {plugin(faulty)}) built a NoneType that lacks system, scorer, rollouts"
    assert expected in line


def test_a_build_error_is_a_component_build_error_in_the_library_too(faulty: Any) -> None:
    from astra_core.build import build, resolve
    from astra_core.config import parse_run_config

    config = parse_run_config(
        {"system": "toy", "scorer": "toy", "sampler": "no-sampler", "algorithm": "test-pg", "evaluator": "none"}
    )
    with pytest.raises(ComponentBuildError, match="lacks system, scorer, rollouts"):
        build(resolve(config, faulty.registries))


# --- plugin faults: run time --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replace", "expect"),
    [
        ({'scorer = "toy"': 'scorer = "short-scorer"'}, "scorer ShortScorer returned 7 scores for 8 inputs"),
        ({'scorer = "toy"': 'scorer = "loud-scorer"'}, "scorer LoudScorer returned 1.5 at index 0"),
        (
            {'system = "toy"': 'system = "column-system"'},
            "system 'column-system' (plugin {plugin}).tester_logprobs returned shape (",
        ),
        (
            {'system = "toy"': 'system = "short-rollout-system"'},
            "system 'short-rollout-system' (plugin {plugin}).rollout_tester returned 7 probes for 8 contexts",
        ),
        (
            {'sampler = "toy"': 'sampler = "short-sampler"'},
            "sampler 'short-sampler' (plugin {plugin}).rollouts(4) returned 3 episodes",
        ),
    ],
    ids=["scorer-count", "scorer-range", "logprob-shape", "probe-count", "episode-count"],
)
def test_a_plugin_breaking_its_contract_at_run_time_is_one_line_naming_it(
    tmp_path: Path, faulty: Any, capsys: pytest.CaptureFixture[str], replace: dict[str, str], expect: str
) -> None:
    path = run_file(tmp_path, replace)
    assert main(["train", str(path), "--output", str(tmp_path / "run")]) == 2
    assert expect.format(plugin=plugin(faulty)) in one_error_line(capsys)


def test_the_logprob_guard_passes_good_output_and_names_bad_output() -> None:
    system = ToySystem()
    guard_system(system, "system 'toy' (plugin core)")
    good = system.tester_logprobs(["hello", "nice"], PROBES)
    assert good.shape == (2,) and good.requires_grad
    assert len(system.rollout_tester(["a", "b", "c"])) == 3
    column = ColumnSystem()
    guard_system(column, "system 'column' (plugin test)")
    guard_system(column, "system 'column' (plugin test)")
    assert not hasattr(vars(column)["tester_logprobs"].__wrapped__, "__astra_checked__")  # guarding twice wraps once
    with pytest.raises(
        ComponentContractError, match=r"'column' \(plugin test\)\.tester_logprobs returned shape \(2, 1\)"
    ):
        column.tester_logprobs(["hello", "nice"], PROBES)
    assert column.baseline_logprobs(["hello", "nice"], PROBES).shape == (2,)


def test_the_rollout_guard_names_a_sampler_returning_too_few_episodes() -> None:
    sampler = ShortSampler(ToySystem(), ToyScorer())
    guard_sampler(sampler, "sampler 'short' (plugin test)")
    with pytest.raises(ComponentContractError, match=r"rollouts\(3\) returned 2 episodes"):
        sampler.rollouts(3)


def test_scorer_errors_keep_their_type_in_the_library(faulty: Any) -> None:
    sampler = ToySampler(ToySystem(), ShortScorer())
    with pytest.raises(ScorerError, match="scorer ShortScorer returned"):
        sampler.rollouts(2)
