"""Checkpoints: atomic, verified, pruned, never unpickled; resume is exact, even after kill -9."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from safetensors.torch import load_file

from astra_core import checkpoint as ckpt
from astra_core.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from conftest import Kit, Parts


def trained(kit: Kit, run_dir: Path, steps: int, **config: Any) -> tuple[Any, Parts]:
    parts = kit.parts()
    trainer = kit.trainer(kit.config(training_steps=steps, output_dir=str(run_dir), **config), parts)
    trainer.train()
    return trainer, parts


def equal(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# --- exact resume ---------------------------------------------------------------------------

RESUME_CASES = {
    "defaults": {},
    "accumulation+cosine": {
        "gradient_accumulation_steps": 2,
        "batch_size": 2,
        "lr_scheduler": {"name": "cosine", "min_lr_ratio": 0.1},
        "warmup_steps": 2,
    },
    "sgd-momentum+clipping+no-shuffle": {
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "max_grad_norm": 0.5,
        "shuffle": False,
    },
    "shuffle-by-example": {"shuffle_by": "example", "batch_size": 2},
}


@pytest.mark.parametrize("options", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_resume_is_bitwise_exact(kit: Kit, tmp_path: Path, options: dict[str, Any]) -> None:
    config = kit.config(training_steps=6, output_dir=str(tmp_path / "run"), **options)
    reference = kit.parts()
    kit.trainer(config.model_copy(update={"output_dir": str(tmp_path / "ref")}), reference).train()

    first = kit.parts()
    trainer = kit.trainer(config, first)
    for _ in range(3):
        trainer.train_step()
    trainer.save_checkpoint()
    for _ in range(2):  # the interrupted process goes on a little; none of it may leak into the resume
        trainer.train_step()

    resumed = kit.parts()
    trainer = kit.trainer(config, resumed)
    assert trainer.resume() == tmp_path / "run" / "checkpoints" / "step-00000003"
    assert trainer.global_step == 3
    trainer.train()
    assert trainer.global_step == 6
    assert equal(kit.weights(resumed), kit.weights(reference))
    assert not equal(kit.weights(first), kit.weights(reference))  # the check can fail


def test_resume_may_extend_training_steps(kit: Kit, tmp_path: Path) -> None:
    trained(kit, tmp_path / "run", 3)
    parts = kit.parts()
    trainer = kit.trainer(kit.config(training_steps=6, output_dir=str(tmp_path / "run")), parts)
    trainer.resume()
    trainer.train()
    _, reference = trained(kit, tmp_path / "ref", 6)
    assert equal(kit.weights(parts), kit.weights(reference))


def test_resume_restores_optimizer_scheduler_and_rng_state(kit: Kit, tmp_path: Path) -> None:
    config = kit.config(training_steps=4, output_dir=str(tmp_path), lr_scheduler="linear", warmup_steps=1)
    trainer = kit.trainer(config, kit.parts())
    for _ in range(2):
        trainer.train_step()
    trainer.save_checkpoint()
    optimizer_state = trainer.optimizer.state_dict()
    scheduler_state = trainer.scheduler.state_dict()
    expected_draw = torch.rand(3)

    fresh = kit.trainer(config, kit.parts())
    fresh.resume()
    assert torch.equal(torch.rand(3), expected_draw)
    assert fresh.scheduler.state_dict() == scheduler_state
    restored = fresh.optimizer.state_dict()
    assert restored["param_groups"] == json.loads(json.dumps(optimizer_state["param_groups"]))
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            assert torch.equal(restored["state"][index][key], value)


# --- atomicity and verification -------------------------------------------------------------


def test_a_failure_while_writing_leaves_the_previous_checkpoint(
    kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer, _ = trained(kit, tmp_path, 2)
    previous = ckpt.latest_checkpoint(tmp_path)
    assert previous == tmp_path / "checkpoints" / "step-00000002"
    write_json = ckpt._write_json

    def failing(path: Path, data: Any) -> None:
        if path.name == "state.json":
            raise OSError(28, "No space left on device")
        write_json(path, data)

    monkeypatch.setattr(ckpt, "_write_json", failing)
    trainer.train_step()
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]
    assert ckpt.latest_checkpoint(tmp_path) == previous
    ckpt.verify(previous)


def test_leftovers_of_a_crash_are_ignored_and_cleaned(kit: Kit, tmp_path: Path) -> None:
    trainer, _ = trained(kit, tmp_path, 2)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000003-abc").mkdir()
    (root / ".tmp-step-00000003-abc" / "weights.safetensors").write_bytes(b"half")
    (root / "step-00000009").mkdir()  # a directory without a manifest is not a checkpoint
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-00000002"
    trainer.train_step()
    trainer.save_checkpoint()
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003", "step-00000009"]


def test_a_corrupted_byte_is_detected_and_resume_picks_the_newest_complete(kit: Kit, tmp_path: Path) -> None:
    trained(kit, tmp_path, 3, checkpoint_every=1, keep_checkpoints=3)
    newest = tmp_path / "checkpoints" / "step-00000003"
    weights = newest / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"weights\.safetensors is missing or does not match its checksum"):
        ckpt.verify(newest)
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000002"

    trainer = kit.trainer(kit.config(training_steps=3, output_dir=str(tmp_path)), kit.parts())
    with pytest.raises(CheckpointError, match="corrupted"):
        trainer.resume(newest)
    assert trainer.resume() == tmp_path / "checkpoints" / "step-00000002"
    assert trainer.global_step == 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: m.write_text("{not json"), "unreadable manifest"),
        (lambda m: m.write_text("[]"), "not a JSON object"),
        (lambda m: m.write_text(json.dumps({"format": "other/9", "files": {}})), "unknown checkpoint format"),
        (lambda m: m.write_text(json.dumps({"format": ckpt.FORMAT, "files": {}})), "manifest lists no"),
        (lambda m: m.unlink(), "not a checkpoint"),
    ],
)
def test_a_damaged_manifest_is_a_checkpoint_error(kit: Kit, tmp_path: Path, damage: Any, message: str) -> None:
    trained(kit, tmp_path, 1)
    checkpoint = tmp_path / "checkpoints" / "step-00000001"
    damage(checkpoint / ckpt.MANIFEST)
    with pytest.raises(CheckpointError, match=message):
        ckpt.verify(checkpoint)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_keep_checkpoints_prunes_the_oldest(kit: Kit, tmp_path: Path) -> None:
    trained(kit, tmp_path, 5, checkpoint_every=1, keep_checkpoints=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    trained(kit, tmp_path / "one", 3, checkpoint_every=1, keep_checkpoints=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "one")] == ["step-00000003"]


def test_saving_the_same_step_twice_writes_once(kit: Kit, tmp_path: Path) -> None:
    trainer, _ = trained(kit, tmp_path, 2, checkpoint_every=2)  # periodic and final save coincide
    path = tmp_path / "checkpoints" / "step-00000002"
    stamp = (path / ckpt.MANIFEST).stat().st_mtime_ns
    assert trainer.save_checkpoint() == path
    assert (path / ckpt.MANIFEST).stat().st_mtime_ns == stamp


def test_a_checkpoint_of_the_same_step_is_replaced_whole(kit: Kit, tmp_path: Path) -> None:
    trainer, _ = trained(kit, tmp_path, 2)
    trainer._saved = None  # as a new process would: no memory of the earlier save
    trainer.nonfinite_total = 7
    path = trainer.save_checkpoint()
    assert ckpt.read_json(path, "state.json")["nonfinite_total"] == 7
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]
    ckpt.verify(path)


# --- resume errors --------------------------------------------------------------------------


def test_resume_from_another_runs_config_is_refused(kit: Kit, tmp_path: Path) -> None:
    trained(kit, tmp_path, 2)
    other = kit.trainer(kit.config(training_steps=4, lr=0.5, output_dir=str(tmp_path)), kit.parts())
    with pytest.raises(CheckpointError, match=r"different configuration \(differs in: training\)"):
        other.resume()


def test_resume_into_a_different_model_is_refused(kit: Kit, tmp_path: Path) -> None:
    from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem

    trained(kit, tmp_path, 1)
    system = ToySystem(probe_length=4)
    parts = kit.parts()
    parts.system, parts.sampler, parts.algorithm = system, ToySampler(system, ToyScorer()), kit.ToyDPO(system)
    trainer = kit.trainer(kit.config(training_steps=1, output_dir=str(tmp_path)), parts)
    with pytest.raises(CheckpointError, match="different model"):
        trainer.resume()


def test_resume_without_a_checkpoint_is_a_clear_error(kit: Kit, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        kit.trainer(kit.config(output_dir=str(tmp_path)), kit.parts()).resume()
    with pytest.raises(ConfigError, match="nothing to resume from"):
        kit.trainer(kit.config(), kit.parts()).resume()


def test_loading_never_unpickles() -> None:
    source = Path(ckpt.__file__).parent
    for path in source.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "np.load(" not in text or "allow_pickle=True" not in text, path


# --- kill -9 --------------------------------------------------------------------------------


def launch(kit: Kit, run_dir: Path, steps: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", kit.TRAIN_SCRIPT, str(kit.conftest_path), str(run_dir), str(steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def kill_when(process: subprocess.Popen[str], pattern: str) -> list[str]:
    """SIGKILL `process` as soon as it prints a line matching the regular expression `pattern`."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.strip())
        if re.fullmatch(pattern, line.strip()):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (lines, process.stderr.read() if process.stderr else "")
    return lines


