"""Benchmark one Astra Core training step, side by side with the reference's per-node rollout.

Trains the default configuration (``transformers`` system on the embedded ``tiny`` model, ``ast``
sampler, ``dpo``, profanity scorer), built through the registries and seeded, for one warm-up step
and then ``--steps`` measured steps, and prints ONE JSON line (see docs/performance.md for every
field). Everything is measured from outside the components (`bench.recorder`): wall time per
category, token positions per model and kind, generate calls and model forwards per step, and the
reference toolbox's work on the same trees (`bench.reference`).

    python -m bench.step_benchmark                      # both modes, 8 episodes, width 2, depth 3
    python -m bench.step_benchmark --shape gpt2-21m     # the 21.5 M-parameter GPT-2 shape
    python -m bench.step_benchmark --shape gpt2-1m      # 1 M parameters, 1,024 positions
    python -m bench.step_benchmark --mode batched --scaling
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.floor import floor_positions
from bench.per_node import PerNodeSampler
from bench.recorder import CATEGORIES, POSITION_KINDS, Recorder, StepCounts
from bench.reference import preference_groups, reference_positions, total

MODES = ("batched", "per-node")
UNPACKED = "unpacked"
"""The batched mode with the system's packed log-prob passes off (each row run on its own, bucketed)."""
BY_EXAMPLE = "by-example"
"""The batched mode with ``training.shuffle_by = "example"``: batches mix the examples of every episode."""
SCALING_EPISODES = (8, 16, 32, 64)
SHAPES: dict[str, dict[str, int]] = {
    # GPT-2 6 x 512, 8 heads ("21.5 M" with a 4,096-token vocabulary; here the embedded tokenizer's).
    "gpt2-21m": {"n_embd": 512, "n_layer": 6, "n_head": 8, "n_positions": 1024},
    # The embedded model's layers with GPT-2's 1,024 positions: a 1 M model whose window holds a
    # whole reddit tree (openers up to 512 tokens), as the side-by-side runs of the reference use.
    "gpt2-1m": {"n_embd": 128, "n_layer": 4, "n_head": 4, "n_positions": 1024},
}
MAX_PROMPT_TOKENS = 512
"""File prompts longer than this are left out: the reference toolbox does not truncate and fails on them."""
WARMUP_STEPS = 1


@dataclass(frozen=True)
class Settings:
    """One benchmark run's settings; None keeps the default configuration's value."""

    episodes: int | None = None
    width: int | None = None
    depth: int | None = None
    batch_size: int | None = None
    steps: int = 3
    model: str | None = None
    probe_tokens: int | None = None
    response_tokens: int | None = None
    seed: int = 0
    prompts: str | None = None
    config: str | None = None
    warmup: int = WARMUP_STEPS
    shuffle_by: str | None = None
    opener_tokens: int | None = None


def run_config(settings: Settings) -> Any:
    """The run file's `RunConfig` (the default one without ``--config``) with the benchmark's
    overrides; no evaluator (it is not timed)."""
    from astra_core.config import ComponentRef, RunConfig, TrainingConfiguration, load_run_file

    base = load_run_file(settings.config) if settings.config is not None else RunConfig()
    training: dict[str, Any] = {
        **base.training.model_dump(exclude_unset=True),
        "training_steps": settings.warmup + settings.steps,
        "seed": settings.seed,
    }
    if settings.episodes is not None:
        training["num_episodes_per_experience"] = settings.episodes
    if settings.batch_size is not None:
        training["batch_size"] = settings.batch_size
    if settings.shuffle_by is not None:
        training["shuffle_by"] = settings.shuffle_by
    system: dict[str, Any] = dict(base.system.options)
    if settings.model is not None:
        system["model"] = settings.model
    if settings.probe_tokens is not None:
        system["probe_tokens"] = settings.probe_tokens
    if settings.response_tokens is not None:
        system["response_tokens"] = settings.response_tokens
    if settings.opener_tokens is not None:
        system["opener_tokens"] = settings.opener_tokens
    sampler: dict[str, Any] = dict(base.sampler.options)
    if settings.width is not None:
        sampler["tree_width"] = settings.width
    if settings.depth is not None:
        sampler["tree_depth"] = settings.depth
    if settings.prompts is not None:
        sampler["prompts"] = settings.prompts
    return base.model_copy(
        update={
            "training": TrainingConfiguration(**training),
            "system": ComponentRef(name=base.system.name, options=system),
            "sampler": ComponentRef(name=base.sampler.name, options=sampler),
            "evaluator": None,
            "callbacks": [],
        }
    )


