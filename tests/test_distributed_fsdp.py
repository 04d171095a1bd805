"""FSDP2 training (``training.parallelism = "fsdp"``): two real gloo processes on 127.0.0.1, launched
as torchrun would, training the embedded tiny GPT-2 tester (its blocks sharded by ``fully_shard``).

As in tests/test_distributed.py, this file runs twice as a script with ``RANK``/``WORLD_SIZE``/
``MASTER_*`` set; each rank runs every scenario and writes what it saw; the tests compare ranks
with each other, with one process over the same episodes, and load what they wrote in this one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from safetensors.torch import load_file, save_file

from astra_core import checkpoint as ckpt
from astra_core import distributed
from astra_core.config import TrainingConfiguration
from astra_core.errors import ConfigError
from astra_core.graph import Graph, Node
from astra_core.testing.toy import OPENERS, VOCAB, ToyScorer
from astra_core.trainer import Trainer

transformers = pytest.importorskip("transformers")
from astra_algorithms.dpo import DPO  # noqa: E402
from astra_transformers.system import TransformersSystem  # noqa: E402

HERE = Path(__file__).resolve()
WORLD = 2
GLOBAL_EPISODES = 4
# Equality across process counts is checked with SGD: Adam divides each gradient by its own
# running scale, so an entry whose gradient is rounding noise (a token no pair uses) moves by a
# whole step and float32 rounding differences grow to 1e-4. Resumes (bitwise) use AdamW.
SGD: dict[str, Any] = {"optimizer": "sgd", "lr": 0.5}


class FixedSampler:
    """Episode `i` of the run (counted over all ranks) is always the same one-level tree: two
    probes after an opener, rewarded 1 and 0, so DPO pairs them. Each rank draws the slice
    `distributed.share` gives it, so two ranks see exactly the episodes one process would. Its
    position is sampler state, so a resumed run draws what the uninterrupted one would."""

    def __init__(self, system: TransformersSystem, global_episodes: int) -> None:
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

    def state_dict(self) -> dict[str, int]:
        return {"experiences": self.experiences}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.experiences = int(state["experiences"])

    @staticmethod
    def _episode(index: int) -> Graph[str, str]:
        context = OPENERS[index % len(OPENERS)]
        words = [VOCAB[(index * 7 + k * 3) % len(VOCAB)] for k in range(6)]
        good, bad = " ".join(words[:3]), " ".join(words[3:])
        graph: Graph[str, str] = Graph(context)
        graph.children = [Node(context, good, good, 1.0), Node(context, bad, bad, 0.0)]
        return graph


def tiny_system() -> TransformersSystem:
    return TransformersSystem(probe_tokens=4, response_tokens=4, num_threads=1)


def fixed_run(batch_size: int, global_episodes: int = GLOBAL_EPISODES, **training: Any) -> Trainer[Any, Any, Any, Any]:
    """Fixed episodes, AdamW (its state is sharded too), no shuffling, on the tiny real tester."""
    system = tiny_system()
    values: dict[str, Any] = {
        "training_steps": 2,
        "num_episodes_per_experience": global_episodes,
        "batch_size": batch_size,
        "lr": 0.01,
        "max_grad_norm": 1.0,
        "shuffle": False,
        "samples_every": None,
    }
    values.update(training)
    config = TrainingConfiguration(**values)
    return Trainer(config, FixedSampler(system, global_episodes), DPO(system))


# --- what each rank runs ------------------------------------------------------------------------


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    params: dict[str, list[torch.Tensor]] = {}
    report: dict[str, Any] = {}

    def full(trainer: Trainer[Any, Any, Any, Any]) -> list[torch.Tensor]:
        # Every rank gathers (a collective); the shards themselves differ by rank.
        weights, _ = trainer.collectives.full_state(trainer._named_parameters(), trainer.optimizer)
        return [w.detach() for w in weights.values()]

    # 1. The same episodes as one process (two pairs per rank, one batch each), FSDP vs DDP timed.
    fixed = fixed_run(GLOBAL_EPISODES // WORLD, parallelism="fsdp", **SGD)
    report["engine"] = type(fixed.collectives).__name__
    report["sharded"] = type(fixed.parameters[0]).__name__
    report["local_rows"] = int(cast(Any, fixed.parameters[0]).to_local().shape[0])
    report["global_rows"] = int(fixed.parameters[0].shape[0])
    started = time.perf_counter()
    fixed.train()
    report["fsdp_seconds"] = time.perf_counter() - started
    params["fixed"] = full(fixed)
    replicated = fixed_run(GLOBAL_EPISODES // WORLD, **SGD)  # the default, ddp, on the same episodes
    started = time.perf_counter()
    replicated.train()
    report["ddp_seconds"] = time.perf_counter() - started

    # 2. Uneven shares (5 episodes over 2 ranks, batches of 1 in groups of 2): rank 0 runs
    #    groups of 2 and 1 batch, rank 1 one group of 2 and then joins rank 0's second update
    #    with a zero-weighted pass. Checkpoints and the final tester go through the full weights.
    def uneven_run(**training: Any) -> Trainer[Any, Any, Any, Any]:
        return fixed_run(1, global_episodes=5, gradient_accumulation_steps=2, **SGD, **training)

    # No clipping here: the unclipped gradient norm is summed over the shards too.
    uneven = uneven_run(parallelism="fsdp", output_dir=str(out / "uneven"), checkpoint_every=1, max_grad_norm=None)
    uneven.train()
    params["uneven"] = full(uneven)
    report["uneven_history"] = uneven.history
    uneven_ddp = uneven_run(max_grad_norm=None)
    uneven_ddp.train()
    params["uneven_ddp"] = full(uneven_ddp)
    report["uneven_ddp_history"] = uneven_ddp.history

    # 3. Resume: 1 step, stop, resume to 2 must end where 2 straight steps end.
    straight = fixed_run(1, parallelism="fsdp", output_dir=str(out / "straight"), checkpoint_every=1)
    straight.train()
    params["straight"] = full(straight)
    fixed_run(1, parallelism="fsdp", training_steps=1, output_dir=str(out / "halted"), checkpoint_every=1).train()
    resumed = fixed_run(1, parallelism="fsdp", output_dir=str(out / "halted"), checkpoint_every=1)
    resumed.resume()
    resumed.train()
    params["resumed"] = full(resumed)

    if rank == 0:
        tensors = {f"{name}.{i}": p.contiguous() for name, ps in params.items() for i, p in enumerate(ps)}
        save_file(tensors, str(out / "rank0.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    distributed.destroy()


# --- the tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(
    tmp_path_factory: pytest.TempPathFactory,
    launch_two_ranks: Callable[[Path, pytest.TempPathFactory, str, float], Path],
) -> Path:
    """Run `_worker` in two processes joined by gloo; return their output directory."""
    return launch_two_ranks(HERE, tmp_path_factory, "fsdp", 240)


def _params(out: Path, name: str) -> list[torch.Tensor]:
    tensors = load_file(str(out / "rank0.safetensors"))
    return [
        tensors[k]
        for k in sorted((k for k in tensors if k.startswith(name + ".")), key=lambda k: int(k.rsplit(".", 1)[1]))
    ]


def _report(out: Path, rank: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / f"rank{rank}.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture
def no_process_group() -> Any:
    """Tests that run FSDP in this process (a group of one) leave no group behind."""
    yield
    distributed.destroy()


def test_the_tester_is_sharded_by_fsdp2_over_the_ranks(two_ranks: Path) -> None:
    reports = [_report(two_ranks, rank) for rank in range(WORLD)]
    for report in reports:
        assert (report["engine"], report["sharded"]) == ("FullyShard", "DTensor")
        assert 0 < report["local_rows"] < report["global_rows"]
    assert sum(r["local_rows"] for r in reports) == reports[0]["global_rows"]  # the embedding rows, split


def test_two_fsdp_ranks_make_the_same_updates_as_one_process_over_the_same_episodes(two_ranks: Path) -> None:
    single = fixed_run(GLOBAL_EPISODES, **SGD)  # one process, one batch of all 4 pairs, no sharding
    single.train()
    start = [p.detach() for p in tiny_system().parameters()]
    sharded = _params(two_ranks, "fixed")
    assert len(sharded) == len(single.parameters) == len(start)
    moved = False
    for mine, theirs, initial in zip(single.parameters, sharded, start, strict=True):
        # Not bitwise: the mean over 4 pairs is summed in another order (2 + 2, then the
        # reduce-scatter's average), so float32 rounding differs in the last bits.
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-5, atol=1e-6)
        moved = moved or not torch.equal(mine.detach(), initial)
    assert moved, "the runs did not train"


def test_uneven_shares_make_the_same_updates_as_ddp_with_a_zero_weighted_pass_on_the_rank_out_of_data(
    two_ranks: Path,
) -> None:
    history = _report(two_ranks, 0)["uneven_history"]
    assert [h["episodes"] for h in history] == [5.0, 5.0]
    assert [h["updates"] for h in history] == [2.0, 2.0]  # rank 1's second is its zero-weighted pass
    assert all(h["skipped_updates"] == 0.0 for h in history)
    for sharded, replicated in zip(_params(two_ranks, "uneven"), _params(two_ranks, "uneven_ddp"), strict=True):
        torch.testing.assert_close(sharded, replicated, rtol=1e-5, atol=1e-6)
    # The gradient norm is the whole gradient's, not one shard's.
    norms = [h["grad_norm"] for h in history]
    assert norms == pytest.approx([h["grad_norm"] for h in _report(two_ranks, 0)["uneven_ddp_history"]], rel=1e-5)


def test_a_resumed_fsdp_run_ends_where_the_uninterrupted_one_does(two_ranks: Path) -> None:
    straight, resumed = _params(two_ranks, "straight"), _params(two_ranks, "resumed")
    assert straight and len(straight) == len(resumed)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def test_an_fsdp_checkpoint_holds_full_weights_by_name_and_loads_in_one_process(two_ranks: Path) -> None:
    checkpoint = ckpt.latest_checkpoint(two_ranks / "uneven")
    assert checkpoint is not None
    system = tiny_system()
    assert ckpt.load_tester(checkpoint, system) == 2
    loaded = [p.detach() for p in system.parameters()]
    trained = _params(two_ranks, "uneven")
    for a, b in zip(loaded, trained, strict=True):
        assert torch.equal(a, b)
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    assert state["world_size"] == 2


def test_an_fsdp_checkpoint_resumes_in_one_process_without_sharding(two_ranks: Path) -> None:
    checkpoint = ckpt.latest_checkpoint(two_ranks / "straight")
    assert checkpoint is not None
    alone = fixed_run(1)  # parallelism "ddp" in one process: a resume may change it
    alone.resume(checkpoint)
    assert alone.global_step == 2
    for mine, saved in zip(alone.parameters, _params(two_ranks, "straight"), strict=True):
        assert torch.equal(mine.detach(), saved)
    assert len(alone.optimizer.state) == len(alone.parameters)  # AdamW's moments came back whole


def test_an_fsdp_run_saves_the_whole_tester_in_its_native_format(two_ranks: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(two_ranks / "uneven" / "tester"))
    saved = dict(model.named_parameters())
    system = tiny_system()
    names = [name.removeprefix("tester.") for name, _ in system.named_parameters()]
    for name, trained in zip(names, _params(two_ranks, "uneven"), strict=True):
        assert torch.equal(saved[name].detach(), trained), name


def test_fsdp_alone_shards_over_a_group_of_one_and_trains_like_one_process(no_process_group: None) -> None:
    alone = fixed_run(GLOBAL_EPISODES, parallelism="fsdp", **SGD)
    assert type(alone.collectives).__name__ == "FullyShard"
    alone.train()
    weights = list(alone.collectives.full_state(alone._named_parameters(), alone.optimizer)[0].values())
    distributed.destroy()
    plain = fixed_run(GLOBAL_EPISODES, **SGD)
    plain.train()
    for a, b in zip(weights, plain.parameters, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def test_fsdp_composes_with_gradient_checkpointing(no_process_group: None) -> None:
    def run(parallelism: str, checkpointing: bool) -> list[torch.Tensor]:
        system = TransformersSystem(
            probe_tokens=4, response_tokens=4, num_threads=1, gradient_checkpointing=checkpointing
        )
        config = TrainingConfiguration(
            training_steps=2,
            num_episodes_per_experience=4,
            batch_size=4,
            shuffle=False,
            samples_every=None,
            parallelism=parallelism,
            **SGD,
        )
        trainer = Trainer(config, FixedSampler(system, 4), DPO(system))
        trainer.train()
        weights, _ = trainer.collectives.full_state(trainer._named_parameters(), trainer.optimizer)
        return [w.detach().clone() for w in weights.values()]

    # Each sharded block recomputes its forward in backward with its weights still gathered.
    sharded = run("fsdp", True)
    distributed.destroy()
    for a, b in zip(sharded, run("ddp", False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fsdp_shards_an_algorithms_own_module_with_the_tester(no_process_group: None) -> None:
    from astra_algorithms.ppo import PPO

    def ppo_run(parallelism: str) -> list[torch.Tensor]:
        system = tiny_system()
        config = TrainingConfiguration(
            training_steps=2,
            num_episodes_per_experience=4,
            batch_size=4,
            optimizer="sgd",
            lr=0.01,
            max_grad_norm=1.0,
            shuffle=False,
            samples_every=None,
            parallelism=parallelism,
        )
        trainer = Trainer(config, FixedSampler(system, 4), PPO(system))
        assert type(trainer.parameters[-1]).__name__ == ("DTensor" if parallelism == "fsdp" else "Parameter")
        trainer.train()
        weights, _ = trainer.collectives.full_state(trainer._named_parameters(), trainer.optimizer)
        return [w.detach().clone() for w in weights.values()]

    sharded = ppo_run("fsdp")  # the value head is a module of the algorithm: sharded in the root unit
    distributed.destroy()
    for a, b in zip(sharded, ppo_run("ddp"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_trainer_refuses_an_optimizer_built_before_sharding(no_process_group: None) -> None:
    system = tiny_system()
    stale = torch.optim.SGD(system.parameters(), lr=0.1)
    config = TrainingConfiguration(training_steps=1, num_episodes_per_experience=2, parallelism="fsdp")
    with pytest.raises(ConfigError, match="before FSDP sharded them"):
        Trainer(config, FixedSampler(system, 2), DPO(system), optimizer=stale, scheduler=object())


def test_fsdp_refuses_a_lora_tester_with_the_option_and_the_fix(no_process_group: None) -> None:
    system = TransformersSystem(probe_tokens=4, response_tokens=4, num_threads=1, lora={"r": 2})
    config = TrainingConfiguration(training_steps=1, num_episodes_per_experience=2, parallelism="fsdp")
    with pytest.raises(ConfigError) as error:
        Trainer(config, FixedSampler(system, 2), DPO(system))
    message = str(error.value)
    assert 'training.parallelism = "fsdp"' in message and "LoRA" in message and '"ddp"' in message
    assert "\n" not in message


def test_astra_train_refuses_fsdp_with_a_lora_tester_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_process_group: None
) -> None:
    from astra_core.cli import main

    run = tmp_path / "run.toml"
    run.write_text(
        'scorer = "profanity"\nsampler = "ast"\nalgorithm = "dpo"\nevaluator = "none"\n'
        '[training]\ntraining_steps = 1\nnum_episodes_per_experience = 2\nparallelism = "fsdp"\n'
        '[system]\nname = "transformers"\n[system.lora]\nr = 2\n',
        encoding="utf-8",
    )
    assert main(["train", str(run), "--output", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and 'parallelism = "fsdp"' in lines[0] and "LoRA" in lines[0], lines
    assert not distributed.is_initialized()  # the group of one was left on the way out
    assert not (tmp_path / "out").exists()  # refused before the run directory was made


def test_fsdp_refuses_a_system_without_a_tester_module() -> None:
    class Opaque:
        tester = "a remote model"

    with pytest.raises(ConfigError, match=r'parallelism = "fsdp" shards the tester model.*"ddp"'):
        distributed.shardable_modules([], (Opaque(),))


def test_fsdp_refuses_trainable_parameters_no_module_owns() -> None:
    class System:
        tester = torch.nn.Linear(2, 2)

    stray = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="1 trainable parameter"):
        distributed.shardable_modules([*System.tester.parameters(), stray], (System(), object()))


def test_an_unknown_parallelism_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="'ddp' or 'fsdp'"):
        TrainingConfiguration(parallelism="zero3")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
