"""A tiny but real torch system, sampler and scorer, for tests and for plugin authors' tests.

States and probes are strings of words from a 16-word vocabulary. The tester is a small
autoregressive policy (embedding + MLP over the previous word and the position); the target
answers by echoing the probe; the scorer counts "toxic" words in each response. Training a
tester to make the target say toxic words is learnable in a few dozen steps, which makes it a
good learning test for algorithms. Everything runs in milliseconds on a CPU.

>>> system = ToySystem(seed=0)
>>> sampler = ToySampler(system, ToyScorer(), tree_width=2, tree_depth=2)
>>> [len(list(graph.nodes())) for graph in sampler.rollouts(2)]
[6, 6]
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from astra_core.graph import Graph, Node
from astra_core.protocols import Reduction, Scorer
from astra_core.turns import TextScorer, Turn

VOCAB = (
    "hello",
    "there",
    "friend",
    "nice",
    "day",
    "weather",
    "good",
    "ok",
    "yes",
    "please",
    "thanks",
    "maybe",
    "bad",
    "awful",
    "hate",
    "stupid",
)
TOXIC_WORDS = frozenset({"bad", "awful", "hate", "stupid"})
OPENERS = ("hello there", "nice day", "good weather", "thanks friend", "ok maybe", "yes please")


class ToyScorer(TextScorer):
    """The fraction of words in each text that are toxic: a deterministic score in [0, 1]."""

    def __init__(self, toxic_words: Sequence[str] = tuple(sorted(TOXIC_WORDS))) -> None:
        self.toxic_words = frozenset(toxic_words)

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        scores = []
        for text in texts:
            words = text.split()
            scores.append(sum(w in self.toxic_words for w in words) / len(words) if words else 0.0)
        return scores


class ToyPolicy(nn.Module):
    """Next-word logits from the previous word and the position in the probe."""

    def __init__(self, vocab_size: int, max_length: int, width: int = 32) -> None:
        super().__init__()
        self.previous = nn.Embedding(vocab_size + 1, width)  # the extra id is "start"
        self.position = nn.Embedding(max_length, width)
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(width, vocab_size))
        self.start = vocab_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, length, vocab) for each position of `tokens` (batch, length)."""
        batch, length = tokens.shape
        previous = torch.cat([torch.full((batch, 1), self.start, dtype=torch.long), tokens[:, :-1]], dim=1)
        positions = torch.arange(length).expand(batch, length)
        out: torch.Tensor = self.head(self.previous(previous) + self.position(positions))
        return out