def build_trainer(settings: Settings, mode: str) -> Any:
    """The run's assembled Trainer; `mode` ``per-node`` swaps in `PerNodeSampler`."""
    from astra_core.assembly import assemble
    from astra_core.build import BuiltRun, resolve

    resolved = resolve(run_config(settings))

    def per_node(built: BuiltRun) -> PerNodeSampler[Any]:
        return PerNodeSampler(built.system, built.scorer, **resolved.components["sampler"].options.model_dump())

    def unpacked(built: BuiltRun) -> Any:
        if hasattr(built.system, "_pack_logprobs"):
            built.system._pack_logprobs = False
        return built.sampler

    replace = {"per-node": per_node, UNPACKED: unpacked}.get(mode)
    return assemble(resolved, sampler=replace)


def _token_ids(system: Any, attribute: str) -> Any:
    tokenizer = getattr(system, attribute, None)
    vocabulary: dict[str, int] = {}

    def ids(texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        if tokenizer is None:  # a system without a tokenizer: words stand for tokens
            return [[vocabulary.setdefault(word, len(vocabulary)) for word in text.split()] for text in texts]
        return [list(row) for row in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]]

    return ids


def _token_counter(system: Any, attribute: str) -> Any:
    ids = _token_ids(system, attribute)

    def count(texts: Sequence[str]) -> list[int]:
        return [len(row) for row in ids(texts)]

    return count


def _trains_on_pairs(algorithm: Any) -> bool:
    from astra_algorithms.preference import PreferenceAlgorithm

    return isinstance(algorithm, PreferenceAlgorithm)


def peak_rss_mib() -> float:
    """The process's peak resident set size (VmHWM) in MiB; NaN where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def measure(settings: Settings, mode: str) -> dict[str, Any]:
    """Build, warm up, and time `settings.steps` training steps in `mode`; the mode's record."""
    if mode == BY_EXAMPLE:
        settings = Settings(**{**settings.__dict__, "shuffle_by": "example"})
    trainer = build_trainer(settings, "batched" if mode == BY_EXAMPLE else mode)
    from astra_core.contracts import unwrap

    system = unwrap(trainer.sampler.system)  # the recorder patches the system's own class and methods
    tester_tokens = _token_counter(system, "tokenizer")
    target_tokens = _token_counter(system, "target_tokenizer") if hasattr(system, "target_tokenizer") else tester_tokens
    tester_ids = _token_ids(system, "tokenizer")
    target_ids = _token_ids(system, "target_tokenizer") if hasattr(system, "target_tokenizer") else tester_ids
    pairs = _trains_on_pairs(trainer.harness.algorithm)
    budgets = (getattr(system, "tester_context_tokens", None), getattr(system, "target_context_tokens", None))
    steps: list[dict[str, Any]] = []
    with Recorder() as recorder:
        recorder.watch_system(system, trainer.sampler.scorer)
        recorder.watch_optimizer(trainer.optimizer)
        recorder.watch_backward()
        for index in range(settings.warmup + settings.steps):
            calls_before = getattr(system, "generate_calls", None)
            recorder.reset()
            recorder.enabled = True
            started = time.perf_counter()
            logs = trainer.train_step()
            seconds = time.perf_counter() - started
            recorder.enabled = False  # counting tokens below is the benchmark's work, not the step's
            counts = recorder.snapshot()
            calls_after = getattr(system, "generate_calls", None)
            if index < settings.warmup:
                continue
            graphs = trainer.harness.last_graphs
            nodes = [node for graph in graphs for node in graph.nodes()]
            # The reference and floor estimates tokenise states as text; a chat system's states are
            # conversations (templated per model), so for those only the measured positions count.
            textual = all(isinstance(node.context, str) for node in nodes)
            generated = sum(tester_tokens([n.probe for n in nodes])) + sum(target_tokens([n.response for n in nodes]))
            generate_calls = (
                calls_after - calls_before
                if isinstance(calls_before, int) and isinstance(calls_after, int)
                else sum(v for k, v in counts.calls.items() if "rollout" in k)
            )
            steps.append(
                {
                    "seconds": seconds,
                    "counts": counts,
                    "generated": generated,
                    "generate_calls": generate_calls,
                    "reference": (
                        reference_positions(graphs, tester_tokens, target_tokens, *budgets) if textual else None
                    ),
                    "floor": (
                        floor_positions(graphs, tester_ids, target_ids, *budgets, pairs=pairs) if textual else None
                    ),
                    "pairs": sum(len(preference_groups(graph)) for graph in graphs),
                    "examples": logs.get("train_examples", 0.0),
                    "updates": logs.get("updates", 0.0),
                    "episodes": len(graphs),
                }
            )
    record = summarise(mode, settings, steps, trainer)
    del trainer, system
    gc.collect()
    return record


