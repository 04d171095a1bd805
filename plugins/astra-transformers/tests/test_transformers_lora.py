"""LoRA testers on the embedded tiny model: adapter-only training, the adapter-off baseline,
saving and loading adapters, and a DPO run through `astra train` that resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from astra_core.errors import AstraError, ConfigError
from astra_transformers import TINY_MODEL_DIR
from astra_transformers.lora import parameter_bytes
from astra_transformers.system import TransformersSystem

pytest.importorskip("peft")

CONTEXTS = ["Hi Sam! How are you?", "What do you think about the weather?", "Oh,"]
CONTINUATIONS = [" I'm fine, thanks.", " It's so cold.", " shut up."]


def lora_system(lora: dict[str, object] | None = None, **options: object) -> TransformersSystem:
    return TransformersSystem(probe_tokens=8, response_tokens=8, lora=lora or {"r": 4}, **options)


def train_a_little(system: TransformersSystem, steps: int = 3) -> None:
    """Raise the tester's log-prob of the continuations with plain SGD."""
    optimizer = torch.optim.SGD(list(system.parameters()), lr=0.05)
    for _ in range(steps):
        loss = -system.tester_logprobs(CONTEXTS, CONTINUATIONS, "mean").sum()
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()


@pytest.fixture(scope="module")
def plain() -> TransformersSystem:
    """The same system without LoRA: its tester is the base model; tests must not train it."""
    return TransformersSystem(probe_tokens=8, response_tokens=8)


def test_parameters_are_the_adapter_only_and_only_they_get_gradients() -> None:
    system = lora_system()
    adapter = list(system.parameters())
    names = {id(p): name for name, p in system.tester.named_parameters()}
    assert adapter and all("lora_" in names[id(p)] for p in adapter)
    assert len(adapter) == 2 * system.tester.config.n_layer  # A and B of each layer's c_attn
    loss = -system.tester_logprobs(CONTEXTS, CONTINUATIONS).sum()
    torch.autograd.backward(loss)
    assert all(p.grad is not None for p in adapter)
    assert any(bool(p.grad.abs().sum() > 0) for p in adapter if p.grad is not None)
    frozen = [p for p in system.tester.parameters() if id(p) not in {id(q) for q in adapter}]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)


def test_parameter_order_is_stable_across_builds() -> None:
    names = [[n for n, p in s.tester.named_parameters() if p.requires_grad] for s in (lora_system(), lora_system())]
    order = [n for n, p in lora_system().tester.named_parameters() if p.requires_grad]
    assert names[0] == names[1] == order


def test_baseline_is_the_base_model_before_and_after_training(plain: TransformersSystem) -> None:
    system = lora_system()
    base = plain.tester_logprobs(CONTEXTS, CONTINUATIONS).detach()
    assert torch.equal(system.baseline_logprobs(CONTEXTS, CONTINUATIONS), base)
    assert torch.equal(system.tester_logprobs(CONTEXTS, CONTINUATIONS).detach(), base)  # B starts at zero
    train_a_little(system)
    trained = system.tester_logprobs(CONTEXTS, CONTINUATIONS).detach()
    assert not torch.allclose(trained, base)
    assert torch.equal(system.baseline_logprobs(CONTEXTS, CONTINUATIONS), base)
    assert torch.equal(system.target_logprobs(CONTEXTS, CONTINUATIONS), base)


def test_baseline_and_target_share_the_tester_weights_no_copy(plain: TransformersSystem) -> None:
    system = lora_system()
    assert system.baseline is system.tester and system.target is system.tester
    held = parameter_bytes(system.tester, system.baseline, system.target)
    full = parameter_bytes(plain.tester, plain.baseline, plain.target)
    base = parameter_bytes(plain.tester)
    assert full == 2 * base  # a full tester keeps a frozen copy of its starting weights
    assert held == base + parameter_bytes(system.tester, trainable_only=True)
    assert held < 0.6 * full
    named = lora_system(baseline="tiny", target="tiny")  # naming the base model explicitly: still no copy
    assert named.baseline is named.tester and named.target is named.tester


def test_target_generates_from_the_base_model_while_the_tester_trains(plain: TransformersSystem) -> None:
    system = lora_system(top_k=1)  # greedy: the same tokens for the same weights
    train_a_little(system)
    greedy = TransformersSystem(probe_tokens=8, response_tokens=8, top_k=1)
    assert system.rollout_target(CONTEXTS) == greedy.rollout_target(CONTEXTS)
    assert system.rollout_tester(CONTEXTS) != greedy.rollout_tester(CONTEXTS)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft calling transformers