def test_kill_9_at_any_point_then_resume_gives_the_uninterrupted_weights(kit: Kit, tmp_path: Path) -> None:
    run_dir, steps = tmp_path / "run", 6

    # 1. In the middle of step 3 (after its rollouts and updates, before its checkpoint).
    lines = kill_when(launch(kit, run_dir, steps, TEST_STEP_DELAY="0.3"), "step 3")
    assert "resumed" not in " ".join(lines)
    assert ckpt.latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000002"

    # 2. While step 4's checkpoint is half written, just before its manifest.
    pattern = r"writing \.tmp-step-00000004-\S+ manifest\.json"
    lines = kill_when(launch(kit, run_dir, steps, TEST_CHECKPOINT_WRITE_DELAY="0.05"), pattern)
    assert lines[0] == "resumed 2"
    assert ckpt.latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000003"
    assert any(p.name.startswith(".tmp-step-00000004-") for p in (run_dir / "checkpoints").iterdir())

    # 3. Run to completion; the half checkpoint is ignored, then cleaned up.
    process = launch(kit, run_dir, steps)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.splitlines()[0] == "resumed 3" and out.splitlines()[-1] == "done"
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]

    reference = kit.parts()
    kit.trainer(kit.script_config(tmp_path / "reference", steps), reference).train()
    last = run_dir / "checkpoints" / f"step-{steps:08d}"
    final = load_file(str(last / "weights.safetensors"))
    assert equal([final[name] for name, _ in reference.system.named_parameters()], kit.weights(reference))