def summarise(mode: str, settings: Settings, steps: list[dict[str, Any]], trainer: Any) -> dict[str, Any]:
    """One mode's JSON record from its measured steps (medians for time, means for counts)."""
    seconds = [step["seconds"] for step in steps]
    median = statistics.median(seconds)
    mean_step = _mean(seconds)
    counts: list[StepCounts] = [step["counts"] for step in steps]
    breakdown = {key: _mean([c.seconds[key] for c in counts]) for key in CATEGORIES}
    breakdown["other"] = mean_step - sum(breakdown.values())
    models = sorted({name for c in counts for name in c.positions})
    positions: dict[str, dict[str, float]] = {}
    for name in models:
        kinds = {kind: _mean([c.positions.get(name, {}).get(kind, 0) for c in counts]) for kind in POSITION_KINDS}
        kinds["total"] = sum(kinds.values())
        positions[name] = kinds
    ours = sum(kinds["total"] for kinds in positions.values())
    reference: dict[str, dict[str, float]] | None = None
    floor: dict[str, dict[str, float]] | None = None
    reference_total: float | None = None
    floor_total: float | None = None
    if all(step["reference"] is not None for step in steps):  # estimated for text states only
        reference = {}
        for name in ("tester", "target", "baseline"):
            kinds = {kind: _mean([step["reference"][name][kind] for step in steps]) for kind in POSITION_KINDS}
            kinds["total"] = sum(kinds.values())
            reference[name] = kinds
        reference_total = _mean([float(total(step["reference"])) for step in steps])
        floor = {
            name: {kind: _mean([step["floor"][name][kind] for step in steps]) for kind in steps[0]["floor"][name]}
            for name in steps[0]["floor"]
        }
        floor_total = _mean([float(total(step["floor"])) for step in steps])
    forwards = {name: _mean([c.forwards.get(name, 0) for c in counts]) for name in models}
    forwards["total"] = sum(forwards.values())
    episodes = _mean([step["episodes"] for step in steps])
    generated = _mean([step["generated"] for step in steps])
    options = trainer.harness.sampler.options if hasattr(trainer.harness.sampler, "options") else None
    return {
        "mode": mode,
        "episodes": episodes,
        "width": getattr(options, "tree_width", None),
        "depth": getattr(options, "tree_depth", None),
        "batch_size": trainer.config.batch_size,
        "shuffle_by": trainer.config.shuffle_by if trainer.config.shuffle else None,
        "opener_tokens": getattr(getattr(trainer.sampler.system, "options", None), "opener_tokens", None),
        "steps": len(steps),
        "seconds_per_step": median,
        "step_seconds": [round(s, 4) for s in seconds],
        "episodes_per_second": episodes / median if median > 0 else 0.0,
        "generated_tokens_per_step": generated,
        "generated_tokens_per_second": generated / median if median > 0 else 0.0,
        "breakdown_seconds": {key: round(value, 4) for key, value in breakdown.items()},
        "breakdown_fraction": {key: round(value / mean_step, 4) for key, value in breakdown.items()},
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "generate_calls_per_step": _mean([step["generate_calls"] for step in steps]),
        "model_forwards_per_step": forwards,
        "token_positions_per_step": positions,
        "token_positions_total_per_step": ours,
        "reference_token_positions_per_step": reference,
        "reference_token_positions_total_per_step": reference_total,
        "token_positions_vs_reference": ours / reference_total if reference_total else None,
        "floor_token_positions_per_step": floor,
        "floor_token_positions_total_per_step": floor_total,
        "floor_vs_reference": floor_total / reference_total if floor_total is not None and reference_total else None,
        "token_positions_vs_floor": ours / floor_total if floor_total else None,
        "microseconds_per_position": 1e6 * median / ours if ours else None,
        "dpo_pairs_per_step": _mean([step["pairs"] for step in steps]),
        "train_examples_per_step": _mean([step["examples"] for step in steps]),
        "optimizer_updates_per_step": _mean([step["updates"] for step in steps]),
    }


