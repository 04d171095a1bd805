"""The Trainer: every TrainingConfiguration field takes effect; non-finite values are survived."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

from astra_core.callbacks import BaseCallback, MetricsJSONL
from astra_core.errors import ConfigError, OptionsError, TrainingError, UnknownComponentError
from astra_core.protocols import EvaluationReport, TrainerView
from astra_core.trainer import TrainingInterrupted

if TYPE_CHECKING:
    from conftest import Kit, Pair

# Every episode of ToySampler(width 2, depth 2) has 3 sibling groups; with keep_ties each gives one pair.
PAIRS_PER_EPISODE = 3


def exact_pairs(kit: Kit, **options: Any) -> Any:
    return kit.parts(algorithm=lambda system: kit.ToyDPO(system, keep_ties=True), **options)


def count_optimizer_steps(optimizer: torch.optim.Optimizer) -> list[int]:
    calls: list[int] = []
    optimizer.register_step_post_hook(lambda *_: calls.append(1))
    return calls


# --- each field takes effect ----------------------------------------------------------------


def test_batch_size_sets_the_dataloader_batches(kit: Kit) -> None:
    parts = exact_pairs(kit)
    trainer = kit.trainer(kit.config(batch_size=4, num_episodes_per_experience=5, training_steps=1), parts)
    trainer.train()
    assert parts.algorithm.batch_sizes == [4, 4, 4, 3]  # 15 pairs


def test_lr_sets_the_optimizer_learning_rate(kit: Kit) -> None:
    trainer = kit.trainer(kit.config(lr=0.0123, training_steps=2), kit.parts())
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0123
    history = trainer.train()
    assert [logs["lr"] for logs in history] == [0.0123, 0.0123]


def test_optimizer_name_and_options_pass_through(kit: Kit) -> None:
    config = kit.config(optimizer={"name": "adamw", "weight_decay": 0.25, "betas": (0.8, 0.95)})
    trainer = kit.trainer(config, kit.parts())
    assert type(trainer.optimizer) is torch.optim.AdamW
    group = trainer.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.25
    assert tuple(group["betas"]) == (0.8, 0.95)

    sgd = kit.trainer(kit.config(optimizer={"name": "sgd", "momentum": 0.9, "nesterov": True}), kit.parts())
    assert type(sgd.optimizer) is torch.optim.SGD
    assert sgd.optimizer.param_groups[0]["momentum"] == 0.9
    assert sgd.optimizer.param_groups[0]["nesterov"] is True


def test_unknown_optimizer_or_option_is_a_clear_error(kit: Kit) -> None:
    with pytest.raises(UnknownComponentError, match=r"unknown optimizer 'adamx'.*did you mean 'adam"):
        kit.trainer(kit.config(optimizer="adamx"), kit.parts())
    with pytest.raises(OptionsError, match="unknown option 'momentum'"):
        kit.trainer(kit.config(optimizer={"name": "adamw", "momentum": 0.9}), kit.parts())


def test_gradient_accumulation_sets_updates_per_step_and_keeps_a_short_last_group(kit: Kit) -> None:
    parts = exact_pairs(kit)
    config = kit.config(batch_size=3, num_episodes_per_experience=5, gradient_accumulation_steps=2, training_steps=2)
    trainer = kit.trainer(config, parts)
    steps = count_optimizer_steps(trainer.optimizer)
    history = trainer.train()
    assert parts.algorithm.batch_sizes == [3] * 10  # 5 batches per step
    assert len(steps) == 6  # [2, 2, 1] per step: the leftover batch is applied, not dropped
    assert [logs["updates"] for logs in history] == [3.0, 3.0]


def test_accumulated_update_equals_the_update_on_the_groups_mean_loss(kit: Kit) -> None:
    lr = 0.5
    parts = exact_pairs(kit)
    config = kit.config(
        lr=lr,
        optimizer={"name": "sgd"},
        batch_size=3,
        num_episodes_per_experience=5,
        gradient_accumulation_steps=2,
        training_steps=1,
        shuffle=False,
    )
    kit.trainer(config, parts).train()
    batches = parts.algorithm.batches
    assert [len(b) for b in batches] == [3] * 5

    def replay(leftover_divisor: int) -> list[torch.Tensor]:
        fresh = exact_pairs(kit)
        for group in (batches[0:2], batches[2:4], batches[4:5]):
            divisor = len(group) if len(group) == 2 else leftover_divisor
            loss = sum((fresh.algorithm.loss(batch)[0] for batch in group), torch.tensor(0.0)) / divisor
            loss.backward()
            with torch.no_grad():
                for parameter in fresh.system.parameters():
                    assert parameter.grad is not None
                    parameter -= lr * parameter.grad
                    parameter.grad = None
        return kit.weights(fresh)

    trained = kit.weights(parts)
    expected = replay(leftover_divisor=1)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(trained, expected, strict=True))
    # The check can fail: scaling the leftover batch as if its group were full gives other weights.
    wrong = replay(leftover_divisor=2)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(trained, wrong, strict=True))


def test_training_steps_sets_the_number_of_experiences(kit: Kit) -> None:
    trainer = kit.trainer(kit.config(training_steps=3), kit.parts())
    history = trainer.train()
    assert trainer.global_step == 3
    assert [logs["step"] for logs in history] == [1.0, 2.0, 3.0]


def test_num_episodes_per_experience_sets_rollouts_per_experience(kit: Kit) -> None:
    parts = kit.parts()
    trainer = kit.trainer(kit.config(num_episodes_per_experience=7, training_steps=2), parts)
    calls: list[int] = []
    original = parts.sampler.rollouts

    def counting(count: int) -> Any:
        calls.append(count)
        return original(count)

    parts.sampler.rollouts = counting  # type: ignore[method-assign]
    history = trainer.train()
    assert calls == [7, 7]
    assert len(trainer.harness.last_graphs) == 7
    assert [logs["episodes"] for logs in history] == [7.0, 7.0]


def test_same_seed_same_weights_different_seed_different_weights(kit: Kit) -> None:
    def trained(seed: int) -> list[torch.Tensor]:
        parts = kit.parts()
        kit.trainer(kit.config(seed=seed, training_steps=3), parts).train()
        return kit.weights(parts)

    first, again, other = trained(1), trained(1), trained(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_max_grad_norm_clips_the_update(kit: Kit) -> None:
    def one_update(max_grad_norm: float | None) -> tuple[float, float]:
        parts = exact_pairs(kit)
        before = kit.weights(parts)
        config = kit.config(lr=1.0, optimizer="sgd", batch_size=64, training_steps=1, max_grad_norm=max_grad_norm)
        logs = kit.trainer(config, parts).train()[0]
        assert logs["updates"] == 1.0
        delta = torch.cat([(a - b).flatten() for a, b in zip(kit.weights(parts), before, strict=True)])
        return float(delta.norm()), logs["grad_norm"]

    unclipped_step, grad_norm = one_update(None)
    assert unclipped_step == pytest.approx(grad_norm, rel=1e-4)
    assert grad_norm > 1e-2
    clipped_step, logged = one_update(1e-3)
    assert logged == pytest.approx(grad_norm)  # the logged norm is the one before clipping
    assert clipped_step == pytest.approx(1e-3, rel=1e-3)


def test_lr_scheduler_with_warmup_sets_the_lr_trajectory(kit: Kit) -> None:
    config = kit.config(lr=0.1, lr_scheduler="constant", warmup_steps=3, training_steps=5)
    history = kit.trainer(config, kit.parts()).train()
    assert [logs["lr"] for logs in history] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1])

    config = kit.config(lr=0.1, lr_scheduler={"name": "cosine", "min_lr_ratio": 0.1}, warmup_steps=2, training_steps=6)
    history = kit.trainer(config, kit.parts()).train()
    cosine = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert [logs["lr"] for logs in history] == pytest.approx([0.05, 0.1, *cosine])


def test_checkpoint_every_writes_checkpoints_at_those_steps(kit: Kit, tmp_path: Path) -> None:
    config = kit.config(training_steps=5, checkpoint_every=2, keep_checkpoints=10, output_dir=str(tmp_path))
    kit.trainer(config, kit.parts()).train()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000004", "step-00000005"]  # and the final one


class CountingEvaluator:
    """A real evaluator in miniature: rolls out one episode, reports its mean reward."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.calls = 0

    def evaluate(self) -> EvaluationReport:
        self.calls += 1
        graph = self.sampler.eval_rollouts(["hello there"])[0]
        rewards = [node.reward for node in graph.nodes()]
        return EvaluationReport(metrics={"reward": sum(rewards) / len(rewards)}, markdown="# eval\n")


