"""The Trainer: the optimisation loop over experiences.

One training step = one experience (``num_episodes_per_experience`` rollouts) and every update
over it: batches of ``batch_size`` training examples, ``gradient_accumulation_steps`` batches per
optimizer update (a short last group is applied, not dropped), gradient clipping, then one
scheduler step.

The Trainer trains what it is given: `astra_core.assembly.assemble` builds a run's components,
optimizer and scheduler and hands them over, with the process's `Collectives`, after joining the
process group and seeding once. Wired by hand (``Trainer(config, sampler, algorithm)``), the
Trainer asks the assembly for the rest itself: `assembly.prepare` (join the group, seed with
``training.seed``, here *after* the components were built: anything they initialise at random
was drawn before, so seed yourself first when that must repeat) and
`assembly.optimizer_and_scheduler` (the optimizer and scheduler ``config`` names).

Under ``torchrun`` (see `astra_core.distributed` and docs/scaling.md) each process collects its
share of the experience, gradients are averaged over processes before clipping, and rank 0 alone
writes metrics, checkpoints and reports.

>>> from astra_core.testing.toy import ToyScorer, ToySampler, ToySystem
>>> from astra_example_plugin.reinforce import Reinforce
>>> system = ToySystem(seed=0)
>>> config = TrainingConfiguration(training_steps=2, num_episodes_per_experience=2, batch_size=4)
>>> history = Trainer(config, ToySampler(system, ToyScorer()), Reinforce(system)).train()
>>> [int(logs["step"]) for logs in history]
[1, 2]
"""

from __future__ import annotations

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

from astra_core import assembly, contracts
from astra_core import checkpoint as ckpt
from astra_core.assembly import seed_everything, trainable_parameters
from astra_core.config import TrainingConfiguration
from astra_core.distributed import Collectives, share, step_seed
from astra_core.errors import CheckpointError, ConfigError, TrainingError
from astra_core.harness import Harness
from astra_core.protocols import (
    Algorithm,
    Callback,
    EvaluationReport,
    Evaluator,
    MultiEpochAlgorithm,
    Sampler,
    TreeSampler,
)
from astra_core.registry import Registries
from astra_core.rundir import RunDir, sample_record, staged_directory, transcript_records
from astra_core.types import ActionT, BatchT, ExampleT, StateT

log = logging.getLogger(__name__)

# Keeps ranks' shuffling seeds apart (rank 0 keeps the run's seed, so one process is unchanged).
_RANK_SEED_STRIDE = 1 << 20


# How long SIGTERM/SIGHUP wait for the step in flight before it is abandoned (container grace
# periods are often 10 s; a checkpoint of the step boundary follows the wait).
STOP_GRACE_SECONDS = 5.0