def build_shape(shape: str, directory: Path, seed: int = 0) -> Path:
    """Write a randomly initialised model of `shape` with the embedded tokenizer to `directory`.

    ``gpt2-21m``: GPT-2, 6 layers, 512 wide, 8 heads, 1024 positions; ``gpt2-1m``: 4 layers, 128
    wide, 4 heads, 1024 positions; both with the embedded model's vocabulary and special tokens.
    Timing needs no trained weights, so nothing is downloaded.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    import torch
    from transformers import AutoConfig, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from astra_transformers import TINY_MODEL_DIR

    dims = SHAPES[shape]
    tiny = AutoConfig.from_pretrained(TINY_MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    config = GPT2Config(
        vocab_size=tiny.vocab_size,
        n_embd=dims["n_embd"],
        n_layer=dims["n_layer"],
        n_head=dims["n_head"],
        n_positions=dims["n_positions"],
        bos_token_id=tiny.bos_token_id,
        eos_token_id=tiny.eos_token_id,
        attn_pdrop=0.0,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def filter_prompts(source: str, model: str, max_tokens: int, directory: Path) -> tuple[str, dict[str, int]]:
    """The prompts of file `source` that `model`'s tokenizer makes at most `max_tokens` tokens,
    written to a JSON file in `directory`; its path and the counts kept and left out."""
    from transformers import AutoTokenizer

    from astra_ast.prompt_sets import load_prompts
    from astra_transformers.system import resolve_source

    prompts = load_prompts(source)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(model))
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]]
    kept = [prompt for prompt, length in zip(prompts, lengths, strict=True) if length <= max_tokens]
    path = directory / "prompts.json"
    path.write_text(json.dumps(kept), encoding="utf-8")
    return str(path), {"kept": len(kept), "left_out": len(prompts) - len(kept)}


def _role_models(options: dict[str, Any], shape: str | None) -> dict[str, str]:
    """Which model each role runs: ``tester`` and ``target`` override the system's ``model``."""
    model = shape or str(options.get("model", "tiny"))
    return {role: str(options.get(role) or model) for role in ("tester", "target")}


def _parameters(model_source: str) -> int:
    import torch

    from astra_transformers.system import load_model

    model = load_model(model_source, torch.float32, torch.device("cpu")).module
    return sum(p.numel() for p in model.parameters())


