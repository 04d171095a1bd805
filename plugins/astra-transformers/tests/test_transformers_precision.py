"""Precision and placement of the transformers system: per-role dtypes, bf16 autocast for the
tester, models on different devices, and device mix-ups reported with the devices named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from astra_core.errors import ConfigError
from astra_transformers.precision import DevicePlacementError, check_autocast, placement_guard
from astra_transformers.system import TransformersSystem

CONTEXTS = ["Hi Sam! How are you?", "What do you think about the weather?", "Oh,"]
CONTINUATIONS = [" I'm fine, thanks.", " It's so cold.", " shut up."]


def build(**options: object) -> TransformersSystem:
    return TransformersSystem(probe_tokens=8, response_tokens=8, **options)


def block(model: nn.Module, index: int) -> nn.Module:
    """One transformer block of a GPT-2 model."""
    return model.get_submodule(f"transformer.h.{index}")


def dtype_of(module: nn.Module) -> torch.dtype:
    (dtype,) = {p.dtype for p in module.parameters()}
    return dtype


@pytest.fixture(scope="module")
def plain() -> TransformersSystem:
    """float32 everywhere, no autocast; tests must not train it."""
    return build()


def test_each_role_takes_its_own_dtype_and_logprobs_stay_float32() -> None:
    system = build(tester_dtype="bfloat16")
    assert dtype_of(system.tester) == dtype_of(system.baseline) == torch.bfloat16  # a copy of the tester
    assert dtype_of(system.target) == torch.float32 and system.target is not system.baseline
    for values in (
        system.tester_logprobs(CONTEXTS, CONTINUATIONS),
        system.baseline_logprobs(CONTEXTS, CONTINUATIONS),
        system.target_logprobs(CONTEXTS, CONTINUATIONS),
    ):
        assert values.dtype == torch.float32 and bool(torch.isfinite(values).all())

    mixed = build(target_dtype="bfloat16", baseline_dtype="float16")
    assert dtype_of(mixed.tester) == torch.float32
    assert dtype_of(mixed.target) == torch.bfloat16 and dtype_of(mixed.baseline) == torch.float16


def test_bf16_autocast_runs_the_tester_and_returns_float32_logprobs_with_gradients(
    plain: TransformersSystem,
) -> None:
    system = build(autocast="bf16")
    exact = plain.tester_logprobs(CONTEXTS, CONTINUATIONS).detach()
    values = system.tester_logprobs(CONTEXTS, CONTINUATIONS)
    assert values.dtype == torch.float32 and values.requires_grad
    assert not torch.equal(values.detach(), exact)  # the matmuls ran in bfloat16
    torch.testing.assert_close(values.detach(), exact, atol=0.5, rtol=0.05)
    torch.autograd.backward(values.sum())
    grads = [p.grad for p in system.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)  # float32 weights, float32 grads
    # Autocast is the tester's: the frozen baseline computes exactly as without it.
    assert torch.equal(
        system.baseline_logprobs(CONTEXTS, CONTINUATIONS), plain.baseline_logprobs(CONTEXTS, CONTINUATIONS)
    )
    torch.manual_seed(0)
    assert len(system.rollout_tester(CONTEXTS)) == len(CONTEXTS)


def test_autocast_where_the_device_cannot_is_a_config_error_before_loading() -> None:
    with pytest.raises(ConfigError, match="not available on device 'meta'"):
        build(autocast="bf16", tester_device="meta")
    check_autocast(None, torch.device("meta"))  # no autocast asked: nothing to check
    check_autocast("bf16", torch.device("cpu"))


def test_roles_on_different_devices_load_separately_and_answer_on_the_testers_device(
    plain: TransformersSystem,
) -> None:
    # "cpu:0" is another torch.device than "cpu" (it compares unequal) on the same memory: the
    # placement logic runs as it would for two accelerators.
    pytest.importorskip("peft")
    system = build(target_device="cpu:0", lora={"r": 4}, baseline_device="cpu:0")
    assert system.target is system.baseline and system.baseline is not system.tester
    base = plain.baseline_logprobs(CONTEXTS, CONTINUATIONS)
    assert torch.equal(system.baseline_logprobs(CONTEXTS, CONTINUATIONS), base)
    assert torch.equal(system.target_logprobs(CONTEXTS, CONTINUATIONS), base)
    assert system.target_logprobs(CONTEXTS, CONTINUATIONS).device == torch.device("cpu")


def test_a_tensor_crossing_devices_in_the_tester_names_role_and_devices() -> None:
    system = build()
    block(system.tester, 1).to("meta")  # one block left behind on another device
    with pytest.raises(DevicePlacementError) as caught:
        system.tester_logprobs(CONTEXTS, CONTINUATIONS)
    message = str(caught.value)
    assert "tester model" in message and "inputs are on cpu" in message and "weights on cpu, meta" in message
    assert "tester_device" in message and "\n" not in message
    assert isinstance(caught.value, ConfigError)
    with pytest.raises(DevicePlacementError, match="tester model"):
        system.rollout_tester(CONTEXTS)


def test_a_tensor_crossing_devices_in_the_target_names_the_target() -> None:
    system = build()
    block(system.target, 0).to("meta")
    with pytest.raises(DevicePlacementError, match=r"the target \(also the baseline\) model.*target_device"):
        system.target_logprobs(CONTEXTS, CONTINUATIONS)


def test_placement_guard_converts_only_device_mismatches() -> None:
    module = nn.Linear(2, 2)
    cpu = torch.device("cpu")
    mismatch = r"the baseline model.*baseline_device"
    with pytest.raises(DevicePlacementError, match=mismatch), placement_guard("baseline", cpu, module):
        _ = torch.ones(2) + torch.ones(2, device="meta")
    with pytest.raises(RuntimeError, match="boom") as caught, placement_guard("baseline", cpu, module):
        raise RuntimeError("boom")
    assert not isinstance(caught.value, DevicePlacementError)
