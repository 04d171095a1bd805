"""Training callbacks: the progress bar, the metrics JSONL file, TensorBoard and W&B.

Subclass `BaseCallback` and override what you need; register it with
``registrar.callback("name", "pkg.module:Class")`` to select it by name in a run file.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from astra_core.protocols import EvaluationReport, TrainerView
from astra_core.rundir import RunDir, RunRelativePath


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
    filename: RunRelativePath = Field(default="metrics.jsonl", min_length=1)


class MetricsJSONL(BaseCallback):
    """Appends one JSON object per step (and per evaluation) to a metrics file of the run directory.

    The file must lie inside the run directory (`astra_core.rundir.RunDir.confine`): a run file
    cannot make this callback write, or trim, anything else.
    """

    def __init__(self, filename: str = "metrics.jsonl") -> None:
        self.filename = filename

    def on_train_begin(self, trainer: TrainerView) -> None:
        if trainer.run_dir is None:
            return
        # A resumed run drops records past its checkpoint, so the file has each step once.
        RunDir(trainer.run_dir).trim_metrics(trainer.global_step, self.filename)

    def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None:
        if trainer.run_dir is not None:
            RunDir(trainer.run_dir).append_metrics({"step": step, **logs}, self.filename)

    def on_evaluate(self, trainer: TrainerView, step: int, report: EvaluationReport) -> None:
        if trainer.run_dir is not None:
            record = {"step": step, **{f"eval/{k}": v for k, v in report.metrics.items()}}
            RunDir(trainer.run_dir).append_metrics(record, self.filename)


class TensorBoardOptions(_Options):
    log_dir: RunRelativePath | None = None


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

        if trainer.run_dir is not None:
            directory = str(RunDir(trainer.run_dir).confine(self.log_dir or "tensorboard", what="callback log_dir"))
        else:
            directory = self.log_dir or "tensorboard"
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
