"""The run directory: confinement of writes, the marker that alone allows --overwrite, and one
writer per run (an OS lock that names its holder and dies with it)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astra_core import checkpoint as ckpt
from astra_core.errors import ConfigError
from astra_core.rundir import LOCK, MARKER, RunDir, RunLockedError, staged_directory


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
THIS_FILE = Path(__file__).with_name("test_cli.py")
BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('astra_cli_test_support', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "sys.exit(module.run_with_test_plugin(sys.argv[2:]))\n"
)


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Any:
    return support.install_test_plugin(monkeypatch.setattr)


def cli(*argv: str | Path) -> int:
    from astra_core.cli import main

    return main([str(a) for a in argv])


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("astra: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- confinement ----------------------------------------------------------------------------------


def test_confine_resolves_inside_and_refuses_outside(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    assert run.confine("metrics.jsonl") == (run.path / "metrics.jsonl").resolve()
    assert run.confine("sub/m.jsonl") == (run.path / "sub" / "m.jsonl").resolve()
    for outside in ("../victim.txt", "/etc/passwd", "sub/../../victim.txt"):
        with pytest.raises(ConfigError, match="resolves outside the run directory"):
            run.confine(outside, what="metrics file")


def test_confine_follows_symbolic_links_out_of_the_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (run.path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"'link/metrics\.jsonl' resolves outside"):
        run.confine("link/metrics.jsonl", what="metrics file")


def test_a_run_file_cannot_make_the_metrics_callback_touch_a_victim_file(
    tmp_path: Path, plugin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("my notes\nnot json\n", encoding="utf-8")
    run_file = tmp_path / "run.toml"
    for filename in ("../victim.txt", str(victim)):
        run_file.write_text(support.TOY_RUN + support.callback_table("jsonl", filename=json.dumps(filename)))
        assert cli("validate", run_file) == 2
        assert "is not a path inside the run directory" in one_error(capsys)
        assert cli("train", run_file, "--output", tmp_path / "run") == 2
        assert "is not a path inside the run directory" in one_error(capsys)
        assert victim.read_text(encoding="utf-8") == "my notes\nnot json\n"
        assert not (tmp_path / "run").exists()


def test_overwrite_refuses_a_model_folder_and_keeps_every_file(
    tmp_path: Path, plugin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2"}', encoding="utf-8")
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "notes.txt").write_text("keep me", encoding="utf-8")
    before = snapshot(model)
    run_file = tmp_path / "run.toml"
    run_file.write_text(support.TOY_RUN, encoding="utf-8")
    assert cli("train", run_file, "--output", model, "--overwrite") == 2
    assert "not an astra run" in one_error(capsys)
    assert snapshot(model) == before


def test_overwrite_deletes_a_marked_run_and_says_what(
    tmp_path: Path, plugin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run_file, run_dir = tmp_path / "run.toml", tmp_path / "run"
    run_file.write_text(support.TOY_RUN.replace("training_steps = 6", "training_steps = 2"), encoding="utf-8")
    assert cli("train", run_file, "--output", run_dir) == 0
    assert (run_dir / MARKER).is_file()
    capsys.readouterr()
    assert cli("train", run_file, "--output", run_dir, "--overwrite") == 0
    out = capsys.readouterr().out
    assert "--overwrite: deleted" in out and "checkpoints/" in out and "metrics.jsonl" in out
    assert [r["step"] for r in RunDir(run_dir).read_metrics()] == [1, 2]


def test_train_leaves_no_directory_when_the_run_fails_before_training(
    tmp_path: Path, plugin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run_file = tmp_path / "run.toml"
    # Valid to validate, refused by the Trainer (accumulation no experience can fill).
    run_file.write_text(support.TOY_RUN.replace("[training]\n", "[training]\ngradient_accumulation_steps = 99\n"))
    assert cli("train", run_file, "--output", tmp_path / "run") == 2
    one_error(capsys)
    assert not (tmp_path / "run").exists()


# --- the lock -------------------------------------------------------------------------------------

HOLD = (
    "import fcntl, os, sys, time\n"
    "handle = open(sys.argv[1], 'a+')\n"
    "fcntl.flock(handle.fileno(), fcntl.LOCK_EX)\n"
    "handle.seek(0); handle.truncate(); handle.write(f'{os.getpid()}\\n'); handle.flush()\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def finished_run(tmp_path: Path, plugin: Any) -> Path:
    run_file, run_dir = tmp_path / "run.toml", tmp_path / "run"
    run_file.write_text(support.TOY_RUN.replace("training_steps = 6", "training_steps = 2"), encoding="utf-8")
    assert cli("train", run_file, "--output", run_dir) == 0
    return run_dir


@pytest.fixture
def held_lock(finished_run: Path) -> Iterator[subprocess.Popen[str]]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(finished_run / LOCK)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    yield holder
    holder.kill()
    holder.wait()


def test_a_second_writer_gets_one_line_naming_the_holder_and_exit_2(
    finished_run: Path, held_lock: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(finished_run)
    run_file = finished_run.parent / "run.toml"
    capsys.readouterr()
    for argv in (
        ["train", "--resume", finished_run, "--steps", "4"],
        ["train", run_file, "--output", finished_run, "--overwrite"],
        ["train", run_file, "--output", finished_run],
        ["report", finished_run],
    ):
        assert cli(*argv) == 2, argv
        line = one_error(capsys)
        assert f"another astra process (PID {held_lock.pid}) is writing this run directory" in line, line
    assert snapshot(finished_run) == before


def test_a_stale_lock_of_a_dead_process_does_not_block(finished_run: Path) -> None:
    (finished_run / LOCK).write_text("999999999\n", encoding="utf-8")  # no such process holds it
    assert cli("train", "--resume", finished_run, "--steps", "3") == 0
    assert [r["step"] for r in RunDir(finished_run).read_metrics()] == [1, 2, 3]


def test_the_lock_is_released_when_its_holder_dies(finished_run: Path, held_lock: subprocess.Popen[str]) -> None:
    run = RunDir(finished_run)
    with pytest.raises(RunLockedError, match=f"PID {held_lock.pid}"):
        run.acquire()
    held_lock.kill()  # kill -9: no clean-up ran
    held_lock.wait()
    with run.locked_for_writing():
        assert (finished_run / LOCK).read_text(encoding="utf-8").strip() == str(os.getpid())


def test_two_concurrent_trains_on_one_directory_leave_one_intact_run(tmp_path: Path) -> None:
    """The soak: both start together; one trains to the end, the other is refused in one line."""
    run_file, run_dir = tmp_path / "run.toml", tmp_path / "run"
    run_file.write_text(
        support.TOY_RUN.replace("training_steps = 6", "training_steps = 8")
        + support.callback_table("test-sleep", seconds=0.1),
        encoding="utf-8",
    )
    argv = [sys.executable, "-c", BOOT, str(THIS_FILE), "train", str(run_file), "--output", str(run_dir)]
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    (loser,) = [err for code, _, err in results if code == 2]
    errors = [line for line in loser.splitlines() if line.startswith("astra: error:")]
    assert len(errors) == 1 and "Traceback" not in loser, loser
    assert "another astra process (PID" in errors[0] or "output directory exists" in errors[0], errors
    assert [r["step"] for r in RunDir(run_dir).read_metrics()] == list(range(1, 9))
    checkpoints = ckpt.list_checkpoints(run_dir)
    assert [p.name for p in checkpoints] == ["step-00000006", "step-00000008"]  # keep_checkpoints = 2
    for checkpoint in checkpoints:
        ckpt.read_resumable(checkpoint)


# --- atomic folders -------------------------------------------------------------------------------


def test_a_staged_directory_replaces_the_old_one_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "tester"
    final.mkdir()
    (final / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(OSError), staged_directory(final) as staging:
        staging.mkdir()
        (staging / "half.txt").write_text("half", encoding="utf-8")
        raise OSError(28, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tester"]
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    with staged_directory(final) as staging:
        staging.mkdir()
        (staging / "new.txt").write_text("new", encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tester"]
    assert [p.name for p in final.iterdir()] == ["new.txt"]


def test_partial_folders_left_by_a_crash_are_cleaned_on_resume(finished_run: Path) -> None:
    strays = [
        finished_run / "checkpoints" / ".tmp-pruned-step-00000001-123",
        finished_run / "checkpoints" / ".tmp-step-00000003-abc",
        finished_run / ".tmp-tester-456",
    ]
    for stray in strays:
        stray.mkdir()
        (stray / "weights.safetensors").write_bytes(b"partial")
    started = time.time()
    assert cli("train", "--resume", finished_run, "--steps", "3") == 0
    assert time.time() - started < 120
    assert not [s for s in strays if s.exists()]