def test_saved_adapter_loads_with_peft_and_as_the_tester(tmp_path: Path, plain: TransformersSystem) -> None:
    from peft import PeftModel

    system = lora_system()
    train_a_little(system)
    system.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    assert not (tmp_path / "model.safetensors").exists()  # the adapter only, not the base weights
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    expected = system.tester_logprobs(CONTEXTS, CONTINUATIONS).detach()

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(TINY_MODEL_DIR)), str(tmp_path))
    ids = system.tokenizer(CONTEXTS[0] + CONTINUATIONS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        theirs = peft_model(ids).logits
        ours = system.tester(ids).logits
    torch.testing.assert_close(theirs, ours)

    reloaded = TransformersSystem(tester=str(tmp_path), probe_tokens=8, response_tokens=8)
    assert reloaded.lora is not None
    torch.testing.assert_close(reloaded.tester_logprobs(CONTEXTS, CONTINUATIONS).detach(), expected)
    base = plain.tester_logprobs(CONTEXTS, CONTINUATIONS).detach()
    assert torch.equal(reloaded.baseline_logprobs(CONTEXTS, CONTINUATIONS), base)
    assert all(p.requires_grad for p in reloaded.parameters()) and len(list(reloaded.parameters())) == 8


def test_an_adapter_directory_with_lora_options_or_as_target_is_a_config_error(tmp_path: Path) -> None:
    lora_system().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="remove the lora options"):
        TransformersSystem(tester=str(tmp_path), lora={"r": 2})
    with pytest.raises(ConfigError, match="only `tester` may name"):
        TransformersSystem(target=str(tmp_path))


def test_unknown_target_modules_are_a_config_error() -> None:
    with pytest.raises(AstraError, match="target_modules"):
        TransformersSystem(lora={"target_modules": ["no_such_layer"]})


def test_adapter_dropout_applies_to_training_forwards_only() -> None:
    system = TransformersSystem(probe_tokens=8, response_tokens=8, lora={"r": 4, "dropout": 0.5})
    with torch.no_grad():
        for p in system.parameters():
            p.normal_(std=0.5)  # a non-zero adapter, so dropping its input changes the output
        evaluations = [system.tester_logprobs(CONTEXTS, CONTINUATIONS) for _ in range(2)]
    assert torch.equal(evaluations[0], evaluations[1])
    torch.manual_seed(0)
    trained = [system.tester_logprobs(CONTEXTS, CONTINUATIONS).detach() for _ in range(2)]
    assert not torch.equal(trained[0], trained[1])
    assert not any(m.training for m in system.tester.modules())  # dropout switched back off


# --- a DPO run through the CLI ---------------------------------------------------------------

LORA_RUN = """\
scorer = "toy"
algorithm = "dpo"
evaluator = "ast"

[system]
name = "transformers"
probe_tokens = 6
response_tokens = 6

[system.lora]
r = 4
alpha = 8

[sampler]
name = "ast"
tree_width = 2
tree_depth = 2

[training]
training_steps = 4
num_episodes_per_experience = 2
batch_size = 4
lr = 0.01
checkpoint_every = 2
seed = 3
"""


def _cli(*argv: str | Path) -> int:
    from astra_core.cli import main

    return main([str(a) for a in argv])


def test_lora_dpo_run_resumes_to_the_same_adapter_and_evaluate_loads_it(tmp_path: Path) -> None:
    from astra_core import checkpoint as ckpt
    from astra_core.plugins import load_plugins
    from astra_core.trainer import trainable_parameters

    registries = load_plugins().registries
    if "ast" not in registries.kind("sampler") or "dpo" not in registries.kind("algorithm"):
        pytest.skip("the astra-ast and astra-algorithms plugins are not installed")
    run_file = tmp_path / "lora.toml"
    run_file.write_text(LORA_RUN, encoding="utf-8")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _cli("train", run_file, "--output", straight) == 0
    assert _cli("train", run_file, "--output", split, "--steps", "2") == 0
    assert _cli("train", "--resume", split, "--steps", "4") == 0

    final = "checkpoints/step-00000004/weights.safetensors"
    a, b = load_file(str(straight / final)), load_file(str(split / final))
    base = load_file(str(straight / "checkpoints/step-00000002/weights.safetensors"))
    assert len(a) == 8 and a.keys() == b.keys()  # the adapter's A and B per layer, nothing else
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], base[k]) for k in a)  # training moved the adapter
    assert (straight / "tester" / "adapter_config.json").is_file()  # the final tester: its adapter

    assert _cli("evaluate", straight, "--num-prompts", "1") == 0
    assert json.loads((straight / "eval" / "evaluation.json").read_text())["step"] == 4

    # What `astra evaluate` does: copy a checkpoint by index into the trainable parameters.
    system = lora_system({"r": 4, "alpha": 8})
    checkpoint = straight / "checkpoints" / "step-00000004"
    ckpt.load_weights(checkpoint, trainable_parameters(system.parameters()))
    assert all(torch.equal(p.detach(), a[f"param.{i:05d}"]) for i, p in enumerate(system.parameters()))