def scaling(settings: Settings) -> list[dict[str, float]]:
    """Batched step time for 8, 16, 32 and 64 episodes, the time and positions per episode."""
    rows = []
    for episodes in SCALING_EPISODES:
        record = measure(Settings(**{**settings.__dict__, "episodes": episodes}), "batched")
        rows.append(
            {
                "episodes": float(episodes),
                "seconds_per_step": record["seconds_per_step"],
                "seconds_per_episode": record["seconds_per_step"] / episodes,
                "token_positions_per_episode": record["token_positions_total_per_step"] / episodes,
                "token_positions_vs_reference": record["token_positions_vs_reference"] or 0.0,
                "floor_vs_reference": record["floor_vs_reference"] or 0.0,
                "microseconds_per_position": record["microseconds_per_position"] or 0.0,
            }
        )
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists every flag)."""
    parser = argparse.ArgumentParser(prog="python -m bench.step_benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, help="episodes per experience (default: the config's 8)")
    parser.add_argument("--width", type=int, help="tree width (default 2)")
    parser.add_argument("--depth", type=int, help="tree depth (default 3)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default 16)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps after the warm-up (default 3)")
    parser.add_argument(
        "--warmup", type=int, default=WARMUP_STEPS, help=f"unmeasured steps first (default {WARMUP_STEPS})"
    )
    parser.add_argument("--config", help="a run file to start from (default: the default configuration)")
    parser.add_argument("--model", help="'tiny' (embedded) or a model directory (default: the run's)")
    parser.add_argument("--shape", choices=SHAPES, help="build a random-weight model of this shape and use it")
    parser.add_argument("--probe-tokens", type=int, help="max tokens per probe (default 24)")
    parser.add_argument("--response-tokens", type=int, help="max tokens per response (default 24)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--shuffle-by",
        choices=("example", "episode"),
        help="training.shuffle_by: batches mix examples of every episode, or hold whole episodes (default: the run's)",
    )
    parser.add_argument(
        "--opener-tokens",
        type=int,
        help="the system's opener_tokens: cut each opener once to fit its tree (default: the run's, none)",
    )
    parser.add_argument(
        "--mode",
        choices=("batched", "per-node", UNPACKED, BY_EXAMPLE, "both", "packing", "batching", "all"),
        default="both",
        help="both: batched and per-node; packing: batched and unpacked (packed log-prob passes off); batching: "
        "batched and by-example (batches mixing every episode's examples); all: batched, per-node and unpacked",
    )
    parser.add_argument("--scaling", action="store_true", help="also time 8, 16, 32, 64 episodes (batched)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prompts",
        help="opening prompts: builtin:<split> or a prompt file, e.g. ../shared/bench-data/reddit_prompts_train.json",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=MAX_PROMPT_TOKENS,
        help=f"leave out file prompts longer than this many tester tokens (default {MAX_PROMPT_TOKENS})",
    )
    args = parser.parse_args(argv)
    for flag in ("config", "prompts"):
        value = getattr(args, flag)
        if value is not None and not value.startswith("builtin:") and not Path(value).is_file():
            parser.error(f"--{flag} {value}: no such file")
    for flag in (
        "episodes",
        "width",
        "depth",
        "batch_size",
        "steps",
        "probe_tokens",
        "response_tokens",
        "threads",
        "max_prompt_tokens",
        "opener_tokens",
    ):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the command line asks for, as the one JSON object it prints."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    temporary = Path(tempfile.mkdtemp(prefix="astra-bench-"))
    model = args.model
    try:
        if args.shape is not None:
            model = str(build_shape(args.shape, temporary / args.shape, args.seed))
        base = run_config(Settings(model=model, config=args.config))
        prompts, prompt_counts = args.prompts, None
        if prompts is not None and not prompts.startswith("builtin:"):
            prompts, prompt_counts = filter_prompts(
                prompts, str(base.system.options.get("model", "tiny")), args.max_prompt_tokens, temporary
            )
        settings = Settings(
            episodes=args.episodes,
            width=args.width,
            depth=args.depth,
            batch_size=args.batch_size,
            steps=args.steps,
            model=model,
            probe_tokens=args.probe_tokens,
            response_tokens=args.response_tokens,
            seed=args.seed,
            prompts=prompts,
            config=args.config,
            warmup=args.warmup,
            shuffle_by=args.shuffle_by,
            opener_tokens=args.opener_tokens,
        )
        modes = {
            "both": list(MODES),
            "packing": ["batched", UNPACKED],
            "batching": ["batched", BY_EXAMPLE],
            "all": [*MODES, UNPACKED],
        }.get(args.mode, [args.mode])
        result: dict[str, Any] = {
            "benchmark": "astra-step",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            "model": args.shape or str(base.system.options.get("model", "tiny")),
            "models": _role_models(base.system.options, args.shape),
            "config": args.config,
            "prompts": {
                "source": args.prompts or str(base.sampler.options.get("prompts", "builtin:train")),
                **(prompt_counts or {}),
            },
            "parameters": _parameters(str(base.system.options.get("model", "tiny"))),
            "warmup_steps": args.warmup,
            "modes": {mode: measure(settings, mode) for mode in modes},
        }
        if "batched" in modes and UNPACKED in modes:
            batched, unpacked = result["modes"]["batched"], result["modes"][UNPACKED]
            result["packed_over_unpacked"] = {
                "speedup": unpacked["seconds_per_step"] / batched["seconds_per_step"],
                "token_positions": batched["token_positions_total_per_step"]
                / unpacked["token_positions_total_per_step"],
            }
        if "batched" in modes and BY_EXAMPLE in modes:
            batched, mixed = result["modes"]["batched"], result["modes"][BY_EXAMPLE]
            result["batched_over_by_example"] = {
                "speedup": mixed["seconds_per_step"] / batched["seconds_per_step"],
                "update_speedup": _update_seconds(mixed) / _update_seconds(batched),
                "token_positions": batched["token_positions_total_per_step"] / mixed["token_positions_total_per_step"],
            }
        if "batched" in modes and "per-node" in modes:
            batched, per_node = result["modes"]["batched"], result["modes"]["per-node"]
            result["batched_over_per_node"] = {
                "seconds_per_step": batched["seconds_per_step"] / per_node["seconds_per_step"],
                "speedup": per_node["seconds_per_step"] / batched["seconds_per_step"],
                "token_positions": batched["token_positions_total_per_step"]
                / per_node["token_positions_total_per_step"],
                "generate_calls": batched["generate_calls_per_step"] / per_node["generate_calls_per_step"],
            }
        print_headline(result)
        if args.scaling:
            table = scaling(settings)
            result["scaling"] = table
            print("episodes  s/step  s/episode  positions/episode  work ratio  us/position", file=sys.stderr)
            for row in table:
                print(
                    f"{int(row['episodes']):8d}  {row['seconds_per_step']:6.2f}  {row['seconds_per_episode']:9.3f}  "
                    f"{row['token_positions_per_episode']:17,.0f}  {row['token_positions_vs_reference']:10.3f}  "
                    f"{row['microseconds_per_position']:11.1f}",
                    file=sys.stderr,
                )
        return result
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _update_seconds(record: dict[str, Any]) -> float:
    """A mode's update time per step: its log-prob forwards and backward."""
    seconds = record["breakdown_seconds"]
    return float(seconds["logprob_forwards"] + seconds["backward"])


