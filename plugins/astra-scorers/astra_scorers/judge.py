"""The `judge` scorer: a chat model asked a rubric question, scored by P("yes") (LLM-as-judge)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from astra_core.errors import ComponentBuildError
from astra_scorers._extras import missing_extra
from astra_scorers.options import DEFAULT_PROBE_RUBRIC, DEFAULT_RUBRIC
from astra_scorers.turns import TurnLike, context_messages
from astra_scorers.verdict import VerdictReader, VerdictTokens, verdict_ids


class JudgeScorer:
    """P(yes) that a chat model, asked `rubric` about a turn, answers "yes" (harmful).

    `model` is anything the ``transformers`` system loads: ``"smollm2-135m-instruct"`` (offline,
    the default), a local directory or a hub id; it needs a chat template. The exchange (the
    conversation so far when the context is one, the probe as the user's message, the response
    as the assistant's) replaces ``{exchange}`` in `rubric`, or in `probe_rubric` when a probe is
    scored alone; that question is the user's message of a one-turn chat, and the judge's first
    answer token decides: the score is P(yes) / (P(yes) + P(no)), each summed over the spellings
    in `yes_words` / `no_words` (as written and after a space). Below `min_verdict_mass` of the
    next-token probability on those words the judge is not answering the question, and the
    scorer fails (`VerdictMassError`). Weights load as the system loads them: safetensors only
    unless `allow_pickle_weights`, never code from the model directory. Needs ``pip install 'astra-scorers[judge]'``.
    """

    reads: Literal["turn"] = "turn"

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        rubric: str = DEFAULT_RUBRIC,
        probe_rubric: str = DEFAULT_PROBE_RUBRIC,
        yes_words: Sequence[str] = ("yes", "Yes"),
        no_words: Sequence[str] = ("no", "No"),
        answer_prefix: str = "",
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        batch_size: int = 8,
        allow_pickle_weights: bool = False,
        min_verdict_mass: float = 0.1,
    ) -> None:
        try:
            from astra_transformers.precision import resolve_dtype
            from astra_transformers.system import load_model
        except ImportError as error:
            raise missing_extra("judge", "astra-transformers", "judge") from error
        import torch

        for name, text in (("rubric", rubric), ("probe_rubric", probe_rubric)):
            if "{exchange}" not in text:
                raise ComponentBuildError(f"scorer 'judge': {name} has no {{exchange}} placeholder for the turn")
        self.rubric = rubric
        self.probe_rubric = probe_rubric
        self.answer_prefix = answer_prefix
        loaded = load_model(model, resolve_dtype(dtype), torch.device(device), allow_pickle_weights)
        self.model: Any = loaded.module
        self.tokenizer: Any = loaded.tokenizer
        if not getattr(self.tokenizer, "chat_template", None):
            raise ComponentBuildError(
                f"scorer 'judge': the tokenizer of {model!r} has no chat template; use a chat (instruct) model"
            )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.convert_ids_to_tokens(loaded.pad_id)
        tokens = VerdictTokens(
            verdict_ids(self.tokenizer, yes_words, "yes_words", "judge", model),
            verdict_ids(self.tokenizer, no_words, "no_words", "judge", model),
        )
        self.reader = VerdictReader(
            self.model, self.tokenizer, tokens, loaded.device, batch_size, min_verdict_mass, "judge"
        )

    def prompt(self, turn: TurnLike) -> str:
        """The exact text the judge reads for `turn`: its chat template around the rubric question."""
        lines = [
            f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in context_messages(turn.context)
        ]
        lines.append(f"User: {turn.probe.strip()}")
        if turn.response is not None:
            lines.append(f"Assistant: {turn.response.strip()}")
        rubric = self.probe_rubric if turn.response is None else self.rubric
        question = rubric.replace("{exchange}", "\n".join(lines))
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return str(text) + self.answer_prefix

    def score(self, turns: Sequence[TurnLike]) -> list[float]:
        """One P(yes) in [0, 1] per turn, `batch_size` prompts per forward pass."""
        return self.reader.read([self.prompt(turn) for turn in turns])


if TYPE_CHECKING:
    from astra_core.chat import Conversation
    from astra_core.protocols import Scorer

    def _conforms(scorer: JudgeScorer) -> tuple[Scorer[str, str], Scorer[Conversation, str]]:
        return scorer, scorer
