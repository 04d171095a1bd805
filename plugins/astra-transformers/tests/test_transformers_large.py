"""Large-model options on the CPU: dtype defaults, gradient checkpointing, attention kernels,
accelerate's placement (on the meta device and on the CPU) and the one-line errors of options
that need a GPU or a package this machine lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoConfig

from astra_core.errors import OptionsError
from astra_transformers import TINY_MODEL_DIR
from astra_transformers.large import Loading, checkpointing, plan_device_map, role_dtype
from astra_transformers.large_options import installed, missing_for
from astra_transformers.options import TransformersOptions
from astra_transformers.system import TransformersSystem

CONTEXTS = ["Hi Sam! How are you?", "What do you think about the weather?", "Oh,"]
CHOSEN = [" I'm fine, thanks.", " It's so cold.", " shut up."]
REJECTED = [" Go away.", " Nice and warm", " well then."]
NO_CUDA = not torch.cuda.is_available()


def build(**options: object) -> TransformersSystem:
    return TransformersSystem(probe_tokens=8, response_tokens=8, **options)


def problem(**options: object) -> str:
    """The one validation message `options` get (as `astra validate` reports it)."""
    with pytest.raises(ValidationError) as caught:
        TransformersOptions.model_validate(options)
    (error,) = caught.value.errors()
    return str(error["msg"])


# -- dtype -------------------------------------------------------------------------------


def test_dtype_auto_is_float32_on_cpu_and_the_default() -> None:
    assert TransformersOptions().dtype == "auto"
    assert role_dtype("auto", torch.device("cpu")) == torch.float32
    assert role_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    system = build()
    assert {p.dtype for p in system.tester.parameters()} == {torch.float32}


@pytest.mark.skipif(NO_CUDA, reason="bfloat16 as the CUDA default needs a CUDA device")
def test_dtype_auto_is_bfloat16_on_cuda() -> None:
    assert role_dtype("auto", torch.device("cuda")) == torch.bfloat16


# -- gradient checkpointing ----------------------------------------------------------------


def _grads(system: TransformersSystem) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for p in system.parameters():
        p.grad = None
    chosen, rejected = system.tester_pair_logprobs(CONTEXTS, CHOSEN, REJECTED)
    loss = -(chosen - rejected).sigmoid().log().mean() + system.tester_logprobs(CONTEXTS, CHOSEN, "mean").sum()
    loss.backward()  # type: ignore[no-untyped-call]
    return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in system.parameters()]


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    plain_loss, plain_grads = _grads(build())
    system = build(gradient_checkpointing=True)
    assert checkpointing(system.tester)
    attention = system.tester.get_submodule("transformer.h.0.attn")
    calls: list[int] = []
    attention.register_forward_hook(lambda *_: calls.append(1))
    loss, grads = _grads(system)
    # The block ran again in backward: the checkpoint recomputed it.
    assert len(calls) > 2
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(plain_grads)
    for got, want in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_keeps_dropout_off_and_generation_cached() -> None:
    system = build(gradient_checkpointing=True)
    dropouts = [m for m in system.tester.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and not any(m.training for m in dropouts)
    first = system.tester_logprobs(CONTEXTS, CHOSEN)
    assert torch.equal(first, system.tester_logprobs(CONTEXTS, CHOSEN))  # deterministic: no dropout
    torch.manual_seed(0)
    assert len(system.rollout_tester(CONTEXTS)) == len(CONTEXTS)


def test_gradient_checkpointing_with_a_lora_tester_trains_the_adapter_only() -> None:
    torch.manual_seed(0)  # the same random A matrices in both adapters
    plain_loss, plain_grads = _grads(build(lora={"r": 4}))
    torch.manual_seed(0)
    loss, grads = _grads(build(lora={"r": 4}, gradient_checkpointing=True))
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# -- attention ---------------------------------------------------------------------------


def test_sdpa_and_eager_attention_give_the_same_logprobs() -> None:
    eager = build(attn_implementation="eager")
    sdpa = build(attn_implementation="sdpa")
    assert eager.tester.config._attn_implementation == "eager"
    assert sdpa.target.config._attn_implementation == "sdpa"
    torch.testing.assert_close(
        eager.tester_logprobs(CONTEXTS, CHOSEN).detach(), sdpa.tester_logprobs(CONTEXTS, CHOSEN).detach()
    )


@pytest.mark.skipif(installed("flash_attn") and not NO_CUDA, reason="flash-attention is usable here")
def test_flash_attention_without_its_package_or_a_gpu_is_one_line() -> None:
    message = problem(attn_implementation="flash_attention_2")
    assert "flash_attn" in message or "CUDA" in message
    assert "\n" not in message and "remove attn_implementation" in message


# -- device_map --------------------------------------------------------------------------


def test_device_map_plan_spreads_blocks_over_devices_without_splitting_one() -> None:
    config = AutoConfig.from_pretrained(TINY_MODEL_DIR)
    # On the meta device, against budgets of two GPUs that need not exist: ~1.5 blocks' worth each.
    block_bytes = sum(4 * p.numel() for p in _tiny_block_parameters())
    # GPU 0 also holds the embeddings (~2 MiB here).
    gpu = int(block_bytes * 1.5)
    budget: dict[int | str, int | str] = {0: gpu + 2 * 2**20, 1: gpu, "cpu": 2**30}
    placed = plan_device_map(config, torch.float32, budget)
    devices_in_order = [placed.get(f"transformer.h.{i}", placed.get("transformer.h")) for i in range(config.n_layer)]
    assert None not in devices_in_order
    # Blocks go to the devices in order, each block whole (no key inside a block).
    rank = {0: 0, 1: 1, "cpu": 2}
    assert [rank[d] for d in devices_in_order] == sorted(rank[d] for d in devices_in_order)
    assert len(set(devices_in_order)) >= 2
    assert not any(key.startswith("transformer.h.0.") for key in placed)


def _tiny_block_parameters() -> list[torch.nn.Parameter]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR)
    return list(model.get_submodule("transformer.h.0").parameters())


@pytest.mark.skipif(not installed("accelerate"), reason="device_map needs accelerate")
def test_target_device_map_auto_loads_on_cpu_and_matches_the_plain_target() -> None:
    plain = build()
    mapped = build(target_device_map="auto", target="tiny")
    assert mapped.target is not mapped.baseline  # placed by accelerate, not shared
    # accelerate puts a model this small whole on the first GPU where there is one.
    assert {str(p.device) for p in mapped.target.parameters()} == {"cpu" if NO_CUDA else "cuda:0"}
    torch.testing.assert_close(
        mapped.target_logprobs(CONTEXTS, CHOSEN).cpu(),
        plain.target_logprobs(CONTEXTS, CHOSEN).cpu(),
        rtol=1e-4,
        atol=1e-4,
    )
    torch.manual_seed(1)
    assert len(mapped.rollout_target(CONTEXTS)) == len(CONTEXTS)


def test_loading_arguments_of_each_option() -> None:
    kwargs = Loading("4bit", attn_implementation="sdpa").from_pretrained_kwargs(torch.bfloat16, torch.device("cuda"))
    config = kwargs["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    # "cuda" is named as the current GPU where there is one (under torchrun: this rank's).
    assert kwargs["device_map"] == {"": "cuda" if NO_CUDA else "cuda:0"} and kwargs["attn_implementation"] == "sdpa"
    mapped = Loading(device_map="auto", max_memory={0: "10GiB"}).from_pretrained_kwargs(torch.float32)
    assert mapped == {"dtype": torch.float32, "device_map": "auto", "max_memory": {0: "10GiB"}}
    assert Loading("8bit").places_itself and not Loading(attn_implementation="eager").places_itself


# -- quantisation and the errors of options this machine cannot run ---------------------------


@pytest.mark.skipif(installed("bitsandbytes") and not NO_CUDA, reason="4-bit loading is possible here")
def test_a_4bit_qlora_tester_without_bitsandbytes_or_cuda_is_one_line_naming_both() -> None:
    message = problem(quantization="4bit", lora={}, device="cuda")
    assert "\n" not in message
    assert "quantization='4bit' needs" in message
    if not installed("bitsandbytes"):
        assert "bitsandbytes" in message and "astra-transformers[quantization]" in message
    if NO_CUDA:
        assert "a CUDA device" in message
    with pytest.raises(OptionsError, match=r"bitsandbytes|CUDA"):
        build(quantization="4bit", lora={}, device="cuda")


def test_quantization_without_lora_asks_for_an_adapter() -> None:
    assert "by adding [system.lora]" in problem(quantization="4bit")


def test_quantization_on_the_cpu_asks_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import astra_transformers.large_options as large_options

    real = large_options.missing_for
    # A machine with bitsandbytes and a GPU: only the device rule is left to fail.
    monkeypatch.setattr(
        large_options, "missing_for", lambda **asked: real(**asked, cuda=True, present={"bitsandbytes"})
    )
    assert "set tester_device = 'cuda'" in problem(quantization="8bit", lora={}, device="cpu")
    TransformersOptions.model_validate({"quantization": "8bit", "lora": {}, "device": "cuda"})


def test_missing_for_names_packages_then_hardware() -> None:
    assert missing_for(quantization="4bit", cuda=True, present={"bitsandbytes"}) == []
    assert missing_for(quantization="8bit", cuda=False, present={"bitsandbytes"}) == ["a CUDA device"]
    assert missing_for(device_map="auto", cuda=False, present=set()) == ["the accelerate package"]
    assert missing_for(backend="vllm", cuda=False, present=set()) == ["the vllm package", "a CUDA device"]
    assert missing_for(attn_implementation="sdpa", cuda=False, present=set()) == []


def test_device_map_and_target_device_together_are_an_error() -> None:
    assert "remove target_device" in problem(target_device_map="auto", target_device="cpu")


def test_validate_reports_a_gpu_option_on_this_machine_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from astra_core.cli import main

    if installed("bitsandbytes") and not NO_CUDA:
        pytest.skip("this machine can load 4-bit models")
    run = tmp_path / "run.toml"
    run.write_text(
        '[system]\nname = "transformers"\ndevice = "cuda"\nquantization = "4bit"\n[system.lora]\nr = 8\n',
        encoding="utf-8",
    )
    assert main(["validate", str(run)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "quantization='4bit' needs" in lines[0]


def test_the_scaling_docs_run_files_validate_on_a_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    import tomllib

    import astra_transformers.large_options as large_options

    docs = Path(__file__).resolve().parents[3] / "docs" / "scaling.md"
    blocks = [tomllib.loads(b) for b in re.findall(r"```toml\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)]
    systems = [b["system"] for b in blocks if isinstance(b.get("system"), dict) and "quantization" in str(b)]
    systems += [b["system"] for b in blocks if isinstance(b.get("system"), dict) and "target_device_map" in b["system"]]
    assert len(systems) >= 2
    # A machine with a GPU and every package: the options themselves must be right.
    monkeypatch.setattr(large_options, "missing_for", lambda **asked: [])
    for system in systems:
        TransformersOptions.model_validate({k: v for k, v in system.items() if k != "name"})
