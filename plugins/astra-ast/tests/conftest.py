"""Shared helpers for the astra-ast tests: toy systems that count their model calls."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytest
import torch

from astra_core.protocols import Reduction
from astra_core.testing.toy import ToyScorer, ToySystem


class CountingScorer(ToyScorer):
    """The toy scorer, recording the size of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        self.calls.append(len(texts))
        return super().score_texts(texts)


class CountingSystem(ToySystem):
    """The toy system, also counting target log-prob calls; `counting_scorer` is the scorer the
    tests give the samplers they build over it."""

    def __init__(self, seed: int = 0) -> None:
        self.counting_scorer = CountingScorer()
        super().__init__(seed=seed)
        self.target_calls = 0

    def target_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        self.target_calls += 1
        return super().target_logprobs(contexts, continuations, reduction)


@pytest.fixture
def system() -> CountingSystem:
    """A fresh counting toy system (tests may not import conftest under importlib mode)."""
    return CountingSystem()


@pytest.fixture
def make_system() -> type[CountingSystem]:
    """The counting toy system's class, for tests that need several fresh systems."""
    return CountingSystem


@pytest.fixture(autouse=True)
def _one_torch_thread_and_seed() -> Iterator[None]:
    # Toy ops are microseconds; OpenMP spin-waiting on a busy 2-core machine slows them badly.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