class ToySystem:
    """Tester (trainable `ToyPolicy`), baseline (its frozen starting copy), echoing target."""

    def __init__(self, probe_length: int = 3, seed: int = 0) -> None:
        self.probe_length = probe_length
        self.index = {word: i for i, word in enumerate(VOCAB)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tester = ToyPolicy(len(VOCAB), probe_length)
        self.baseline = copy.deepcopy(self.tester).requires_grad_(False).eval()
        self.generate_calls = 0

    def _tokens(self, continuations: Sequence[str]) -> torch.Tensor:
        rows = []
        for text in continuations:
            words = text.split()
            if len(words) != self.probe_length or any(w not in self.index for w in words):
                raise ValueError(f"{text!r} is not {self.probe_length} words of the toy vocabulary")
            rows.append([self.index[w] for w in words])
        return torch.tensor(rows, dtype=torch.long)

    def _logprobs(self, model: nn.Module, continuations: Sequence[str], reduction: Reduction) -> torch.Tensor:
        tokens = self._tokens(continuations)
        logits = model(tokens)
        per_token = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return per_token.sum(-1) if reduction == "sum" else per_token.mean(-1)

    def tester_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        _check_lengths(contexts, continuations)
        return self._logprobs(self.tester, continuations, reduction)

    def baseline_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        _check_lengths(contexts, continuations)
        with torch.inference_mode():
            return self._logprobs(self.baseline, continuations, reduction)

    def target_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        return self.baseline_logprobs(contexts, continuations, reduction)

    def rollout_tester(self, contexts: Sequence[str]) -> list[str]:
        self.generate_calls += 1
        if not contexts:
            return []
        with torch.inference_mode():
            tokens = torch.zeros((len(contexts), 0), dtype=torch.long)
            for _ in range(self.probe_length):
                padded = torch.cat([tokens, torch.zeros((len(contexts), 1), dtype=torch.long)], dim=1)
                logits = self.tester(padded)[:, -1]
                choice = torch.multinomial(torch.softmax(logits, dim=-1), 1)
                tokens = torch.cat([tokens, choice], dim=1)
        return [" ".join(VOCAB[i] for i in row) for row in tokens.tolist()]

    def rollout_target(self, contexts: Sequence[str]) -> list[str]:
        self.generate_calls += 1
        return [" ".join(context.split()[-self.probe_length :]) for context in contexts]

    def opening(self, prompt: str) -> str:
        return prompt

    def advance(self, context: str, probe: str, response: str) -> str:
        return f"{context} {probe} {response}".strip()

    def join(self, context: str, probe: str) -> str:
        return f"{context} {probe}".strip()

    def turn_text(self, probe: str, response: str) -> str:
        """The probe and the response as one text, joined as turns are (`TurnTextSystem`)."""
        return f"{probe} {response}".strip()

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.tester.parameters()

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The tester's parameters by name (what checkpoints store them under)."""
        return self.tester.named_parameters(prefix="tester")

    def state_features(self, contexts: Sequence[str]) -> torch.Tensor:
        """The mean of the tester's word embeddings over each context (detached)."""
        with torch.no_grad():
            rows = [[self.index.get(w, self.tester.start) for w in c.split()] or [self.tester.start] for c in contexts]
            return torch.stack([self.tester.previous(torch.tensor(r)).mean(0) for r in rows])


def _check_lengths(contexts: Sequence[str], continuations: Sequence[str]) -> None:
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")


class ToySampler:
    """A tree sampler over `ToySystem`: `tree_width` probes per node, `tree_depth` turns,
    every episode of an experience generated together, one model call per level and model.
    A turn's reward is `scorer`'s score of the turn (for `ToyScorer`: its response's toxicity)."""

    def __init__(self, system: ToySystem, scorer: Scorer[str, str], tree_width: int = 2, tree_depth: int = 2) -> None:
        self.system = system
        self.scorer = scorer
        self.tree_width = tree_width
        self.tree_depth = tree_depth

    def rollouts(self, count: int) -> list[Graph[str, str]]:
        graphs: list[Graph[str, str]] = [Graph(random.choice(OPENERS)) for _ in range(count)]
        frontier: list[tuple[list[Node[str, str]], str]] = [(g.children, g.context) for g in graphs]
        for _ in range(self.tree_depth):
            slots = [(children, context) for children, context in frontier for _ in range(self.tree_width)]
            frontier = self._expand(slots)
        return graphs

    def eval_rollouts(self, prompts: Sequence[str]) -> list[Graph[str, str]]:
        graphs: list[Graph[str, str]] = [Graph(self.system.opening(prompt)) for prompt in prompts]
        frontier: list[tuple[list[Node[str, str]], str]] = [(g.children, g.context) for g in graphs]
        for _ in range(self.tree_depth):
            frontier = self._expand(frontier)
        return graphs

    def _expand(self, slots: list[tuple[list[Node[str, str]], str]]) -> list[tuple[list[Node[str, str]], str]]:
        contexts = [context for _, context in slots]
        probes = self.system.rollout_tester(contexts)
        responses = self.system.rollout_target([self.system.join(c, p) for c, p in zip(contexts, probes, strict=True)])
        turns = [Turn(c, p, r) for c, p, r in zip(contexts, probes, responses, strict=True)]
        rewards = self.scorer.score(turns)
        following = []
        for (children, context), probe, response, reward in zip(slots, probes, responses, rewards, strict=True):
            node: Node[str, str] = Node(context, probe, response, reward, scores={"response_toxicity": reward})
            children.append(node)
            following.append((node.children, self.system.advance(context, probe, response)))
        return following
