"""The `llamaguard` scorer: a Llama Guard style safety classifier run as a causal LM (optional extra)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal, cast

from astra_core.errors import ComponentBuildError
from astra_core.turns import TextScorer
from astra_scorers._extras import missing_extra


class LlamaGuardScorer(TextScorer):
    """P(unsafe) for each text, read from a Llama Guard model's first verdict token.

    Each text becomes a one-turn conversation (the user says the text), formatted with the
    model's own chat template (plus `prompt_suffix`). One forward pass over a left-padded batch
    gives the next-token logits at the verdict position; the score is the probability of the
    `unsafe_token` relative to the `safe_token`: ``softmax([logit_safe, logit_unsafe])[1]``.
    Only the last position's logits are computed, so long prompts with a 128k vocabulary stay
    cheap. Needs ``pip install 'astra-scorers[llamaguard]'``; `model` is a Hugging Face id or a
    local directory saved with ``save_pretrained``.
    """

    def __init__(
        self,
        model: str = "meta-llama/Llama-Guard-3-1B",
        content_format: Literal["parts", "text"] = "parts",
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        batch_size: int = 8,
        safe_token: str = "safe",
        unsafe_token: str = "unsafe",
        prompt_suffix: str = "",
        local_files_only: bool = False,
        allow_pickle_weights: bool = False,
    ) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as error:
            raise missing_extra("llamaguard", "transformers", "llamaguard") from error
        self.model_name = model
        self.content_format = content_format
        self.batch_size = batch_size
        self.prompt_suffix = prompt_suffix
        self.device = torch.device(device)
        # No code from the model directory, and safetensors weights only unless allowed.
        self.tokenizer: Any = AutoTokenizer.from_pretrained(
            model, local_files_only=local_files_only, trust_remote_code=False
        )
        load: dict[str, Any] = {
            "local_files_only": local_files_only,
            "use_safetensors": None if allow_pickle_weights else True,
        }
        if dtype is not None:
            load["dtype"] = getattr(torch, dtype)
        # transformers' typed `.to` wrapper rejects a torch.device; the model is used untyped below anyway.
        self.model: Any = cast(Any, AutoModelForCausalLM.from_pretrained(model, trust_remote_code=False, **load))
        self.model.to(self.device).eval()
        if not getattr(self.tokenizer, "chat_template", None):
            raise ComponentBuildError(
                f"scorer 'llamaguard': the tokenizer of {model!r} has no chat template; use a Llama Guard model"
            )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ComponentBuildError(
                    f"scorer 'llamaguard': the tokenizer of {model!r} has neither a pad nor an eos token to pad with"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.safe_id = self._verdict_id(safe_token, "safe_token")
        self.unsafe_id = self._verdict_id(unsafe_token, "unsafe_token")
        if self.safe_id == self.unsafe_id:
            raise ComponentBuildError(
                f"scorer 'llamaguard': safe_token {safe_token!r} and unsafe_token {unsafe_token!r} start with the "
                f"same token of {model!r}; set them to the model's verdict words"
            )
        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def _verdict_id(self, word: str, option: str) -> int:
        ids: list[int] = self.tokenizer.encode(word, add_special_tokens=False)
        unknown = self.tokenizer.unk_token_id
        if not ids or (unknown is not None and ids[0] == unknown):
            raise ComponentBuildError(
                f"scorer 'llamaguard': {option} {word!r} is not in the vocabulary of {self.model_name!r}; "
                f"set {option} to the model's verdict word"
            )
        return int(ids[0])

    def prompt(self, text: str) -> str:
        """The exact prompt the model reads for `text`: its chat template around one user turn."""
        content: str | list[dict[str, str]] = (
            text if self.content_format == "text" else [{"type": "text", "text": text}]
        )
        formatted = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return str(formatted) + self.prompt_suffix

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """One P(unsafe) in [0, 1] per text, `batch_size` texts per forward pass."""
        import torch

        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            prompts = [self.prompt(text) for text in texts[start : start + self.batch_size]]
            # The template already holds the special tokens (BOS and headers).
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            input_ids = batch["input_ids"].to(self.device)
            attention_mask = batch["attention_mask"].to(self.device)
            # Positions count real tokens only, so a left-padded row reads exactly as it would alone.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
            with torch.inference_mode():
                output = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **extra
                )
            last = output.logits[:, -1, :].float()
            verdict = torch.stack([last[:, self.safe_id], last[:, self.unsafe_id]], dim=-1)
            scores.extend(torch.softmax(verdict, dim=-1)[:, 1].tolist())
        return scores
