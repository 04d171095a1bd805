"""The optional logging callbacks really write what their tools read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from astra_core.callbacks import TensorBoard, WandB
from astra_core.config import TrainingConfiguration
from astra_core.trainer import Trainer


def _train(kit: Any, tmp_path: Path, callback: Any, steps: int = 3) -> list[dict[str, float]]:
    parts = kit.parts()
    config = TrainingConfiguration(training_steps=steps, batch_size=4, lr=1e-2, output_dir=str(tmp_path / "run"))
    trainer = Trainer(config, parts.sampler, parts.algorithm, callbacks=[callback], registries=kit.registries)
    return trainer.train()


def test_tensorboard_writes_every_step_s_scalars(kit: Any, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = _train(kit, tmp_path, TensorBoard())
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    rewards = events.Scalars("reward/mean")
    assert [event.step for event in rewards] == [1, 2, 3]
    assert [round(event.value, 5) for event in rewards] == [round(step["reward/mean"], 5) for step in history]


def test_wandb_logs_offline_without_an_account(kit: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _train(kit, tmp_path, WandB(project="astra-test", mode="offline"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert list(runs[0].glob("run-*.wandb")), "the offline run has no log file"
