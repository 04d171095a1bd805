"""Loading, saving, registration and the embedded model of astra-transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from astra_core.errors import AstraError, ComponentBuildError, ConfigError, OptionsError
from astra_core.plugins import discover
from astra_core.testing.toy import ToyScorer
from astra_transformers import TINY_MODEL_DIR
from astra_transformers.system import TransformersSystem

REGISTRATION_PROBE = """
import sys
from astra_core.plugins import discover
registries = discover().registries
info = registries.get("system", "hf")
assert info is registries.get("system", "transformers"), "alias and name differ"
info.validate({"model": "tiny", "probe_tokens": 8, "dtype": "bfloat16"})
heavy = sorted(m for m in ("torch", "transformers", "tokenizers") if m in sys.modules)
print("heavy:", ",".join(heavy) or "none")
"""


def test_registration_and_option_validation_import_neither_torch_nor_transformers() -> None:
    env = {**os.environ, "ASTRA_PLUGINS": "transformers", "ASTRA_STRICT_PLUGINS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", REGISTRATION_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "heavy: none"


def test_the_registered_system_builds_from_a_config() -> None:
    info = discover().registries.get("system", "hf")
    system = info.build(options={"probe_tokens": 4, "temperature": 0.7})
    assert isinstance(system, TransformersSystem)
    assert system.options.probe_tokens == 4 and system.options.temperature == 0.7
    assert len(system.rollout_tester(["Hello."])) == 1


def test_bad_options_are_rejected_with_the_field_named() -> None:
    info = discover().registries.get("system", "transformers")
    with pytest.raises(OptionsError, match="top_p"):
        info.validate({"top_p": 1.5})
    with pytest.raises(OptionsError, match="unknown option 'modle'"):
        info.validate({"modle": "gpt2"})
    with pytest.raises(OptionsError, match="dtype"):
        TransformersSystem(dtype="float64")


def test_a_missing_model_path_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ConfigError, match="such-model"):
        TransformersSystem(model=str(missing))
    with pytest.raises(ConfigError, match=r"config\.json"):
        TransformersSystem(target=str(tmp_path))  # exists, but is no model directory


def test_an_unloadable_model_is_a_build_error_naming_it() -> None:
    with pytest.raises(ComponentBuildError, match="astra-no-such-model-xyz"):
        TransformersSystem(model="astra-no-such-model-xyz")  # offline: the hub is not asked


def test_the_registry_passes_model_errors_through_as_astra_errors(tmp_path: Path) -> None:
    info = discover().registries.get("system", "transformers")
    with pytest.raises(AstraError, match="missing-dir"):
        info.build(ToyScorer(), options={"model": str(tmp_path / "missing-dir")})


def test_a_context_budget_larger_than_the_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_context_tokens"):
        TransformersSystem(max_context_tokens=250, probe_tokens=24)


def test_save_pretrained_round_trips_through_plain_transformers(tmp_path: Path) -> None:
    system = TransformersSystem(probe_tokens=4)
    with torch.no_grad():  # make the tester differ from the shipped weights
        system.tester.transformer.wte.weight[5] += 1.0
    system.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = "Hey, what are you doing tonight?"
    input_ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    assert input_ids.tolist() == [system.tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        assert torch.allclose(model(input_ids).logits, system.tester(input_ids).logits, atol=1e-6)
    reloaded = TransformersSystem(model=str(tmp_path))
    assert torch.equal(reloaded.tester.transformer.wte.weight, system.tester.transformer.wte.weight)


def test_target_and_baseline_are_separate_only_when_their_sources_differ(tmp_path: Path) -> None:
    shared = TransformersSystem(baseline="tiny", target="tiny")
    assert shared.target is shared.baseline and shared.baseline is not shared.tester
    TransformersSystem().save_pretrained(tmp_path)
    separate = TransformersSystem(target=str(tmp_path))
    assert separate.target is not separate.baseline
    assert not any(p.requires_grad for p in separate.target.parameters())


def test_bfloat16_models_give_float32_logprobs() -> None:
    system = TransformersSystem(dtype="bfloat16", probe_tokens=4)
    assert system.tester.dtype == torch.bfloat16
    values = system.tester_logprobs(["Hi."], [" Hello there."])
    assert values.dtype == torch.float32 and torch.isfinite(values).all()


def test_the_embedded_model_is_a_small_gpt2_with_a_fast_tokenizer() -> None:
    files = {path.name for path in TINY_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    size = sum(path.stat().st_size for path in TINY_MODEL_DIR.iterdir())
    assert size < 8 * 2**20
    config = json.loads((TINY_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_positions"] == 256
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR)
    parameters = sum(p.numel() for p in model.parameters())
    assert 500_000 < parameters < 2_000_000
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    assert tokenizer.is_fast
    text = "Damn, this traffic sucks."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_the_embedded_model_writes_word_like_text() -> None:
    system = TransformersSystem(probe_tokens=24)
    torch.manual_seed(0)
    texts = system.rollout_tester(["Hey, how are you?", "What do you think about the news?"] * 4)
    words = [word.strip(".,!?'\"").lower() for text in texts for word in text.split()]
    corpus_words = {"i", "you", "the", "a", "to", "it", "is", "that", "and", "my", "what", "so", "this", "i'm"}
    assert len(words) > 40
    assert sum(word in corpus_words for word in words) / len(words) > 0.15


def test_the_system_passes_the_core_conformance_check() -> None:
    from astra_core.testing import check_system

    system = TransformersSystem(probe_tokens=4, response_tokens=4)
    check_system(system, ["Hi Sam! How are you?", "Oh,", ""], [" I'm fine.", " shut up.", " Hello"])


def test_the_docs_python_examples_run() -> None:
    page = Path(__file__).resolve().parents[3] / "docs" / "transformers.md"
    blocks = [block.split("```", 1)[0] for block in page.read_text().split("```python\n")[1:]]
    assert blocks
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})
