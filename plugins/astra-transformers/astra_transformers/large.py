"""Loading models that do not fit one device in full precision, and training them in less memory.

What the options of `astra_transformers.large_options` do when the system loads its models:

- **dtype "auto"** (the default): bfloat16 on a CUDA device that supports it, float32 elsewhere
  (CPU kernels in bfloat16 are slow and the tiny model's tests compare float32 values).
- **quantization** (tester) / **target_quantization**: ``from_pretrained`` with a
  ``BitsAndBytesConfig`` (4-bit NF4 with double quantisation and bf16 compute, or 8-bit). A
  quantised tester is prepared with peft's ``prepare_model_for_kbit_training`` and trains a LoRA
  adapter (QLoRA); its baseline is the same quantised model with the adapter off.
- **target_device_map = "auto"**: accelerate places the frozen target's layers over the GPUs,
  then the CPU; inputs go to the device of its embeddings and its outputs come back there.
- **gradient_checkpointing**: the tester's transformer blocks recompute their activations in
  backward (non-reentrant ``torch.utils.checkpoint``); the values and gradients are the same.
- **attn_implementation**: passed to ``from_pretrained`` for every model.

>>> role_dtype("auto", torch.device("cpu"))
torch.float32
>>> Loading().from_pretrained_kwargs(torch.float32)
{'dtype': torch.float32}
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from astra_core.errors import ConfigError
from astra_transformers.precision import resolve_dtype


def role_dtype(name: str, device: torch.device) -> torch.dtype:
    """The parameter dtype an option value gives a model on `device`: ``"auto"`` is bfloat16 on a
    CUDA device with bfloat16 support and float32 elsewhere; other names are `resolve_dtype`'s."""
    if name != "auto":
        return resolve_dtype(name)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config(bits: str, compute_dtype: torch.dtype) -> Any:
    """The ``BitsAndBytesConfig`` for ``"4bit"`` (NF4, double quantisation, `compute_dtype`
    matmuls: the QLoRA recipe) or ``"8bit"`` (LLM.int8)."""
    from transformers import BitsAndBytesConfig as _BitsAndBytesConfig

    BitsAndBytesConfig: Any = _BitsAndBytesConfig  # untyped in transformers
    if bits == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if bits == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigError(f"unknown quantization {bits!r}; use '4bit' or '8bit'")


@dataclass(frozen=True)
class Loading:
    """How one model is loaded beyond its dtype: quantised, placed by accelerate, its attention."""

    quantization: str | None = None
    device_map: str | None = None
    attn_implementation: str | None = None
    max_memory: Mapping[int | str, int | str] | None = None
    """accelerate's per-device budget for ``device_map`` (None: what the devices have)."""

    @property
    def places_itself(self) -> bool:
        """Whether ``from_pretrained`` puts the weights where they go (no ``.to(device)`` after:
        a quantised or dispatched model cannot be moved whole)."""
        return self.quantization is not None or self.device_map is not None

    def from_pretrained_kwargs(self, dtype: torch.dtype, device: torch.device | None = None) -> dict[str, Any]:
        """The keyword arguments of ``AutoModelForCausalLM.from_pretrained`` for this loading."""
        kwargs: dict[str, Any] = {"dtype": dtype}
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.quantization is not None:
            kwargs["quantization_config"] = quantization_config(self.quantization, dtype)
            if self.device_map is None:
                # bitsandbytes quantises while loading onto the GPU: name it (under torchrun,
                # "cuda" is this rank's GPU, which init_from_env made the current one).
                kwargs["device_map"] = {"": _gpu_name(device)}
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
            if self.max_memory is not None:
                kwargs["max_memory"] = dict(self.max_memory)
        return kwargs


def _gpu_name(device: torch.device | None) -> str:
    if device is None or (device.type == "cuda" and device.index is None):
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cuda"
    return str(device)


def input_device(module: nn.Module) -> torch.device:
    """Where a model's inputs go: the device of its input embeddings (the first layer accelerate
    placed), else of its first parameter."""
    embeddings = getattr(module, "get_input_embeddings", lambda: None)()
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(module.parameters()).device


def spans_devices(module: nn.Module) -> bool:
    """Whether accelerate spread `module` over more than one device (its ``hf_device_map``)."""
    device_map = getattr(module, "hf_device_map", None)
    return isinstance(device_map, dict) and len(set(device_map.values())) > 1


def plan_device_map(config: Any, dtype: torch.dtype, max_memory: Mapping[int | str, int | str]) -> dict[str, int | str]:
    """Where ``device_map="auto"`` would put each module of a model with `config`, given a
    memory budget per device (GPU index or ``"cpu"``): computed on the meta device, so no
    weights are allocated and no GPU is needed. Blocks are never split over two devices.

    This is the placement ``from_pretrained(device_map="auto", max_memory=...)`` computes.
    """
    from transformers import AutoModelForCausalLM

    accelerate: Any = importlib.import_module("accelerate")  # untyped
    auto: Any = AutoModelForCausalLM
    with accelerate.init_empty_weights():
        model = auto.from_config(config, dtype=dtype)
    model.tie_weights()
    no_split = sorted(getattr(model, "_no_split_modules", None) or [])
    placed = accelerate.infer_auto_device_map(
        model, max_memory=dict(max_memory), no_split_module_classes=no_split, dtype=dtype
    )
    return dict(placed)


def enable_gradient_checkpointing(module: Any) -> None:
    """Recompute each transformer block's activations in backward (non-reentrant checkpoint).

    transformers checkpoints a block only while it is in training mode; the system keeps its
    models in eval mode (no dropout: log-probs must match what was sampled). So only the blocks'
    own ``training`` flag is set, not their submodules': dropout stays off, and the checkpointed
    forward computes exactly what the plain one does. Forwards without gradients (generation,
    frozen log-probs) are not checkpointed and keep their KV cache.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not getattr(module, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"gradient_checkpointing: {type(module).__name__} does not support it; remove gradient_checkpointing"
        )
    # transformers 5 renamed the switch (the old name warns); older versions have only the old one.
    if hasattr(module, "activation_checkpointing_enable"):
        module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    blocks = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]
    for block in blocks:
        block.training = True  # this module only (see above): its dropout children stay in eval mode


def checkpointing(module: nn.Module) -> bool:
    """Whether `module`'s blocks recompute activations in backward (see `enable_gradient_checkpointing`)."""
    return any(getattr(m, "gradient_checkpointing", False) and m.training for m in module.modules())


def prepare_for_qlora(module: Any, gradient_checkpointing: bool) -> None:
    """peft's ``prepare_model_for_kbit_training`` on a quantised tester before its adapter is
    attached: norms and head in float32, input embeddings' outputs requiring grad; with
    `gradient_checkpointing`, non-reentrant checkpointing (set again by the system afterwards)."""
    try:
        peft: Any = importlib.import_module("peft")
    except ImportError:
        raise ConfigError(
            "quantization trains a LoRA adapter, which needs peft; pip install 'astra-transformers[lora]'"
        ) from None
    peft.prepare_model_for_kbit_training(
        module,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
