"""Run-file options for models that do not fit (or run slowly) the default way, and their checks.

Only pydantic and the standard library are imported here, so validating a run file stays light;
the checks that need torch (is a CUDA device present?) import it only when an option asks for
hardware. Each check fails with one line that says what is missing and what to do, so
``astra validate`` reports a 4-bit tester on a machine without a GPU before anything loads.
The loading itself lives in `astra_transformers.large`, the fast decoding in
`astra_transformers.decoding`.

>>> LargeModelOptions().gradient_checkpointing
False
>>> missing_for(quantization="4bit", cuda=False, present=set())
['the bitsandbytes package', 'a CUDA device']
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

Quantization = Literal["4bit", "8bit"]
Attention = Literal["sdpa", "eager", "flash_attention_2"]
Decoding = Literal["loop", "static", "generate"]
Backend = Literal["hf", "vllm"]

_EXTRA = {
    "bitsandbytes": "pip install 'astra-transformers[quantization]'",
    "accelerate": "pip install 'astra-transformers[large]'",
    "flash_attn": "pip install flash-attn (it builds against your CUDA torch)",
    "vllm": "pip install 'astra-transformers[vllm]'",
}


def installed(package: str) -> bool:
    """Whether `package` can be imported here (found, not imported)."""
    return importlib.util.find_spec(package) is not None


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imports torch: call only when an option needs a GPU)."""
    import torch

    return bool(torch.cuda.is_available())


def missing_for(
    *,
    quantization: str | None = None,
    attn_implementation: str | None = None,
    device_map: str | None = None,
    backend: str = "hf",
    cuda: bool | None = None,
    present: set[str] | None = None,
) -> list[str]:
    """What this machine lacks for the given options: packages and hardware, in words.

    `cuda` and `present` (the installed packages) describe the machine (by default: this one, looked up); giving them
    makes the rule testable anywhere.
    """
    packages: list[str] = []
    needs_cuda = False
    if quantization is not None:
        packages.append("bitsandbytes")
        needs_cuda = True
    if attn_implementation == "flash_attention_2":
        packages.append("flash_attn")
        needs_cuda = True
    if device_map is not None:
        packages.append("accelerate")
    if backend == "vllm":
        packages.append("vllm")
        needs_cuda = True
    have = present if present is not None else {p for p in packages if installed(p)}
    missing = [f"the {p} package" for p in packages if p not in have]
    if needs_cuda and not (cuda if cuda is not None else cuda_available()):
        missing.append("a CUDA device")
    return missing


def _install_hint(missing: list[str]) -> str:
    hints = [hint for package, hint in _EXTRA.items() if f"the {package} package" in missing]
    if "a CUDA device" in missing:
        hints.append("run on a machine with an NVIDIA GPU and a CUDA build of torch")
    return "; ".join(hints)


class LargeModelOptions(BaseModel):
    """The transformers system's options for large models and fast generation (a mixin of
    `TransformersOptions`: the run file sets them in ``[system]`` beside the others)."""

    quantization: Quantization | None = Field(
        None,
        description="load the tester's base model in 4 or 8 bits (bitsandbytes, CUDA); a LoRA adapter trains on it",
    )
    target_quantization: Quantization | None = Field(
        None, description="load the frozen target in 4 or 8 bits (bitsandbytes, CUDA)"
    )
    target_device_map: Literal["auto"] | None = Field(
        None, description="'auto': spread the frozen target over the visible GPUs, then CPU (accelerate)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute the tester's activations in backward instead of storing them (less memory)"
    )
    attn_implementation: Attention | None = Field(
        None, description="attention kernel of every model: 'sdpa', 'eager' or 'flash_attention_2' (None: the model's)"
    )
    decoding: Decoding = Field(
        "loop",
        description="'loop': drop finished rows, a host sync per token; 'static': static KV cache, no sync "
        "per token; 'generate': transformers' generate with a static cache",
    )
    compile_decoding: bool = Field(False, description="torch.compile the decode step ('static' decoding on CUDA)")
    target_backend: Backend = Field("hf", description="what samples the target's responses: 'hf' or 'vllm' (CUDA)")

    @model_validator(mode="after")
    def _check_machine(self) -> LargeModelOptions:
        check_large_options(self)
        return self


def _option(options: BaseModel, name: str, default: Any = None) -> Any:
    return getattr(options, name, default)


def check_large_options(options: BaseModel) -> None:
    """Raise `ValueError` (one line: what is missing, what to do) when an option of `options`
    (a `LargeModelOptions`, usually a `TransformersOptions`) cannot run on this machine or
    contradicts another option."""
    quantization = _option(options, "quantization")
    lora = _option(options, "lora")
    tester = _option(options, "tester")
    if quantization is not None and lora is None and not (tester and (Path(tester) / "adapter_config.json").is_file()):
        raise ValueError(
            f"quantization={quantization!r} freezes the tester's base model in {quantization}: train a LoRA adapter "
            f"on it (QLoRA) by adding [system.lora], or remove quantization"
        )
    if _option(options, "target_device_map") is not None and _option(options, "target_device") is not None:
        raise ValueError(
            "target_device_map='auto' places the target itself; remove target_device (or target_device_map)"
        )
    if _option(options, "compile_decoding") and _option(options, "decoding") != "static":
        raise ValueError("compile_decoding compiles the static decode step; set decoding = 'static' as well")
    checks = [
        ("quantization", {"quantization": quantization}),
        ("target_quantization", {"quantization": _option(options, "target_quantization")}),
        ("target_device_map", {"device_map": _option(options, "target_device_map")}),
        ("attn_implementation", {"attn_implementation": _option(options, "attn_implementation")}),
        ("target_backend", {"backend": _option(options, "target_backend", "hf")}),
    ]
    for name, asked in checks:
        value = next(iter(asked.values()))
        if value is None or value == "hf":
            continue
        missing = missing_for(**asked)
        if missing:
            raise ValueError(
                f"{name}={value!r} needs {' and '.join(missing)}, which this machine lacks; "
                f"{_install_hint(missing)}, or remove {name}"
            )
    for role in ("tester", "target"):
        wanted = quantization if role == "tester" else _option(options, "target_quantization")
        device = _option(options, f"{role}_device") or _option(options, "device", "cpu")
        if (
            wanted is not None
            and not str(device).startswith("cuda")
            and not (role == "target" and _option(options, "target_device_map") is not None)
        ):
            option = "quantization" if role == "tester" else "target_quantization"
            raise ValueError(
                f"{option}={wanted!r} runs on a GPU, but the {role} is on {device!r}; set {role}_device = 'cuda'"
            )
