"""The `detoxify` scorer: Unitary's Detoxify BERT-family toxicity classifiers (optional extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from astra_core.errors import ConfigError
from astra_core.turns import TextScorer
from astra_scorers._extras import missing_extra


class DetoxifyScorer(TextScorer):
    """The Detoxify `label` output ("toxicity" by default) for each text, in batches.

    Needs ``pip install 'astra-scorers[detoxify]'``. Weights come from `checkpoint` (a local
    ``.ckpt`` file) or are downloaded by Detoxify for `model_type`; with both `checkpoint` and
    `huggingface_config_path` (a local directory holding the tokenizer and model config) nothing
    touches the network. Those checkpoints are pickles, so the scorer refuses to load unless
    `allow_pickle_weights` is true.
    """

    def __init__(
        self,
        model_type: str = "original",
        checkpoint: str | None = None,
        huggingface_config_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        label: str = "toxicity",
        allow_pickle_weights: bool = False,
    ) -> None:
        if not allow_pickle_weights:
            # Detoxify's checkpoints (a local .ckpt or its downloads) are pickles loaded with an
            # unrestricted torch.load: loading one can run any code it carries.
            raise ConfigError(
                "scorer 'detoxify' loads its weights from a pickle (.ckpt), which can run code; "
                "set allow_pickle_weights = true only for a checkpoint you trust"
            )
        try:
            from detoxify import Detoxify
        except ImportError as error:
            raise missing_extra("detoxify", "detoxify", "detoxify") from error
        keywords: dict[str, Any] = {"checkpoint": checkpoint, "device": device}
        if huggingface_config_path is not None:  # older Detoxify releases lack this keyword
            keywords["huggingface_config_path"] = huggingface_config_path
        self._model: Any = Detoxify(model_type, **keywords)
        self.batch_size = batch_size
        self.label = label

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """One score in [0, 1] per text: Detoxify's sigmoid output for `label`."""
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            outputs = self._model.predict(list(texts[start : start + self.batch_size]))
            if self.label not in outputs:
                raise ConfigError(
                    f"detoxify has no output {self.label!r}; set label to one of: {', '.join(sorted(outputs))}"
                )
            scores.extend(float(value) for value in outputs[self.label])
        return scores