def test_eval_every_runs_the_evaluator_without_changing_training(kit: Kit, tmp_path: Path) -> None:
    parts = kit.parts()
    evaluator = CountingEvaluator(parts.sampler)
    seen: list[int] = []

    class Recorder(BaseCallback):
        def on_evaluate(self, trainer: TrainerView, step: int, report: EvaluationReport) -> None:
            seen.append(step)

    config = kit.config(training_steps=5, eval_every=2, output_dir=str(tmp_path))
    kit.trainer(config, parts, evaluator=evaluator, callbacks=[Recorder()]).train()
    assert evaluator.calls == 2
    assert seen == [2, 4]
    report = json.loads((tmp_path / "eval" / "step-00000004.json").read_text())
    assert report["step"] == 4 and "reward" in report["metrics"]
    assert (tmp_path / "eval" / "step-00000004.md").read_text() == "# eval\n"

    plain = kit.parts()
    kit.trainer(kit.config(training_steps=5), plain).train()
    assert all(torch.equal(a, b) for a, b in zip(kit.weights(parts), kit.weights(plain), strict=True))


def test_eval_every_without_an_evaluator_is_a_config_error(kit: Kit) -> None:
    with pytest.raises(ConfigError, match="no evaluator"):
        kit.trainer(kit.config(eval_every=2), kit.parts())