class StepAbandoned(BaseException):
    """Raised inside a step that did not end in time after a stop signal (see `Trainer.train`).

    A BaseException, so that no component's ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"step abandoned after {signal.Signals(signum).name}")


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary because of a signal; a checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path | None, *, abandoned: bool = False) -> None:
        self.signum, self.checkpoint, self.abandoned = signum, checkpoint, abandoned
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        cut = "; the step in flight was abandoned" if abandoned else ""
        super().__init__(f"training interrupted by {signal.Signals(signum).name}{where}{cut}")


@dataclass
class _StepStats:
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    algorithm_logs: dict[str, list[float]] = field(default_factory=dict)
    updates: int = 0
    skipped: int = 0


def _holds_stale(optimizer: torch.optim.Optimizer, before: Sequence[Any], attached: Sequence[Any]) -> bool:
    """Whether `optimizer` still holds parameters that attaching replaced (FSDP's shards)."""
    replaced = {id(p) for p in before} - {id(p) for p in attached}
    return any(id(p) in replaced for group in optimizer.param_groups for p in group["params"])


def _check_accumulation_fits(config: TrainingConfiguration, sampler: object, algorithm: object, episodes: int) -> None:
    """Refuse an accumulation no experience can fill (it would silently make every update short)."""
    if not isinstance(sampler, TreeSampler) or config.gradient_accumulation_steps == 1:
        return
    turns = sum(sampler.tree_width**depth for depth in range(1, sampler.tree_depth + 1))
    epochs = algorithm.epochs_per_experience if isinstance(algorithm, MultiEpochAlgorithm) else 1
    most = math.ceil(episodes * turns / config.batch_size) * epochs
    if config.gradient_accumulation_steps > most:
        raise ConfigError(
            f"training.gradient_accumulation_steps ({config.gradient_accumulation_steps}) is larger than the at most "
            f"{most} batch(es) one experience yields ({episodes} episodes x {turns} turns / batch_size "
            f"{config.batch_size}); lower it to at most {most} or raise num_episodes_per_experience"
        )


class Trainer(Generic[StateT, ActionT, ExampleT, BatchT]):
    """Trains the tester of `sampler.system` with `algorithm`, as `config` says."""

    def __init__(
        self,
        config: TrainingConfiguration,
        sampler: Sampler[StateT, ActionT],
        algorithm: Algorithm[StateT, ActionT, ExampleT, BatchT],
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        evaluator: Evaluator | None = None,
        callbacks: Sequence[Callback] = (),
        collectives: Collectives | None = None,
        registries: Registries | None = None,
        resolved_config: Mapping[str, Any] | None = None,
    ) -> None:
        if config.checkpoint_every is not None and config.output_dir is None:
            raise ConfigError(
                "training.checkpoint_every is set but training.output_dir is not; "
                "set output_dir (where checkpoints go) or drop checkpoint_every"
            )
        self.config = config
        # Wired by hand: join the process group and seed here (assembled runs did it before building).
        self.collectives = collectives if collectives is not None else assembly.prepare(config.seed, config.parallelism)
        self.rank, self.world_size = self.collectives.rank, self.collectives.world_size
        if config.num_episodes_per_experience < self.world_size:
            raise ConfigError(
                f"training.num_episodes_per_experience ({config.num_episodes_per_experience}) is the global count, "
                f"split over {self.world_size} processes; raise it to at least {self.world_size} or use fewer processes"
            )
        _, episodes = share(config.num_episodes_per_experience, self.rank, self.world_size)
        # Every component is held to its protocol from here on, hand-wired ones too: a breach is
        # a one-line ComponentContractError naming the plugin (astra_core.contracts).
        sampler = contracts.guard("sampler", sampler)
        algorithm = contracts.guard("algorithm", algorithm)
        if evaluator is not None:
            evaluator = contracts.guard("evaluator", evaluator)
        callbacks = [contracts.guard("callback", callback) for callback in callbacks]
        self.harness: Harness[StateT, ActionT, ExampleT, BatchT] = Harness(
            sampler,
            algorithm,
            episodes,
            config.batch_size,
            seed=config.seed + self.rank * _RANK_SEED_STRIDE,  # each rank shuffles its share its own way
            shuffle=config.shuffle,
            shuffle_by=config.shuffle_by,
        )
        _check_accumulation_fits(config, sampler, algorithm, episodes)
        parameters = trainable_parameters(algorithm.parameters())
        if not parameters:
            raise ConfigError("the algorithm has no trainable parameters (parameters() yielded none)")
        # Rank 0's initial weights everywhere; FSDP hands back its shards (assembled runs attached
        # before building the optimizer, and get the same list back).
        owners = (contracts.unwrap(sampler.system), contracts.unwrap(algorithm))  # the modules FSDP shards
        self.parameters = self.collectives.attach(parameters, owners)
        if optimizer is not None and _holds_stale(optimizer, parameters, self.parameters):
            raise ConfigError(
                "the optimizer holds the parameters as they were before FSDP sharded them; build it over "
                "the list collectives.attach(...) returns (astra_core.assembly.assemble does), or pass none"
            )
        if optimizer is None:
            optimizer, scheduler = assembly.optimizer_and_scheduler(config, self.parameters, registries)
        elif scheduler is None:
            raise ConfigError("a Trainer given an optimizer needs its scheduler too (see astra_core.assembly)")
        self.optimizer: torch.optim.Optimizer = optimizer
        self.scheduler: Any = scheduler
        self.evaluator = evaluator
        if config.eval_every is not None and evaluator is None:
            raise ConfigError("training.eval_every is set but there is no evaluator; add an [evaluator] table")
        # Rank 0 alone reports: other ranks run no callbacks (no bars, no metrics files).
        self.callbacks: list[Callback] = list(callbacks) if self.is_main else []
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
    def is_main(self) -> bool:
        """Whether this process writes metrics, checkpoints and reports (rank 0, or not distributed)."""
        return self.rank == 0

    @property
    def run_dir(self) -> str | None:
        """Where checkpoints, metrics and reports go (``training.output_dir``)."""
        return self.config.output_dir

    @property
    def sampler(self) -> Sampler[StateT, ActionT]:
        return self.harness.sampler

    @property
    def algorithm(self) -> Algorithm[StateT, ActionT, ExampleT, BatchT]:
        return self.harness.algorithm

    # --- the loop -----------------------------------------------------------------------------

    def train(self) -> list[dict[str, float]]:
        """Train until ``training_steps``; returns every step's metrics.

        SIGINT, SIGTERM or SIGHUP stops at the end of the current step, after a checkpoint (when
        ``output_dir`` is set), by raising `TrainingInterrupted`; a second SIGINT stops at once.
        A step still running `STOP_GRACE_SECONDS` after SIGTERM/SIGHUP is abandoned (nothing of
        it is saved; resuming repeats it exactly).
        """
        if self.run_dir is not None and self.is_main:
            ckpt.check_writable(self.run_dir)  # fail before any work, not at the first checkpoint
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        self._stop_signal = None
        self._call("on_train_begin", self)
        try:
            try:
                with self._signals_stop_at_step_end():
                    while self.global_step < self.config.training_steps:
                        logs = self.train_step()
                        if self._due(self.config.samples_every) and self.run_dir is not None and self.is_main:
                            self._write_samples()
                        self._call("on_step_end", self, self.global_step, logs)
                        if self._due(self.config.eval_every):
                            with self.collectives.gathered():
                                if self.is_main:
                                    self.evaluate()
                        if self._due(self.config.checkpoint_every):
                            self._checkpoint_on_main()
                        stop = self._agreed_stop_signal()
                        if stop is not None:
                            saved = self._checkpoint_on_main() if self.run_dir is not None else None
                            raise TrainingInterrupted(stop, saved if self.is_main else None)
            except StepAbandoned as abandoned:
                # The weights are mid-step: nothing of them is saved; the last checkpoint stands.
                last = ckpt.latest_checkpoint(self.run_dir) if self.run_dir is not None and self.is_main else None
                raise TrainingInterrupted(abandoned.signum, last, abandoned=True) from None
            if self.run_dir is not None:
                self.save_checkpoint()
                self.save_tester(Path(self.run_dir) / "tester")
                self._barrier()
        finally:
            self._call("on_train_end", self)
        return self.history

    def train_step(self) -> dict[str, float]:
        """Collect one experience and apply every update over it; returns the step's metrics.

        An experience with a non-finite reward is skipped as a whole (it would order preference
        pairs arbitrarily); so is an update group with a non-finite loss or gradient. Each skip
        is counted, and `max_nonfinite_in_a_row` of them in a row raise `TrainingError`.
        """
        if self.world_size > 1:
            # Distinct per rank, and a function of the step alone, so a resumed run repeats exactly.
            seed_everything(step_seed(self.config.seed, self.rank, self.global_step))
        started = time.perf_counter()
        with self.collectives.gathered():  # a sharded tester rolls out with its full weights
            loader = self.harness.experience(self.global_step)
        rollout_seconds = time.perf_counter() - started
        logs: dict[str, float] = dict(self.harness.last_metrics)
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step's updates use
        stats = _StepStats()
        bad_rewards = int(logs.get("reward/nonfinite", 0.0))
        groups = math.ceil(len(loader) * self._epochs() / self.config.gradient_accumulation_steps)
        any_bad = bad_rewards > 0
        # Every rank must skip together and take as many updates as the rank with the most data.
        agreed = self._agreed_max([float(any_bad), float(groups)])
        any_bad, groups = agreed[0] > 0, int(agreed[1])
        if any_bad:
            stats.skipped += 1
            where = f"{bad_rewards} in the experience" if bad_rewards else "on another rank"
            self._record_nonfinite(f"reward ({where})")
        else:
            self._update_over(loader, stats, groups)
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
        logs = self.collectives.reduce_metrics(logs)
        self.history.append(logs)
        return logs

    def _epochs(self) -> int:
        algorithm = self.harness.algorithm
        return algorithm.epochs_per_experience if isinstance(algorithm, MultiEpochAlgorithm) else 1

    def _update_over(self, loader: DataLoader[ExampleT], stats: _StepStats, groups: int) -> None:
        """Every optimizer update over one experience: groups of `gradient_accumulation_steps`
        batches (across all epochs), the last group possibly shorter; then, when distributed,
        empty updates until `groups` (the most any rank takes), so every rank steps alike."""
        epochs = self._epochs()
        total = len(loader) * epochs
        accumulation = self.config.gradient_accumulation_steps
        index = 0
        finite = True
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(epochs):
            for batch in loader:
                group_start = index - index % accumulation
                group_size = min(accumulation, total - group_start)
                # The engine reduces gradients in the backward of a group's last batch only.
                with self.collectives.accumulating(index + 1 - group_start < group_size):
                    loss, batch_logs = self.collectives.forward(self.harness.loss, batch)
                    # Dividing by the group's own size makes the update the one of the group's mean
                    # loss, for a short last group too. A non-finite loss is backed too (every
                    # rank's backward takes part in the reduction); its update is then skipped.
                    torch.autograd.backward(loss / group_size)
                if bool(torch.isfinite(loss).all()):
                    stats.losses.append(float(loss.detach()))
                    for key, value in batch_logs.items():
                        stats.algorithm_logs.setdefault(key, []).append(float(value))
                else:
                    finite = False
                index += 1
                if index - group_start == group_size:
                    self._apply_update(finite, stats)
                    finite = True
        applied = math.ceil(total / accumulation)
        for _ in range(groups - applied):
            self._apply_update(True, stats, contributed=False)  # this rank ran out of data: zero gradient

    def _apply_update(self, finite: bool, stats: _StepStats, contributed: bool = True) -> None:
        """Clip and step, unless the loss or the gradient is non-finite: then skip and count.
        Distributed, the gradients are averaged over ranks first and the skip is agreed."""
        finite = self.collectives.average_gradients(self.parameters, finite, contributed)
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
        """Run the evaluator without disturbing the training RNG streams; record its report.

        With a sharded tester (FSDP) over several processes, call it on rank 0 inside
        ``with trainer.collectives.gathered():`` entered by every rank, as the training loop does.
        """
        if self.evaluator is None:
            raise ConfigError("no evaluator configured; add an [evaluator] table to the run file")
        with _preserved_rng():
            report = self.evaluator.evaluate()
        if self.run_dir is not None and self.is_main:
            run_dir = RunDir(self.run_dir)
            run_dir.write_evaluation(self.global_step, report.metrics, report.details, report.markdown)
            run_dir.record_transcripts(transcript_records(report.details, "trained", self.global_step))
        self._call("on_evaluate", self, self.global_step, report)
        return report

    def _write_samples(self) -> None:
        """The first ``samples_per_step`` rollouts of this step's experience, to samples.jsonl."""
        graphs = self.harness.last_graphs[: self.config.samples_per_step]
        RunDir(str(self.run_dir)).append_samples(sample_record(graph, self.global_step) for graph in graphs)

    # --- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write an atomic checkpoint of everything needed to resume exactly.

        Distributed, every rank calls it (FSDP gathers the full weights and optimizer state from
        the shards) and only rank 0 writes (per-rank randomness is derived from the seed and the
        step); other ranks return the path rank 0 writes to without touching the disk.
        """
        if self.run_dir is None:
            raise ConfigError("set training.output_dir to save checkpoints")
        weights, optimizer_state = self.collectives.full_state(self._named_parameters(), self.optimizer)
        if not self.is_main:
            return Path(self.run_dir) / ckpt.CHECKPOINTS / f"step-{self.global_step:08d}"
        key = (self.global_step, self.run_dir)
        if self._saved is not None and self._saved[0] == key and self._saved[1].is_dir():
            return self._saved[1]  # nothing changed since (a state change always advances the step)
        state: dict[str, Any] = {
            "global_step": self.global_step,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "world_size": self.world_size,
        }
        # A sampler with state of its own (a memory its reward reads) offers state_dict(): JSON.
        sampler_state = getattr(self.harness.sampler, "state_dict", None)
        if callable(sampler_state):
            state["sampler"] = sampler_state()
        path = ckpt.save_checkpoint(
            self.run_dir,
            self.global_step,
            weights,
            optimizer_state,
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
        named = self._named_parameters()

        def accept(loaded: ckpt.Resumable) -> None:
            ckpt.check_same_run(self.resolved_config, loaded.config, loaded.path)
            try:
                ckpt.load_weights(loaded.path, named if set(named) <= set(loaded.weights) else self.parameters)
            except CheckpointError as error:
                raise ckpt.DifferentRunError(str(error)) from None
            ckpt.check_optimizer_shapes(loaded, self.parameters)
            try:  # the last check that can fail: an optimizer state that does not fit this optimizer
                ckpt.load_optimizer_state(self.optimizer, loaded.optimizer_tensors, loaded.optimizer_data)
                if loaded.scheduler is not None:
                    self.scheduler.load_state_dict(loaded.scheduler)
            except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:
                raise CheckpointError(
                    f"{loaded.path}: optimizer or scheduler state does not fit ({type(error).__name__}: {error})"
                ) from None

        loaded = ckpt.open_resumable(source, accept)
        ckpt.set_rng_state(loaded.rng_tensors, loaded.rng_data)
        state = loaded.state
        self.global_step = loaded.step
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        load_sampler_state = getattr(self.harness.sampler, "load_state_dict", None)
        if callable(load_sampler_state) and "sampler" in state:
            load_sampler_state(state["sampler"])
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            log.warning(
                "%s was written by %d process(es), resuming with %d: rollouts from here differ from "
                "the uninterrupted run's (training is still valid)",
                loaded.path,
                saved_world,
                self.world_size,
            )
        self._saved = None
        return loaded.path

    def _named_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The trained parameters by the names the system (then the algorithm) gives them."""
        names = ckpt.parameter_names(self.parameters, self.harness.sampler.system, self.harness.algorithm)
        return dict(zip(names, self.parameters, strict=True))

    def save_tester(self, directory: Path) -> Path | None:
        """Save the tester in its native format when the system can (for example HF's), atomically.

        Distributed, every rank calls it (FSDP gathers the tester's full weights) and rank 0 writes.
        """
        save = getattr(self.harness.sampler.system, "save_pretrained", None)
        if save is None:
            return None
        full = self.collectives.tester_state()
        if not self.is_main:
            return None
        # Saved beside the destination and renamed into place: a crash or a full disk while
        # saving leaves the previous folder (or none), never a folder without weights.
        with staged_directory(Path(directory)) as staging:
            save(str(staging)) if full is None else save(str(staging), state_dict=full)
        return Path(directory)

    # --- helpers ------------------------------------------------------------------------------

    def _due(self, every: int | None) -> bool:
        return every is not None and self.global_step % every == 0

    def _agreed_max(self, values: Sequence[float]) -> list[float]:
        return self.collectives.max(values, self.parameters[0].device)

    def _barrier(self) -> None:
        self.collectives.barrier()

    def _checkpoint_on_main(self) -> Path:
        """Rank 0 saves; the others wait, so nobody runs ahead of a checkpoint being written."""
        path = self.save_checkpoint()
        self._barrier()
        return path

    def _agreed_stop_signal(self) -> int | None:
        """The stop signal any rank received (torchrun forwards signals, but not at the same instant)."""
        if self.world_size == 1:
            return self._stop_signal
        agreed = int(self._agreed_max([float(self._stop_signal or 0)])[0])
        return agreed or None

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    @contextmanager
    def _signals_stop_at_step_end(self) -> Iterator[None]:
        """SIGINT, SIGTERM and SIGHUP stop at the end of the step in flight. A step that has not
        ended `STOP_GRACE_SECONDS` after SIGTERM/SIGHUP (or a second one) is abandoned: the run
        stops at once, its last checkpoint stands, and a resume repeats the abandoned step."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        timers: list[threading.Timer] = []

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if self._stop_signal is not None:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt  # a second Ctrl-C stops at once
                raise StepAbandoned(self._stop_signal)
            self._stop_signal = signum
            log.warning("%s received: stopping after this step", signal.Signals(signum).name)
            if signum != signal.SIGINT:  # a supervisor's grace period is short: bound the wait
                # A real signal (not interrupt_main) also wakes a main thread blocked in a sleep or wait.
                main = threading.main_thread().ident
                timer = threading.Timer(STOP_GRACE_SECONDS, signal.pthread_kill, (main, signum))
                timer.daemon = True
                timer.start()
                timers.append(timer)

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            yield
        finally:
            for timer in timers:
                timer.cancel()
            for signum, handler in previous.items():
                signal.signal(signum, handler)


@contextmanager
def _preserved_rng() -> Iterator[None]:
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