# --- contents verified beyond the checksum ------------------------------------------------------


def _rewrite(checkpoint: Path, name: str, content: bytes) -> None:
    """Replace one file of a checkpoint and recompute its checksum, as a careful tamperer would."""
    (checkpoint / name).write_bytes(content)
    manifest = json.loads((checkpoint / ckpt.MANIFEST).read_text(encoding="utf-8"))
    manifest["files"][name] = hashlib.sha256(content).hexdigest()
    (checkpoint / ckpt.MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def _json_edit(key: str, value: Any, name: str = "state.json") -> Callable[[Path], bytes]:
    def edit(checkpoint: Path) -> bytes:
        data = json.loads((checkpoint / name).read_text(encoding="utf-8"))
        data[key] = value
        return json.dumps(data).encode()

    return edit


def _nan_weights(checkpoint: Path) -> bytes:
    weights = load_file(str(checkpoint / "weights.safetensors"))
    first = next(iter(weights))
    weights[first] = torch.full_like(weights[first], math.nan)
    return save(weights)


def _short_rng(checkpoint: Path) -> bytes:
    return save({"torch": torch.zeros(17, dtype=torch.uint8)})


def _python_rng_truncated(checkpoint: Path) -> bytes:
    data = json.loads((checkpoint / "rng.json").read_text(encoding="utf-8"))
    data["python"][1] = data["python"][1][:10]
    return json.dumps(data).encode()


def _optimizer_naming_no_parameter(checkpoint: Path) -> bytes:
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    tensors["99.exp_avg"] = torch.zeros(3)
    return save(tensors)


def _optimizer_state_of_another_shape(checkpoint: Path) -> bytes:
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    key = next(k for k, v in tensors.items() if v.dim() > 0)
    tensors[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)
    return save(tensors)


TAMPERING = {
    # A pickle (protocol 4, the integer 1) where safetensors belong: never unpickled, refused.
    "pickle-as-optimizer-state": ("optimizer.safetensors", lambda c: b"\x80\x04K\x01.", "not a safetensors file"),
    "step-a-word": ("state.json", _json_edit("global_step", "six"), "global_step is 'six'"),
    "step-negative": ("state.json", _json_edit("global_step", -3), "global_step is -3"),
    "step-not-the-folder's": ("state.json", _json_edit("global_step", 2), "says step 2"),
    "nan-weights": ("weights.safetensors", _nan_weights, "NaN or infinite"),
    "rng-wrong-size": ("rng.safetensors", _short_rng, "no CPU generator state of the right size"),
    "python-rng-truncated": ("rng.json", _python_rng_truncated, "no valid Python generator state"),
    "optimizer-state-of-no-parameter": (
        "optimizer.safetensors",
        _optimizer_naming_no_parameter,
        "names no parameter",
    ),
}


def save(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


@pytest.mark.parametrize(("name", "tamper", "message"), TAMPERING.values(), ids=TAMPERING.keys())
def test_tampered_contents_fall_back_to_the_previous_checkpoint_with_one_warning(
    kit: Kit,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    tamper: Callable[[Path], bytes],
    message: str,
) -> None:
    trained(kit, tmp_path / "run", 3, checkpoint_every=1, keep_checkpoints=3)
    newest = tmp_path / "run" / "checkpoints" / "step-00000003"
    _rewrite(newest, name, tamper(newest))
    ckpt.verify(newest)  # the checksums agree: only reading the contents can tell
    with pytest.raises(CheckpointError, match=re.escape(message)):
        ckpt.read_resumable(newest)

    parts = kit.parts()
    trainer = kit.trainer(kit.config(training_steps=6, output_dir=str(tmp_path / "run")), parts)
    with caplog.at_level(logging.WARNING, logger="astra_core"):
        assert trainer.resume() == tmp_path / "run" / "checkpoints" / "step-00000002"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "step-00000003 is corrupted; resuming from the older" in warnings[0], warnings
    assert message in warnings[0] and "\n" not in warnings[0]
    trainer.train()
    _, reference = trained(kit, tmp_path / "ref", 6)
    assert equal(kit.weights(parts), kit.weights(reference))


def test_a_deleted_manifest_warns_and_resume_uses_the_previous_checkpoint(
    kit: Kit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained(kit, tmp_path, 3, checkpoint_every=1, keep_checkpoints=3)
    (tmp_path / "checkpoints" / "step-00000003" / ckpt.MANIFEST).unlink()
    trainer = kit.trainer(kit.config(training_steps=3, output_dir=str(tmp_path)), kit.parts())
    with caplog.at_level(logging.WARNING, logger="astra_core"):
        assert trainer.resume() == tmp_path / "checkpoints" / "step-00000002"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "step-00000003 has no manifest.json" in warnings[0], warnings


def test_weights_are_stored_by_parameter_name_and_load_into_a_system_alone(kit: Kit, tmp_path: Path) -> None:
    _trainer, parts = trained(kit, tmp_path, 2)
    checkpoint = ckpt.latest_checkpoint(tmp_path)
    assert checkpoint is not None
    names = [name for name, _ in parts.system.named_parameters()]
    assert sorted(load_file(str(checkpoint / "weights.safetensors"))) == sorted(names)
    fresh = kit.parts()  # no algorithm needed: the system's own names find its weights
    assert ckpt.load_tester(checkpoint, fresh.system) == 2
    assert equal(kit.weights(fresh), kit.weights(parts))


def test_a_system_without_parameter_names_checkpoints_by_position(kit: Kit, tmp_path: Path) -> None:
    class Anonymous:
        """Hides the system's named_parameters(), as a plugin system without them would."""

        def __init__(self, system: Any) -> None:
            self._system = system

        def __getattr__(self, name: str) -> Any:
            if name == "named_parameters":
                raise AttributeError(name)
            return getattr(self._system, name)

    parts = kit.parts()
    assert ckpt.parameter_names(list(parts.system.parameters()), Anonymous(parts.system)) == [
        f"param.{i:05d}" for i in range(len(list(parts.system.parameters())))
    ]
    fresh = kit.parts()
    _trainer, trained_parts = trained(kit, tmp_path, 1)
    checkpoint = ckpt.latest_checkpoint(tmp_path)
    assert checkpoint is not None
    with pytest.raises(CheckpointError, match="no named_parameters"):
        ckpt.load_tester(checkpoint, Anonymous(fresh.system))
    # the fallback: the Trainer's own parameter list, in order
    ckpt.load_tester(checkpoint, Anonymous(fresh.system), lambda: list(fresh.system.parameters()))
    assert equal(kit.weights(fresh), kit.weights(trained_parts))


def test_the_rng_state_holds_every_cuda_device_when_there_are_any() -> None:
    tensors, _ = ckpt.rng_state()
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert sorted(tensors) == ["torch", *(f"cuda.{i}" for i in range(devices))]


def test_optimizer_state_of_another_shape_than_its_parameter_falls_back(
    kit: Kit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained(kit, tmp_path, 3, checkpoint_every=1, keep_checkpoints=3)
    newest = tmp_path / "checkpoints" / "step-00000003"
    _rewrite(newest, "optimizer.safetensors", _optimizer_state_of_another_shape(newest))
    trainer = kit.trainer(kit.config(training_steps=3, output_dir=str(tmp_path)), kit.parts())
    with caplog.at_level(logging.WARNING, logger="astra_core"):
        assert trainer.resume() == tmp_path / "checkpoints" / "step-00000002"
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "step-00000003 is corrupted; resuming from the older" in warning and "has shape" in warning
    trainer.train()  # the optimizer steps with the older, fitting state
