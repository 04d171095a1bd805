"""The `detoxify` scorer: Unitary's Detoxify BERT-family toxicity classifiers (optional extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from astra_core.errors import ComponentBuildError, ConfigError
from astra_core.turns import TextScorer
from astra_scorers._extras import missing_extra

# Detoxify's own renaming of its checkpoints' class names.
_STANDARD_NAMES = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}


class DetoxifyScorer(TextScorer):
    """The Detoxify `label` output ("toxicity" by default) for each text, in batches.

    Needs ``pip install 'astra-scorers[detoxify]'``. Weights come from `checkpoint` (a local
    ``.ckpt`` file in Detoxify's format) or are downloaded by Detoxify for `model_type`. With
    both `checkpoint` and `huggingface_config_path` (a local directory holding the base model's
    ``config.json`` and tokenizer files) the model is built from those files alone, so
    ``HF_HUB_OFFLINE=1`` works: Detoxify's own loader would still ask the hub for the base
    model's config. Every batch is scored as a batch, a batch of one included (Detoxify's
    ``predict`` returns a bare float there). Detoxify's checkpoints are pickles, so the scorer
    refuses to load unless `allow_pickle_weights` is true.
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
            import torch
            from detoxify import Detoxify
        except ImportError as error:
            raise missing_extra("detoxify", "detoxify", "detoxify") from error
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.label = label
        if checkpoint is not None and huggingface_config_path is not None:
            self.model, self.tokenizer, self.class_names = _load_offline(checkpoint, huggingface_config_path, device)
        else:
            keywords: dict[str, Any] = {"checkpoint": checkpoint, "device": device}
            if huggingface_config_path is not None:
                keywords["huggingface_config_path"] = huggingface_config_path
            detoxify: Any = Detoxify(model_type, **keywords)
            self.model, self.tokenizer, self.class_names = detoxify.model, detoxify.tokenizer, detoxify.class_names
        self.model.to(self.device).eval()
        if label not in self.class_names:
            raise ConfigError(
                f"detoxify has no output {label!r}; set label to one of: {', '.join(sorted(self.class_names))}"
            )
        self._column = list(self.class_names).index(label)

    def score_texts(self, items: Sequence[str]) -> list[float]:
        """One score in [0, 1] per text: the classifier's sigmoid output for `label`."""
        import torch

        scores: list[float] = []
        for start in range(0, len(items), self.batch_size):
            batch = list(items[start : start + self.batch_size])
            inputs = self.tokenizer(batch, return_tensors="pt", truncation=True, padding=True).to(self.device)
            with torch.inference_mode():
                logits = self.model(**inputs)[0]
            # (batch, classes) whatever the batch size: no squeeze, so one text is a list of one.
            scores.extend(torch.sigmoid(logits.float())[:, self._column].tolist())
        return scores


def _load_offline(checkpoint: str, config_path: str, device: str) -> tuple[Any, Any, list[str]]:
    """A Detoxify checkpoint's model, tokenizer and class names from local files only."""
    import torch
    import transformers

    if not Path(checkpoint).is_file():
        raise ConfigError(f"detoxify checkpoint {checkpoint!r} does not exist; give a local .ckpt file")
    if not (Path(config_path) / "config.json").is_file():
        raise ConfigError(
            f"detoxify huggingface_config_path {config_path!r} has no config.json; give the base model's "
            f"directory (config.json and tokenizer files)"
        )
    try:
        # Tensors and plain containers only: Detoxify's checkpoints hold a state dict and a config dict.
        loaded = torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception as error:  # an unpickling refusal or a damaged file, reported against the path
        reason = str(error).splitlines()[0] if str(error) else ""
        raise ComponentBuildError(
            f"detoxify checkpoint {checkpoint!r} cannot be read as tensors and plain data "
            f"({type(error).__name__}: {reason}); use a checkpoint released by Detoxify"
        ) from None
    try:
        arch = loaded["config"]["arch"]["args"]
        classes = [_STANDARD_NAMES.get(c, c) for c in loaded["config"]["dataset"]["args"]["classes"]]
        state_dict = loaded["state_dict"]
        model_class = getattr(transformers, arch["model_name"])
        tokenizer_class = getattr(transformers, arch["tokenizer_name"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ComponentBuildError(
            f"detoxify checkpoint {checkpoint!r} is not in Detoxify's format (missing {error}); "
            f"use a checkpoint released by Detoxify"
        ) from None
    config = model_class.config_class.from_pretrained(
        config_path, num_labels=arch["num_classes"], local_files_only=True, trust_remote_code=False
    )
    model = model_class(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if [k for k in missing if not k.endswith("position_ids")] or unexpected:
        raise ComponentBuildError(
            f"detoxify checkpoint {checkpoint!r} does not fit the {arch['model_name']} of {config_path!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected weights); give the base model it was trained from"
        )
    tokenizer = tokenizer_class.from_pretrained(config_path, local_files_only=True, trust_remote_code=False)
    return model, tokenizer, classes
