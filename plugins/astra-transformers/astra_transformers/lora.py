"""LoRA testers: the tester trained as a ``peft`` LoRA adapter over its frozen base model.

`LoraTester` injects LoRA layers into the tester's Hugging Face model in place, so the model the
system drives is the same object, now with adapters in its attention (or wherever
``target_modules`` says). Only the adapters' A and B matrices require gradients. The baseline is
that very model with the adapter switched off (`LoraTester.adapter_off`), which is exactly the
base model: B starts at zero and the base weights never train. So no second copy of the model is
held in memory, and the baseline cannot drift.

``peft`` is an optional dependency (``pip install 'astra-transformers[lora]'``); this module
imports it only when an adapter is built or loaded.

>>> adapter_directory("tiny") is None   # a model source, not a saved adapter
True
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from astra_core.errors import ComponentBuildError, ConfigError
from astra_transformers.options import LoraOptions

if TYPE_CHECKING:
    from peft import PeftModel

ADAPTER_CONFIG = "adapter_config.json"
"""The file peft writes beside an adapter's weights; a directory holding it is an adapter."""


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError(
            "lora needs the peft library, which is not installed; pip install 'astra-transformers[lora]'"
        ) from None
    return peft


def adapter_directory(source: str) -> Path | None:
    """`source` as a path when it is a directory with ``adapter_config.json`` (a saved LoRA
    adapter), else None (a model source: ``"tiny"``, a hub id, a model directory)."""
    path = Path(source).expanduser()
    return path.resolve() if (path / ADAPTER_CONFIG).is_file() else None


def adapter_base(directory: Path) -> str:
    """The source of the base model a saved adapter was trained on (its config's
    ``base_model_name_or_path``: ``"tiny"``, a hub id or a model directory)."""
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{directory / ADAPTER_CONFIG}: unreadable ({error}); save the adapter again") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise ConfigError(
            f"{directory / ADAPTER_CONFIG} names no base_model_name_or_path; set it to the base model's "
            f"source ('tiny', a hub id or a model directory)"
        )
    return base


def _uses_conv1d(module: nn.Module) -> bool:
    # GPT-2-style models store projections as transformers' Conv1D (weight transposed): peft
    # needs fan_in_fan_out=True for them, and warns each time it has to guess.
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(child, Conv1D) for child in module.modules())


class LoraTester:
    """A Hugging Face causal LM with a trainable LoRA adapter injected, and its peft wrapper.

    `module` is the original model object (the adapters live inside its layers), so code that
    drives the model directly (``module.base_model``, the LM head) runs with the adapter on.
    Build one with `attach` (a fresh adapter) or `load` (a saved one); `base_source` is the
    user-facing source of the base model, written into saved adapters so they load anywhere.
    """

    def __init__(self, peft_model: PeftModel, base_source: str, dropout: float) -> None:
        self.peft_model = peft_model
        self.base_source = base_source
        self.dropout = dropout
        # Injected layers are built in training mode; the system's models run in eval mode
        # (no dropout unless `training_dropout` asks for it).
        cast(nn.Module, peft_model).train(False)

    @classmethod
    def attach(cls, module: PreTrainedModel, options: LoraOptions, base_source: str) -> LoraTester:
        """Inject a fresh adapter (B = 0, so the tester starts exactly at the base model) and
        freeze every base weight."""
        peft = _peft()
        config = peft.LoraConfig(
            r=options.r,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=options.target_modules,
            fan_in_fan_out=_uses_conv1d(module),
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                peft_model = peft.get_peft_model(module, config)
        except ValueError as error:  # peft's message for unknown architectures or target names
            raise ConfigError(
                f"cannot attach LoRA to {base_source!r}: {error}; set lora.target_modules to module names "
                f"of this model (for GPT-2: ['c_attn'])"
            ) from None
        return cls(peft_model, base_source, options.dropout)

    @classmethod
    def load(
        cls, module: PreTrainedModel, directory: Path, base_source: str, allow_pickle_weights: bool = False
    ) -> LoraTester:
        """Load a saved adapter onto `module` (its base model), trainable, base weights frozen.
        Only a safetensors adapter, unless `allow_pickle_weights` admits ``adapter_model.bin``."""
        if not allow_pickle_weights and not (Path(directory) / "adapter_model.safetensors").is_file():
            raise ComponentBuildError(
                f"the LoRA adapter {str(directory)!r} has no adapter_model.safetensors; a .bin adapter is a "
                f"pickle, which can run code: set allow_pickle_weights = true only if you trust it"
            )
        peft = _peft()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                peft_model = peft.PeftModel.from_pretrained(module, str(directory), is_trainable=True)
        except Exception as error:  # any peft failure, reported with the adapter that caused it
            raise ComponentBuildError(
                f"cannot load the LoRA adapter {str(directory)!r} onto {base_source!r}: "
                f"{type(error).__name__}: {error}; give a directory written by save_pretrained of a LoRA run"
            ) from error
        dropout = float(getattr(peft_model.peft_config["default"], "lora_dropout", 0.0))
        return cls(peft_model, base_source, dropout)

    @property
    def module(self) -> PreTrainedModel:
        """The Hugging Face model with the adapter inside its layers (the object given to `attach`)."""
        return cast(PreTrainedModel, self.peft_model.get_base_model())

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The adapter's trainable parameters, in the model's (stable) module order."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def adapter_off(self) -> AbstractContextManager[None]:
        """A context in which the model computes the base model exactly (the adapter skipped)."""
        return cast(AbstractContextManager[None], self.peft_model.disable_adapter())

    def training_dropout(self) -> AbstractContextManager[None]:
        """A context applying the adapter's dropout when the forward builds a graph (a training
        forward); generation and no-grad evaluations stay deterministic. A no-op without dropout."""
        if self.dropout <= 0 or not torch.is_grad_enabled():
            return nullcontext()
        return self._dropout_on()

    @contextmanager
    def _dropout_on(self) -> Iterator[None]:
        # Only the adapters' dropout modules switch to training mode: the base model's own
        # dropout stays off, as in every other forward of the system.
        dropouts = [m for name, m in self.module.named_modules() if ".lora_dropout." in f".{name}."]
        for dropout in dropouts:
            dropout.train(True)
        try:
            yield
        finally:
            for dropout in dropouts:
                dropout.train(False)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the adapter (``adapter_config.json`` and ``adapter_model.safetensors``) to
        `directory`; its config names `base_source`, so ``tester = "<directory>"`` loads it back."""
        # The vocabulary is never resized, so embeddings need no saving (peft's "auto" would look
        # the base model up, on the hub for a hub id).
        self.peft_model.save_pretrained(str(directory), save_embedding_layers=False)
        path = Path(directory) / ADAPTER_CONFIG
        config = json.loads(path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = self.base_source
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def parameter_bytes(*modules: nn.Module, trainable_only: bool = False) -> int:
    """Bytes of the distinct parameter tensors of `modules` (a tensor shared by two modules, or
    tied within one, counts once); with `trainable_only`, only those that require a gradient."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) in seen or (trainable_only and not parameter.requires_grad):
                continue
            seen.add(id(parameter))
            total += parameter.numel() * parameter.element_size()
    return total
