"""Training callbacks: the progress bar, the metrics JSONL file, TensorBoard and W&B.

Subclass `BaseCallback` and override what you need; register it with
``registrar.callback("name", "pkg.module:Class")`` to select it by name in a run file.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from astra_core.protocols import EvaluationReport, TrainerView
from astra_core.types import json_safe


class BaseCallback:
    """A callback that does nothing; override the hooks you need."""

    def on_train_begin(self, trainer: TrainerView) -> None:
        """Before the first step (also after a resume)."""

    def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None:
        """After each training step, with that step's metrics."""

    def on_evaluate(self, trainer: TrainerView, step: int, report: EvaluationReport) -> None:
        """After each periodic evaluation."""

    def on_train_end(self, trainer: TrainerView) -> None:
        """After the last step, or when training stops early."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProgressOptions(_Options):
    enabled: bool = True


class ProgressBar(BaseCallback):
    """A tqdm bar: step, loss and mean reward."""

    def __init__(self, enabled: bool = True, total: int | None = None) -> None:
        self.enabled = enabled
        self.total = total
        self._bar: Any = None

    def on_train_begin(self, trainer: TrainerView) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        total = self.total if self.total is not None else getattr(trainer, "total_steps", None)
        self._bar = tqdm(
            total=total, initial=trainer.global_step, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True
        )

    def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None:
        if self._bar is None:
            return
        shown = {}
        for key, label in (("loss", "loss"), ("reward/mean", "reward")):
            value = logs.get(key)
            if value is not None and math.isfinite(value):
                shown[label] = f"{value:.3f}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def on_train_end(self, trainer: TrainerView) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class JSONLOptions(_Options):
    filename: str = Field("metrics.jsonl", min_length=1)


class MetricsJSONL(BaseCallback):
    """Appends one JSON object per step (and per evaluation) to the run directory's metrics file."""

    def __init__(self, filename: str = "metrics.jsonl") -> None:
        self.filename = filename

    def _append(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        if trainer.run_dir is None:
            return
        path = Path(trainer.run_dir) / self.filename
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
            handle.flush()

    def on_train_begin(self, trainer: TrainerView) -> None:
        if trainer.run_dir is None:
            return
        # A resumed run drops records past its checkpoint, so the file has each step once.
        path = Path(trainer.run_dir) / self.filename
        if path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if record.get("step", 0) <= trainer.global_step:
                    kept.append(line)
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None:
        self._append(trainer, {"step": step, **logs})

    def on_evaluate(self, trainer: TrainerView, step: int, report: EvaluationReport) -> None:
        self._append(trainer, {"step": step, **{f"eval/{k}": v for k, v in report.metrics.items()}})


class TensorBoardOptions(_Options):
    log_dir: str | None = None


class TensorBoard(BaseCallback):
    """Writes every metric as a TensorBoard scalar (needs the `tensorboard` package)."""

    def __init__(self, log_dir: str | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            from astra_core.errors import ComponentBuildError

            raise ComponentBuildError(
                "callback 'tensorboard' needs the tensorboard package: pip install 'astra-core[tensorboard]'"
            ) from None
        self.log_dir = log_dir
        self._writer: Any = None

    def on_train_begin(self, trainer: TrainerView) -> None:
        from torch.utils.tensorboard import SummaryWriter

        directory = self.log_dir or str(Path(trainer.run_dir or ".") / "tensorboard")
        self._writer = SummaryWriter(log_dir=directory)

    def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None:
        for key, value in logs.items():
            self._writer.add_scalar(key, value, step)

    def on_evaluate(self, trainer: TrainerView, step: int, report: EvaluationReport) -> None:
        for key, value in report.metrics.items():
            self._writer.add_scalar(f"eval/{key}", value, step)

    def on_train_end(self, trainer: TrainerView) -> None:
        if self._writer is not None:
            self._writer.close()


WandBMode = Literal["online", "offline", "disabled"]


class WandBOptions(_Options):
    project: str = "astra"
    mode: WandBMode = "offline"
    name: str | None = None


class WandB(BaseCallback):
    """Logs to Weights & Biases; ``mode = "offline"`` (the default) needs no account."""

    def __init__(self, project: str = "astra", mode: WandBMode = "offline", name: str | None = None) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError:
            from astra_core.errors import ComponentBuildError

            raise ComponentBuildError(
                "callback 'wandb' needs the wandb package: pip install 'astra-core[wandb]'"
            ) from None
        self.project, self.mode, self.name = project, mode, name
        self._run: Any = None

    def on_train_begin(self, trainer: TrainerView) -> None:
        import wandb

        self._run = wandb.init(
            project=self.project, mode=self.mode, name=self.name, dir=trainer.run_dir, resume="allow"
        )

    def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None:
        self._run.log(dict(logs), step=step)

    def on_evaluate(self, trainer: TrainerView, step: int, report: EvaluationReport) -> None:
        self._run.log({f"eval/{k}": v for k, v in report.metrics.items()}, step=step)

    def on_train_end(self, trainer: TrainerView) -> None:
        if self._run is not None:
            self._run.finish()
