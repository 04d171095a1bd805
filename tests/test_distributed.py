"""Data-parallel training: two real gloo processes on 127.0.0.1, launched as torchrun would.

The test starts this file twice as a script with ``RANK``/``WORLD_SIZE``/``MASTER_*`` set (the
variables torchrun sets), so the Trainer takes the same `init_from_env` path as under torchrun.
Each rank runs every scenario and writes what it saw under the output directory; the tests then
compare ranks with each other and with a single-process run over the same episodes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from astra_core import distributed
from astra_core.callbacks import BaseCallback
from astra_core.config import TrainingConfiguration
from astra_core.errors import ConfigError
from astra_core.graph import Graph, Node
from astra_core.testing.toy import OPENERS, VOCAB, ToyScorer, ToySystem
from astra_core.trainer import Trainer

HERE = Path(__file__).resolve()
WORLD = 2
GLOBAL_EPISODES = 4


def _conftest() -> Any:
    """tests/conftest.py as a module (the script run cannot import it as a package)."""
    spec = importlib.util.spec_from_file_location("astra_test_conftest_distributed", HERE.with_name("conftest.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class FixedSampler:
    """Episode `i` of the run (counted over all ranks) is always the same one-level tree: two
    probes after an opener, the first rewarded 1 and the second 0, so ToyDPO pairs them.

    Each rank draws its share of every experience, the slice `distributed.share` gives it, so
    two ranks together see exactly the episodes one process would."""

    def __init__(self, system: ToySystem, global_episodes: int) -> None:
        self.system = system
        self.scorer = ToyScorer()
        self.global_episodes = global_episodes
        self.experiences = 0

    def eval_rollouts(self, prompts: Sequence[str]) -> list[Graph[str, str]]:
        return [self._episode(0) for _ in prompts]

    def rollouts(self, count: int) -> list[Graph[str, str]]:
        start, share = distributed.share(self.global_episodes, distributed.rank(), distributed.world_size())
        assert share == count, (share, count)
        first = self.experiences * self.global_episodes + start
        self.experiences += 1
        return [self._episode(first + i) for i in range(count)]

    @staticmethod
    def _episode(index: int) -> Graph[str, str]:
        context = OPENERS[index % len(OPENERS)]
        words = [VOCAB[(index * 7 + k * 3) % len(VOCAB)] for k in range(6)]
        good, bad = " ".join(words[:3]), " ".join(words[3:])
        graph: Graph[str, str] = Graph(context)
        graph.children = [Node(context, good, good, 1.0), Node(context, bad, bad, 0.0)]
        return graph


def fixed_run(batch_size: int, registries: Any, support: Any) -> Trainer[Any, Any, Any, Any]:
    """The equivalence run: fixed episodes, SGD, no shuffling, two steps."""
    system = ToySystem(seed=0)
    config = TrainingConfiguration(
        training_steps=2,
        num_episodes_per_experience=GLOBAL_EPISODES,
        batch_size=batch_size,
        optimizer="sgd",
        lr=0.5,
        shuffle=False,
    )
    return Trainer(config, FixedSampler(system, GLOBAL_EPISODES), support.ToyDPO(system), registries=registries)


# --- what each rank runs ------------------------------------------------------------------------


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    support = _conftest()
    registries = support.core_registries()
    rank = int(os.environ["RANK"])
    params = {}

    # 1. Different initial weights per rank (broadcast must fix that), uneven shares (5 episodes
    #    over 2 ranks, so different numbers of batches and updates), and one NaN loss on rank 1 only.
    class NaNOnceOnRankOne(support.ToyDPO):  # type: ignore[misc, name-defined]
        calls = 0

        def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
            loss, logs = super().loss(batch)
            self.calls += 1
            return (loss * math.nan if rank == 1 and self.calls == 1 else loss), logs

    seen: list[int] = []

    class Record(BaseCallback):
        def on_step_end(self, trainer: Any, step: int, logs: Any) -> None:
            seen.append(step)

    parts = support.make_parts(system_seed=rank, algorithm=lambda s: NaNOnceOnRankOne(s, keep_ties=True))
    config = support.small_config(
        training_steps=3,
        num_episodes_per_experience=5,
        batch_size=2,
        gradient_accumulation_steps=2,
        output_dir=str(out / "uneven"),
        checkpoint_every=1,
    )
    trainer = Trainer(config, parts.sampler, parts.algorithm, registries=registries, callbacks=[Record()])
    trainer.train()
    params["uneven"] = trainer.parameters
    report = {
        "callback_steps": seen,
        "history": trainer.history,
        "episodes_here": trainer.harness.num_episodes_per_experience,
        "nonfinite_total": trainer.nonfinite_total,
        "engine": type(getattr(trainer.collectives, "engine", None)).__name__,
    }

    # 2. Resume: 2 steps, stop, resume to 4 must end where 4 straight steps end.
    def resumable(steps: int, run: str) -> Trainer[Any, Any, Any, Any]:
        parts = support.make_parts()
        config = support.small_config(training_steps=steps, output_dir=str(out / run), checkpoint_every=1)
        return Trainer(config, parts.sampler, parts.algorithm, registries=registries)

    straight = resumable(4, "straight")
    straight.train()
    resumable(2, "halted").train()
    resumed = resumable(4, "halted")
    resumed.resume()
    resumed.train()
    params["straight"], params["resumed"] = straight.parameters, resumed.parameters
    # Equal shares (2 episodes each) from identical weights: only the seeds can tell the ranks apart.
    report["equal_share_probes"] = [node.probe for graph in straight.harness.last_graphs for node in graph.nodes()]

    # 4. Fewer global episodes than ranks: refused before any collective, on every rank.
    try:
        Trainer(
            support.small_config(num_episodes_per_experience=1), parts.sampler, parts.algorithm, registries=registries
        )
        report["too_few"] = "accepted"
    except ConfigError as error:
        report["too_few"] = str(error)

    # 3. Fixed episodes split over the ranks, 2 pairs each: one batch of 2 per rank.
    fixed = fixed_run(GLOBAL_EPISODES // WORLD, registries, support)
    fixed.train()
    params["fixed"] = fixed.parameters

    tensors = {f"{name}.{i}": p.detach().contiguous() for name, ps in params.items() for i, p in enumerate(ps)}
    save_file(tensors, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    distributed.destroy()


# --- the tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(
    tmp_path_factory: pytest.TempPathFactory,
    launch_two_ranks: Callable[[Path, pytest.TempPathFactory, str, float], Path],
) -> Path:
    """Run `_worker` in two processes joined by gloo; return their output directory."""
    return launch_two_ranks(HERE, tmp_path_factory, "ddp", 120)


def _params(out: Path, rank: int, name: str) -> list[torch.Tensor]:
    tensors = load_file(str(out / f"rank{rank}.safetensors"))
    return [
        tensors[k]
        for k in sorted((k for k in tensors if k.startswith(name + ".")), key=lambda k: int(k.rsplit(".", 1)[1]))
    ]


def _report(out: Path, rank: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / f"rank{rank}.json").read_text(encoding="utf-8"))
    return data


def test_ranks_keep_identical_parameters_with_uneven_shares_and_a_nan_on_one_rank(two_ranks: Path) -> None:
    zero, one = _params(two_ranks, 0, "uneven"), _params(two_ranks, 1, "uneven")
    assert zero and len(zero) == len(one)
    for a, b in zip(zero, one, strict=True):
        assert torch.equal(a, b)
    first, second = _report(two_ranks, 0), _report(two_ranks, 1)
    assert (first["episodes_here"], second["episodes_here"]) == (3, 2)  # 5 global episodes, split
    assert first["nonfinite_total"] == second["nonfinite_total"] == 1  # rank 1's NaN skipped the update everywhere
    assert first["history"][0]["skipped_updates"] == 1.0
    assert [h["episodes"] for h in first["history"]] == [5.0, 5.0, 5.0]  # metrics count every rank's episodes


def test_the_engine_is_torchs_distributed_data_parallel_and_the_trainer_has_no_collectives(two_ranks: Path) -> None:
    for rank in range(WORLD):
        assert _report(two_ranks, rank)["engine"] == "DistributedDataParallel"
    source = (HERE.parents[1] / "astra_core" / "trainer.py").read_text(encoding="utf-8")
    for collective in ("torch.distributed", "all_reduce", "broadcast", "all_gather", "dist."):
        assert collective not in source, collective


def test_ranks_roll_out_with_distinct_seeds(two_ranks: Path) -> None:
    assert _report(two_ranks, 0)["equal_share_probes"] != _report(two_ranks, 1)["equal_share_probes"]


def test_only_rank_zero_runs_callbacks_and_writes_checkpoints(two_ranks: Path) -> None:
    assert _report(two_ranks, 0)["callback_steps"] == [1, 2, 3]
    assert _report(two_ranks, 1)["callback_steps"] == []
    steps = sorted(p.name for p in (two_ranks / "uneven" / "checkpoints").iterdir())
    assert steps == ["step-00000002", "step-00000003"]  # keep_checkpoints=2, written once each
    state = json.loads((two_ranks / "uneven" / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["world_size"] == 2


def test_a_resumed_distributed_run_ends_where_the_uninterrupted_one_does(two_ranks: Path) -> None:
    for rank in range(WORLD):
        for a, b in zip(_params(two_ranks, rank, "straight"), _params(two_ranks, rank, "resumed"), strict=True):
            assert torch.equal(a, b)


def test_two_ranks_make_the_same_update_as_one_process_over_the_same_episodes(
    two_ranks: Path, kit: Any, registries: Any
) -> None:
    single = fixed_run(GLOBAL_EPISODES, registries, kit)  # one batch of all 4 pairs
    single.train()
    distributed_params = _params(two_ranks, 0, "fixed")
    start = ToySystem(seed=0).tester.parameters()
    moved = False
    for mine, theirs, initial in zip(single.parameters, distributed_params, start, strict=True):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-5, atol=1e-6)
        moved = moved or not torch.equal(mine.detach(), initial.detach())
    assert moved, "the runs did not train"


def test_a_global_episode_count_below_the_world_size_is_rejected(two_ranks: Path) -> None:
    for rank in range(WORLD):
        assert "num_episodes_per_experience (1) is the global count" in _report(two_ranks, rank)["too_few"]


def test_shares_are_contiguous_and_cover_the_total() -> None:
    assert [distributed.share(7, r, 3) for r in range(3)] == [(0, 3), (3, 2), (5, 2)]
    assert distributed.share(1, 1, 2) == (1, 0)


def test_without_torchrun_everything_is_one_process(kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    trainer = kit.trainer(kit.config(training_steps=1), kit.parts())
    assert (trainer.rank, trainer.world_size, trainer.is_main) == (0, 1, True)
    assert trainer.harness.num_episodes_per_experience == 4


def test_step_seeds_differ_by_rank_and_step_and_repeat() -> None:
    seeds = {distributed.step_seed(0, rank, step) for rank in range(4) for step in range(4)}
    assert len(seeds) == 16
    assert distributed.step_seed(3, 1, 2) == distributed.step_seed(3, 1, 2)
    assert all(0 <= s < 2**63 for s in seeds)


def test_metrics_merge_counts_extremes_and_weighted_means() -> None:
    # The merge rule itself, on two ranks' logs (reduce_metrics gathers these with all_gather_object).
    merged = distributed.merge_metrics(
        [
            {"episodes": 3.0, "turns": 6.0, "reward/mean": 1.0, "reward/min": 0.0, "loss": 2.0, "time/step": 1.0},
            {"episodes": 2.0, "turns": 2.0, "reward/mean": 0.0, "reward/min": -1.0, "loss": math.nan, "time/step": 3.0},
        ]
    )
    assert merged == {
        "episodes": 5.0,
        "turns": 8.0,
        "reward/mean": 0.75,
        "reward/min": -1.0,
        "loss": 2.0,
        "time/step": 3.0,
    }


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