def print_headline(result: dict[str, Any]) -> None:
    """The numbers to quote, one line per mode, on stderr (the JSON line stays alone on stdout)."""
    for mode, record in result["modes"].items():
        estimates = (
            f"(floor {record['floor_token_positions_total_per_step']:,.0f}, "
            f"reference-equivalent {record['reference_token_positions_total_per_step']:,.0f}; "
            f"work ratio {record['token_positions_vs_reference'] or 0:.3f}, "
            f"floor ratio {record['floor_vs_reference'] or 0:.3f}), "
            if record["reference_token_positions_total_per_step"] is not None
            else "(no floor or reference estimate for conversation states), "
        )
        print(
            f"{mode}: {record['seconds_per_step']:.2f} s/step, "
            f"{record['token_positions_total_per_step']:,.0f} positions {estimates}"
            f"{record['microseconds_per_position'] or 0:.1f} us/position",
            file=sys.stderr,
        )
    ratio = result.get("batched_over_per_node")
    if ratio is not None:
        print(f"per-node / batched step time: {ratio['speedup']:.2f}x", file=sys.stderr)
    batching = result.get("batched_over_by_example")
    if batching is not None:
        print(
            f"by-example / batched step time: {batching['speedup']:.2f}x, update {batching['update_speedup']:.2f}x, "
            f"positions {batching['token_positions']:.3f}",
            file=sys.stderr,
        )
    packed = result.get("packed_over_unpacked")
    if packed is not None:
        print(
            f"unpacked / batched step time: {packed['speedup']:.2f}x, positions {packed['token_positions']:.3f}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its one JSON line on stdout."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    print(json.dumps(run(parse_args(argv)), sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