def test_shuffle_false_keeps_the_flatten_order(kit: Kit) -> None:
    def first_batch(shuffle: bool) -> tuple[list[Pair], list[Pair]]:
        parts = exact_pairs(kit)
        trainer = kit.trainer(kit.config(shuffle=shuffle, batch_size=64, training_steps=1), parts)
        trainer.train()
        flattened = list(parts.algorithm.flatten(trainer.harness.last_graphs))
        return parts.algorithm.batches[0], flattened

    batch, flattened = first_batch(shuffle=False)
    assert batch == flattened
    batch, flattened = first_batch(shuffle=True)
    assert batch != flattened and sorted(map(repr, batch)) == sorted(map(repr, flattened))


# --- faults are survived --------------------------------------------------------------------


def test_empty_experience_is_a_logged_skip(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    class NoPairs(kit.ToyDPO):  # type: ignore[name-defined,misc]
        def flatten(self, graphs: Any) -> list[Pair]:
            return []

    parts = kit.parts(algorithm=NoPairs)
    before = kit.weights(parts)
    with caplog.at_level(logging.WARNING):
        history = kit.trainer(kit.config(training_steps=2), parts).train()
    assert [logs["updates"] for logs in history] == [0.0, 0.0]
    assert all(logs["train_examples"] == 0.0 and math.isnan(logs["loss"]) for logs in history)
    assert "produced no training examples" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, kit.weights(parts), strict=True))


def test_nonfinite_loss_skips_the_update_and_counts_it(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    parts = kit.parts(algorithm=lambda system: kit.NaNLossAfter(system, after=2, keep_ties=True))
    config = kit.config(batch_size=3, num_episodes_per_experience=2, training_steps=2)  # 2 batches per step
    with caplog.at_level(logging.WARNING):
        history = kit.trainer(config, parts).train()
    assert [(logs["updates"], logs["skipped_updates"]) for logs in history] == [(2.0, 0.0), (0.0, 2.0)]
    assert history[-1]["nonfinite_total"] == 2.0
    assert "non-finite loss or gradient at step 2: update skipped" in caplog.text
    assert all(torch.isfinite(w).all() for w in kit.weights(parts))


def test_too_many_nonfinite_losses_stop_naming_the_last_good_checkpoint(kit: Kit, tmp_path: Path) -> None:
    parts = kit.parts(algorithm=lambda system: kit.NaNLossAfter(system, after=4, keep_ties=True))
    config = kit.config(
        batch_size=3,
        num_episodes_per_experience=2,
        training_steps=10,
        checkpoint_every=1,
        output_dir=str(tmp_path),
        max_nonfinite_in_a_row=3,
    )
    trainer = kit.trainer(config, parts)
    with pytest.raises(TrainingError, match="3 non-finite losses or rewards in a row at step 4") as caught:
        trainer.train()
    good = tmp_path / "checkpoints" / "step-00000003"
    assert f"last good checkpoint: {good}" in str(caught.value)
    assert all(torch.isfinite(w).all() for w in kit.weights(parts))
    resumed = kit.trainer(config, exact_pairs(kit))
    assert resumed.resume(str(caught.value).split("last good checkpoint: ")[1].split(";")[0]) == good


def test_nonfinite_rewards_skip_the_experience(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    parts = kit.parts(scorer=kit.NaNScorer(), algorithm=lambda system: kit.ToyDPO(system, keep_ties=True))
    before = kit.weights(parts)
    with caplog.at_level(logging.WARNING):
        history = kit.trainer(kit.config(training_steps=2), parts).train()
    assert [logs["skipped_updates"] for logs in history] == [1.0, 1.0]
    assert history[-1]["nonfinite_total"] == 2.0
    assert "non-finite reward" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, kit.weights(parts), strict=True))
    with pytest.raises(TrainingError, match="no checkpoint was written yet"):
        kit.trainer(kit.config(training_steps=5, max_nonfinite_in_a_row=2), parts).train()


