"""The Trainer: the optimisation loop over experiences.

One training step = one experience (``num_episodes_per_experience`` rollouts) and every update
over it: batches of ``batch_size`` steps, ``gradient_accumulation_steps`` batches per optimizer
update (a short last group is applied, not dropped), gradient clipping, then one scheduler step.

>>> # trainer = Trainer(TrainingConfiguration(training_steps=10), sampler, algorithm)
>>> # trainer.train()
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Generic

import numpy as np
import torch
from torch.utils.data import DataLoader

from astra_core import checkpoint as ckpt
from astra_core.config import TrainingConfiguration
from astra_core.errors import CheckpointError, ConfigError, TrainingError
from astra_core.harness import Harness
from astra_core.protocols import (
    Algorithm,
    Callback,
    EvaluationReport,
    Evaluator,
    MultiEpochAlgorithm,
    Sampler,
)
from astra_core.registry import Registries
from astra_core.types import ActionT, BatchT, StateT, StepT

log = logging.getLogger(__name__)

# Settings that may change between an interrupted run and its resume.
_RESUMABLE_CHANGES = {
    "training_steps",
    "output_dir",
    "checkpoint_every",
    "eval_every",
    "keep_checkpoints",
    "max_nonfinite_in_a_row",
}


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary because of a signal; a checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"training interrupted by {signal.Signals(signum).name}{where}")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class _StepStats:
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    algorithm_logs: dict[str, list[float]] = field(default_factory=dict)
    updates: int = 0
    skipped: int = 0


def _unique(parameters: Sequence[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    unique = []
    for parameter in parameters:
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            unique.append(parameter)
    return unique


class Trainer(Generic[StateT, ActionT, StepT, BatchT]):
    """Trains the tester of `sampler.system` with `algorithm`, as `config` says."""

    def __init__(
        self,
        config: TrainingConfiguration,
        sampler: Sampler[StateT, ActionT],
        algorithm: Algorithm[StateT, ActionT, StepT, BatchT],
        *,
        evaluator: Evaluator | None = None,
        callbacks: Sequence[Callback] = (),
        registries: Registries | None = None,
        resolved_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        seed_everything(config.seed)
        self.harness: Harness[StateT, ActionT, StepT, BatchT] = Harness(
            sampler,
            algorithm,
            config.num_episodes_per_experience,
            config.batch_size,
            seed=config.seed,
            shuffle=config.shuffle,
        )
        self.parameters = _unique(list(algorithm.parameters()))
        if not self.parameters:
            raise ConfigError("the algorithm has no trainable parameters (parameters() yielded none)")
        if registries is None:
            from astra_core.plugins import registries as loaded

            registries = loaded()
        optimizer_info = registries.get("optimizer", config.optimizer.name)
        self.optimizer: torch.optim.Optimizer = optimizer_info.build(
            self.parameters, options=config.optimizer.options, lr=config.lr
        )
        scheduler_ref = config.scheduler_ref()
        self.scheduler: Any = registries.get("scheduler", scheduler_ref.name).build(
            self.optimizer, options=scheduler_ref.options, total_steps=config.training_steps
        )
        self.evaluator = evaluator
        if config.eval_every is not None and evaluator is None:
            raise ConfigError("training.eval_every is set but there is no evaluator; add an [evaluator] table")
        self.callbacks: list[Callback] = list(callbacks)
        self.resolved_config = (
            dict(resolved_config) if resolved_config is not None else {"training": config.model_dump(mode="json")}
        )
        self.global_step = 0
        self.total_steps = config.training_steps
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.history: list[dict[str, float]] = []
        self._stop_signal: int | None = None
        self._saved: tuple[tuple[int, str], Path] | None = None

    @property
    def run_dir(self) -> str | None:
        """Where checkpoints, metrics and reports go (``training.output_dir``)."""
        return self.config.output_dir

    @property
    def sampler(self) -> Sampler[StateT, ActionT]:
        return self.harness.sampler

    @property
    def algorithm(self) -> Algorithm[StateT, ActionT, StepT, BatchT]:
        return self.harness.algorithm

    # --- the loop -----------------------------------------------------------------------------

    def train(self) -> list[dict[str, float]]:
        """Train until ``training_steps``; returns every step's metrics.

        SIGINT or SIGTERM stops at the end of the current step, after a checkpoint (when
        ``output_dir`` is set), by raising `TrainingInterrupted`; a second SIGINT stops at once.
        """
        if self.run_dir is not None:
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        self._stop_signal = None
        self._call("on_train_begin", self)
        try:
            with self._signals_stop_at_step_end():
                while self.global_step < self.config.training_steps:
                    logs = self.train_step()
                    self._call("on_step_end", self, self.global_step, logs)
                    if self._due(self.config.eval_every):
                        self.evaluate()
                    if self._due(self.config.checkpoint_every):
                        self.save_checkpoint()
                    if self._stop_signal is not None:
                        saved = self.save_checkpoint() if self.run_dir is not None else None
                        raise TrainingInterrupted(self._stop_signal, saved)
            if self.run_dir is not None:
                self.save_checkpoint()
                self.save_tester(Path(self.run_dir) / "tester")
        finally:
            self._call("on_train_end", self)
        return self.history

    def train_step(self) -> dict[str, float]:
        """Collect one experience and apply every update over it; returns the step's metrics.

        An experience with a non-finite reward is skipped as a whole (it would order preference
        pairs arbitrarily); so is an update group with a non-finite loss or gradient. Each skip
        is counted, and `max_nonfinite_in_a_row` of them in a row raise `TrainingError`.
        """
        started = time.perf_counter()
        loader = self.harness.experience(self.global_step)
        rollout_seconds = time.perf_counter() - started
        logs: dict[str, float] = dict(self.harness.last_metrics)
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step's updates use
        stats = _StepStats()
        bad_rewards = int(logs.get("reward/nonfinite", 0.0))
        if bad_rewards:
            stats.skipped += 1
            self._record_nonfinite(f"reward ({bad_rewards} in the experience)")
        else:
            self._update_over(loader, stats)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            self.scheduler.step()
        self.global_step += 1
        logs.update(
            {
                "step": float(self.global_step),
                "loss": sum(stats.losses) / len(stats.losses) if stats.losses else math.nan,
                "lr": lr,
                "updates": float(stats.updates),
                "skipped_updates": float(stats.skipped),
                "nonfinite_total": float(self.nonfinite_total),
                "time/rollout": rollout_seconds,
                "time/step": time.perf_counter() - started,
            }
        )
        if stats.grad_norms:
            logs["grad_norm"] = sum(stats.grad_norms) / len(stats.grad_norms)
        for key, values in stats.algorithm_logs.items():
            logs[key] = sum(values) / len(values)
        self.history.append(logs)
        return logs

    def _update_over(self, loader: DataLoader[StepT], stats: _StepStats) -> None:
        """Every optimizer update over one experience: groups of `gradient_accumulation_steps`
        batches (across all epochs), the last group possibly shorter."""
        algorithm = self.harness.algorithm
        epochs = algorithm.epochs_per_experience if isinstance(algorithm, MultiEpochAlgorithm) else 1
        total = len(loader) * epochs
        accumulation = self.config.gradient_accumulation_steps
        index = 0
        finite = True
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(epochs):
            for batch in loader:
                group_start = index - index % accumulation
                group_size = min(accumulation, total - group_start)
                loss, step_logs = self.harness.step(batch)
                if bool(torch.isfinite(loss).all()):
                    # Dividing by the group's own size makes the update the one of the group's mean
                    # loss, for a short last group too.
                    torch.autograd.backward(loss / group_size)
                    stats.losses.append(float(loss.detach()))
                    for key, value in step_logs.items():
                        stats.algorithm_logs.setdefault(key, []).append(float(value))
                else:
                    finite = False
                index += 1
                if index - group_start == group_size:
                    self._apply_update(finite, stats)
                    finite = True

    def _apply_update(self, finite: bool, stats: _StepStats) -> None:
        """Clip and step, unless the loss or the gradient is non-finite: then skip and count."""
        norm = self._gradient_norm() if finite else math.nan
        if math.isfinite(norm):
            self.optimizer.step()
            stats.updates += 1
            stats.grad_norms.append(norm)
            self.nonfinite_in_a_row = 0
        else:
            stats.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(norm):
            self._record_nonfinite("loss or gradient")

    def _gradient_norm(self) -> float:
        """The total gradient norm before clipping; clips to `max_grad_norm` when it is set."""
        if self.config.max_grad_norm is None:
            grads = [p.grad for p in self.parameters if p.grad is not None]
            return float(torch.nn.utils.get_total_norm(grads))
        return float(torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm))

    def _record_nonfinite(self, what: str) -> None:
        self.nonfinite_total += 1
        self.nonfinite_in_a_row += 1
        log.warning(
            "non-finite %s at step %d: update skipped (%d so far, %d in a row)",
            what,
            self.global_step + 1,
            self.nonfinite_total,
            self.nonfinite_in_a_row,
        )
        if self.nonfinite_in_a_row >= self.config.max_nonfinite_in_a_row:
            # Mid-step state is not resumable exactly, so point at the last step-boundary checkpoint.
            last = ckpt.latest_checkpoint(self.run_dir) if self.run_dir is not None else None
            where = (
                f"last good checkpoint: {last}"
                if last is not None
                else "no checkpoint was written yet (set training.output_dir and training.checkpoint_every)"
            )
            raise TrainingError(
                f"{self.nonfinite_in_a_row} non-finite losses or rewards in a row at step {self.global_step + 1}; "
                f"{where}; lower training.lr, set training.max_grad_norm, or check the scorer's outputs"
            )

    def evaluate(self) -> EvaluationReport:
        """Run the evaluator without disturbing the training RNG streams; record its report."""
        if self.evaluator is None:
            raise ConfigError("no evaluator configured; add an [evaluator] table to the run file")
        with _preserved_rng():
            report = self.evaluator.evaluate()
        if self.run_dir is not None:
            directory = Path(self.run_dir) / "eval"
            directory.mkdir(parents=True, exist_ok=True)
            stem = directory / f"step-{self.global_step:08d}"
            payload = {"step": self.global_step, "metrics": report.metrics, "details": report.details}
            stem.with_suffix(".json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
            if report.markdown:
                stem.with_suffix(".md").write_text(report.markdown, encoding="utf-8")
        self._call("on_evaluate", self, self.global_step, report)
        return report

    # --- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write an atomic checkpoint of everything needed to resume exactly."""
        if self.run_dir is None:
            raise ConfigError("set training.output_dir to save checkpoints")
        key = (self.global_step, self.run_dir)
        if self._saved is not None and self._saved[0] == key and self._saved[1].is_dir():
            return self._saved[1]  # nothing changed since (a state change always advances the step)
        state = {
            "global_step": self.global_step,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }
        path = ckpt.save_checkpoint(
            self.run_dir,
            self.global_step,
            self.parameters,
            self.optimizer,
            self.scheduler,
            state,
            self.resolved_config,
            keep=self.config.keep_checkpoints,
        )
        self._saved = (key, path)
        return path

    def resume(self, source: str | Path | None = None) -> Path:
        """Load the newest verified checkpoint of `source` (a run dir or checkpoint; default: the
        run dir) so that training continues exactly where it stopped.

        Raises `CheckpointError` when there is no complete checkpoint, a checksum fails, or the
        checkpoint was written by a run with a different configuration.
        """
        if source is None and self.run_dir is None:
            raise ConfigError("nothing to resume from: set training.output_dir or pass a checkpoint directory")
        source = Path(source) if source is not None else Path(str(self.run_dir))
        checkpoint = source if (source / ckpt.MANIFEST).exists() else ckpt.latest_checkpoint(source)
        if checkpoint is None:
            raise CheckpointError(f"{source}: no complete checkpoint to resume from")
        ckpt.verify(checkpoint)
        self._check_same_run(ckpt.read_json(checkpoint, "config.json"), checkpoint)
        weights = ckpt.load_tensors(checkpoint, "weights.safetensors")
        if len(weights) != len(self.parameters):
            raise CheckpointError(
                f"{checkpoint}: holds {len(weights)} parameter tensors, this run trains "
                f"{len(self.parameters)}; it is from a different model"
            )
        with torch.no_grad():
            for i, parameter in enumerate(self.parameters):
                saved = weights[f"param.{i:05d}"]
                if saved.shape != parameter.shape:
                    raise CheckpointError(
                        f"{checkpoint}: parameter {i} has shape {tuple(saved.shape)}, "
                        f"expected {tuple(parameter.shape)}; it is from a different model"
                    )
                parameter.copy_(saved)
        ckpt.load_optimizer_state(
            self.optimizer,
            ckpt.load_tensors(checkpoint, "optimizer.safetensors"),
            ckpt.read_json(checkpoint, "optimizer.json"),
        )
        scheduler_state = ckpt.read_json(checkpoint, "scheduler.json")
        if scheduler_state is not None:
            self.scheduler.load_state_dict(scheduler_state)
        ckpt.set_rng_state(ckpt.load_tensors(checkpoint, "rng.safetensors"), ckpt.read_json(checkpoint, "rng.json"))
        state = ckpt.read_json(checkpoint, "state.json")
        self.global_step = int(state["global_step"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self._saved = None
        return checkpoint

    def _check_same_run(self, saved: Mapping[str, Any], checkpoint: Path) -> None:
        def comparable(config: Mapping[str, Any]) -> dict[str, Any]:
            data = {k: v for k, v in config.items() if k != "callbacks"}
            data["training"] = {
                k: v for k, v in dict(config.get("training", {})).items() if k not in _RESUMABLE_CHANGES
            }
            return data

        mine, theirs = comparable(self.resolved_config), comparable(saved)
        if mine != theirs:
            differing = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise CheckpointError(
                f"{checkpoint}: written by a run with a different configuration "
                f"(differs in: {', '.join(differing)}); resume with that run's config"
            )

    def save_tester(self, directory: Path) -> Path | None:
        """Save the tester in its native format when the system can (for example HF's)."""
        save = getattr(self.harness.sampler.system, "save_pretrained", None)
        if save is None:
            return None
        save(str(directory))
        return directory

    # --- helpers ------------------------------------------------------------------------------

    def _due(self, every: int | None) -> bool:
        return every is not None and self.global_step % every == 0

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    @contextmanager
    def _signals_stop_at_step_end(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self._stop_signal = signum
            log.warning("%s received: stopping after this step", signal.Signals(signum).name)

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


@contextmanager
def _preserved_rng() -> Iterator[None]:
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
