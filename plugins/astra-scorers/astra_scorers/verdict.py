"""Reading a verdict from a causal LM: P(unsafe) from the next-token distribution after a prompt.

Shared by the `llamaguard` and `judge` scorers. A batch of prompts (already rendered through a
chat template) is left-padded, run once with logits at the last position only, and each row's
full-vocabulary softmax gives the probability of the positive verdict tokens (``unsafe``,
``yes``) and of the negative ones (``safe``, ``no``). The score is the positive share of the
two, and their sum, the *verdict mass*, says whether the model is answering the question at
all: a template or tokenizer that makes the model write something else (a space, a newline, a
different capitalisation) leaves that mass small, and the scorer fails rather than report a
ratio of two negligible probabilities.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from astra_core.errors import ComponentBuildError


class VerdictMassError(RuntimeError):
    """The verdict tokens carry too little of the next-token probability mass to be a verdict."""


@dataclass
class VerdictTokens:
    """The first token ids of each spelling of the positive and of the negative verdict."""

    positive: list[int]
    negative: list[int]


def verdict_ids(tokenizer: Any, words: Sequence[str], option: str, scorer: str, model: str) -> list[int]:
    """The distinct first token ids of `words` (each as written, and after a space)."""
    ids: list[int] = []
    unknown = tokenizer.unk_token_id
    for word in words:
        for spelling in (word, " " + word):
            encoded: list[int] = tokenizer.encode(spelling, add_special_tokens=False)
            if encoded and encoded[0] != unknown and encoded[0] not in ids:
                if spelling != word and tokenizer.decode(encoded[:1]).strip() == "":
                    continue  # a bare space token is no verdict
                ids.append(int(encoded[0]))
    if not ids:
        raise ComponentBuildError(
            f"scorer {scorer!r}: {option} {list(words)!r} is not in the vocabulary of {model!r}; "
            f"set {option} to the model's verdict word"
        )
    return ids


class VerdictReader:
    """Runs a causal LM over rendered prompts and reads P(positive verdict) at the last position."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        tokens: VerdictTokens,
        device: Any,
        batch_size: int,
        min_verdict_mass: float,
        scorer: str,
    ) -> None:
        shared = set(tokens.positive) & set(tokens.negative)
        if shared:
            raise ComponentBuildError(
                f"scorer {scorer!r}: the positive and negative verdicts share the first token(s) "
                f"{sorted(shared)}; set them to words that start differently"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.device = device
        self.batch_size = batch_size
        self.min_verdict_mass = min_verdict_mass
        self.scorer = scorer
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.last_masses: list[float] = []
        """The verdict mass of each prompt of the last `read` call."""

    def read(self, prompts: Sequence[str]) -> list[float]:
        """P(positive) / (P(positive) + P(negative)) per prompt; `VerdictMassError` when a
        prompt's verdict mass is under `min_verdict_mass`."""
        import torch

        scores: list[float] = []
        masses: list[float] = []
        positive = torch.tensor(self.tokens.positive, device=self.device)
        negative = torch.tensor(self.tokens.negative, device=self.device)
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start : start + self.batch_size])
            # The templates write their special tokens (BOS, headers) themselves.
            encoded = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            input_ids = encoded["input_ids"].to(self.device)
            attention_mask = encoded["attention_mask"].to(self.device)
            # Positions count real tokens only, so a left-padded row reads exactly as it would alone.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
            with torch.inference_mode():
                output = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **extra
                )
            probabilities = torch.softmax(output.logits[:, -1, :].float(), dim=-1)
            p_positive = probabilities[:, positive].sum(-1)
            p_negative = probabilities[:, negative].sum(-1)
            mass = p_positive + p_negative
            scores.extend((p_positive / mass.clamp(min=1e-30)).tolist())
            masses.extend(mass.tolist())
        self.last_masses = masses
        low = [i for i, m in enumerate(masses) if not m >= self.min_verdict_mass]
        if low:
            raise VerdictMassError(
                f"scorer {self.scorer!r}: the verdict tokens carry only {masses[low[0]]:.3g} of the next-token "
                f"probability (under min_verdict_mass={self.min_verdict_mass}) for {len(low)} of {len(masses)} "
                f"prompts, so the model is not answering with a verdict there; check the chat template, "
                f"prompt_suffix and verdict words, or lower min_verdict_mass"
            )
        return scores