def test_an_algorithm_without_parameters_is_a_config_error(kit: Kit) -> None:
    class Frozen(kit.ToyDPO):  # type: ignore[name-defined,misc]
        def parameters(self) -> Any:
            return iter(())

    with pytest.raises(ConfigError, match="no trainable parameters"):
        kit.trainer(kit.config(), kit.parts(algorithm=Frozen))


# --- callbacks ------------------------------------------------------------------------------


def test_callbacks_see_every_step_in_order(kit: Kit) -> None:
    events: list[tuple[str, int]] = []

    class Recorder(BaseCallback):
        def on_train_begin(self, trainer: TrainerView) -> None:
            events.append(("begin", trainer.global_step))

        def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None:
            events.append(("step", step))

        def on_train_end(self, trainer: TrainerView) -> None:
            events.append(("end", trainer.global_step))

    kit.trainer(kit.config(training_steps=2), kit.parts(), callbacks=[Recorder()]).train()
    assert events == [("begin", 0), ("step", 1), ("step", 2), ("end", 2)]


def test_metrics_jsonl_has_each_step_once_after_a_resume(kit: Kit, tmp_path: Path) -> None:
    config = kit.config(training_steps=4, checkpoint_every=2, output_dir=str(tmp_path))
    kit.trainer(config, kit.parts(), callbacks=[MetricsJSONL()]).train()
    # Pretend the run died after writing step 3's metrics but before its checkpoint.
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "loss": 9.0}\n{"step": 4, "lo')
    (tmp_path / "checkpoints" / "step-00000004").rename(tmp_path / "checkpoints" / ".tmp-gone")
    resumed = kit.trainer(config, kit.parts(), callbacks=[MetricsJSONL()])
    resumed.resume()
    resumed.train()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# --- signals --------------------------------------------------------------------------------


def test_sigint_stops_at_a_step_boundary_with_a_checkpoint_and_resume_completes(kit: Kit, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "TEST_STEP_DELAY": "0.2", "TEST_CHECKPOINT_EVERY": "0"}
    process = subprocess.Popen(
        [sys.executable, "-c", kit.TRAIN_SCRIPT, str(kit.conftest_path), str(run_dir), "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.strip())
        if line.strip() == "step 2":
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=60)
    lines += out.splitlines()
    assert process.returncode == 3, err
    interrupted = [line for line in lines if line.startswith("interrupted ")]
    assert interrupted, lines
    checkpoint = Path(interrupted[0].split(" ", 1)[1])
    last_step = max(int(line.split()[1]) for line in lines if line.startswith("step "))
    assert checkpoint == run_dir / "checkpoints" / f"step-{last_step:08d}"  # the step in flight finished
    assert 2 <= last_step < 8
    assert "TrainingInterrupted" not in err

    parts = kit.parts()
    trainer = kit.trainer(kit.script_config(run_dir, 8, checkpoint_every=None), parts)
    assert trainer.resume() == checkpoint
    trainer.train()
    assert trainer.global_step == 8

    reference = kit.parts()
    kit.trainer(kit.script_config(tmp_path / "reference", 8, checkpoint_every=None), reference).train()
    assert all(torch.equal(a, b) for a, b in zip(kit.weights(parts), kit.weights(reference), strict=True))


def test_training_interrupted_names_the_signal_and_checkpoint() -> None:
    error = TrainingInterrupted(signal.SIGTERM, Path("run/checkpoints/step-00000003"))
    assert str(error) == "training interrupted by SIGTERM; checkpoint run/checkpoints/step-00000003"


class SendSignals(BaseCallback):
    """Sends this process `signals` from inside step `at`, as a user's Ctrl-C would arrive."""

    def __init__(self, at: int, *signals: int) -> None:
        self.at, self.signals = at, signals

    def on_step_end(self, trainer: TrainerView, step: int, logs: Mapping[str, float]) -> None:
        if step == self.at:
            for signum in self.signals:
                os.kill(os.getpid(), signum)


def test_sigterm_in_process_stops_after_the_step_and_restores_handlers(kit: Kit) -> None:
    before = signal.getsignal(signal.SIGTERM)
    trainer = kit.trainer(kit.config(training_steps=5), kit.parts(), callbacks=[SendSignals(2, signal.SIGTERM)])
    with pytest.raises(TrainingInterrupted, match="SIGTERM") as caught:
        trainer.train()
    assert caught.value.checkpoint is None  # no output_dir
    assert trainer.global_step == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigint_stops_at_once(kit: Kit) -> None:
    trainer = kit.trainer(
        kit.config(training_steps=5), kit.parts(), callbacks=[SendSignals(1, signal.SIGINT, signal.SIGINT)]
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert trainer.global_step == 1
