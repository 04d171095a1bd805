"""How noisy one batch's gradient is when batches are shuffled by example or by episode.

`training.shuffle_by = "episode"` keeps each rollout tree's examples in one batch, which lets a
packed pass share the tree's prefixes, but a batch then draws from fewer trees, and examples of
one tree (one opener) are correlated. This measures the price: on one experience of the run (the
step benchmark's workload flags), the gradient of every training example alone, then, over many
seeded shuffles of each kind, the mean squared distance of a batch's gradient (the mean of its
examples') from the whole experience's, relative to that gradient's squared norm.

    python -m bench.batch_variance --prompts ../shared/bench-data/reddit_prompts_train.json \\
        --probe-tokens 32 --response-tokens 32

Prints one JSON line: per kind, the relative batch variance, and the ratio episode / example.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.step_benchmark import MAX_PROMPT_TOKENS, Settings, build_trainer, filter_prompts

SHUFFLES = ("example", "episode")


def batch_variance(
    gradients: torch.Tensor, episodes: Sequence[int], batch_size: int, shuffle_by: str, draws: int, seed: int = 0
) -> float:
    """Mean over `draws` shuffles and their full batches of ``|g_batch - g|^2 / |g|^2``.

    `gradients` is (N, P), one row per example in flatten order; ``episodes[k]`` is how many
    examples episode k gave (they are consecutive). A short last batch is left out (the same in
    both kinds).

    >>> g = torch.tensor([[1.0], [1.0], [3.0], [3.0]])
    >>> batch_variance(g, [2, 2], 2, "episode", 4)   # a batch is one episode: off by 1 each
    0.25
    >>> batch_variance(torch.ones(4, 1), [2, 2], 2, "example", 4)
    0.0
    """
    if shuffle_by not in SHUFFLES:
        raise ValueError(f"shuffle_by must be one of {SHUFFLES}, got {shuffle_by!r}")
    count = gradients.shape[0]
    if sum(episodes) != count:
        raise ValueError(f"episodes hold {sum(episodes)} examples, gradients {count}")
    mean = gradients.mean(dim=0)
    scale = float(mean.square().sum())
    starts = [sum(episodes[:k]) for k in range(len(episodes))]
    generator = torch.Generator().manual_seed(seed)
    total, batches = 0.0, 0
    for _ in range(draws):
        if shuffle_by == "example":
            order = torch.randperm(count, generator=generator).tolist()
        else:
            order = [
                starts[k] + i
                for k in torch.randperm(len(episodes), generator=generator).tolist()
                for i in range(episodes[k])
            ]
        for start in range(0, count - batch_size + 1, batch_size):
            batch = gradients[order[start : start + batch_size]].mean(dim=0)
            total += float((batch - mean).square().sum())
            batches += 1
    return total / batches / scale if batches and scale > 0 else 0.0


def example_gradients(trainer: Any) -> tuple[torch.Tensor, list[int]]:
    """One experience of `trainer`'s run: every example's gradient alone, (N, P), and the number
    of examples per episode."""
    harness = trainer.harness
    graphs = harness.rollouts()
    algorithm = harness.algorithm
    per_episode = [list(algorithm.flatten([graph])) for graph in graphs]
    parameters = [p for p in trainer.parameters if p.requires_grad]
    rows = []
    for examples in per_episode:
        for example in examples:
            loss, _ = algorithm.loss(algorithm.collate_fn([example]))
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            pairs = zip(grads, parameters, strict=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in pairs]))
    if not rows:
        raise RuntimeError("the experience gave no training examples")
    return torch.stack(rows), [len(examples) for examples in per_episode]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m bench.batch_variance", description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", help="opening prompts: builtin:<split> or a prompt file")
    parser.add_argument("--config", help="a run file to start from (default: the default configuration)")
    parser.add_argument("--episodes", type=int, help="episodes per experience (default: the config's 8)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default 16)")
    parser.add_argument("--probe-tokens", type=int)
    parser.add_argument("--response-tokens", type=int)
    parser.add_argument("--draws", type=int, default=200, help="shuffles of each kind (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    temporary = Path(tempfile.mkdtemp(prefix="astra-variance-"))
    try:
        prompts = args.prompts
        if prompts is not None and not prompts.startswith("builtin:"):
            prompts, _ = filter_prompts(prompts, "tiny", MAX_PROMPT_TOKENS, temporary)
        settings = Settings(
            episodes=args.episodes,
            batch_size=args.batch_size,
            probe_tokens=args.probe_tokens,
            response_tokens=args.response_tokens,
            prompts=prompts,
            config=args.config,
            seed=args.seed,
            steps=1,
            warmup=0,
        )
        trainer = build_trainer(settings, "batched")
        gradients, episodes = example_gradients(trainer)
        batch_size = trainer.config.batch_size
        variance = {kind: batch_variance(gradients, episodes, batch_size, kind, args.draws) for kind in SHUFFLES}
        result = {
            "benchmark": "astra-batch-variance",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "prompts": args.prompts or "builtin:train",
            "episodes": len(episodes),
            "examples": int(gradients.shape[0]),
            "batch_size": batch_size,
            "relative_batch_variance": variance,
            "episode_over_example": variance["episode"] / variance["example"] if variance["example"] else None,
        }
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    print(
        f"relative batch variance: by example {variance['example']:.4f}, by episode {variance['episode']:.4f}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
