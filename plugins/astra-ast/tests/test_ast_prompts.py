"""Prompt sets: the bundled splits, every file format, and every file error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from astra_ast import prompt_sets
from astra_ast.prompt_sets import load_builtin, load_prompt_file, load_prompts
from astra_core.errors import ConfigError


def test_builtin_splits_are_large_disjoint_and_clean() -> None:
    splits = {name: load_builtin(name) for name in ("train", "dev", "test")}
    assert len(splits["train"]) >= 240 and len(splits["dev"]) >= 30 and len(splits["test"]) >= 30
    every = [p for prompts in splits.values() for p in prompts]
    assert len(every) >= 300
    assert len(set(every)) == len(every)
    assert all(p == p.strip() and p for p in every)


def test_builtin_specs_name_the_splits() -> None:
    assert load_prompts("builtin:dev") == load_builtin("dev")


def test_unknown_builtin_split_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"builtin:validation.*builtin:train, builtin:dev, builtin:test"):
        load_prompts("builtin:validation")


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_txt_is_one_prompt_per_line_skipping_blanks(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.txt", "  first prompt \n\n second\n   \n")
    assert load_prompts(path) == ["first prompt", "second"]


def test_json_list_of_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", json.dumps(["one", " two ", ""]))
    assert load_prompts(path) == ["one", "two"]


def test_json_list_of_objects_uses_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", json.dumps([{"text": "one", "id": 1}, {"text": "two"}]))
    assert load_prompts(path, key="text") == ["one", "two"]


def test_jsonl_of_strings_and_objects(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", '{"prompt": "one"}\n\n"two"\n{"prompt": "three", "x": 0}\n')
    assert load_prompts(path) == ["one", "two", "three"]


def test_csv_column_is_configurable(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", 'id,opener\n1,"hello, there"\n2,nice day\n3,\n')
    assert load_prompts(path, key="opener") == ["hello, there", "nice day"]


def test_utf8_with_bom_and_non_ascii_text_reads(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffcafé au lait?\n".encode())
    assert load_prompt_file(path) == ["café au lait?"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b"  \n\n \n", "is empty"),
        ("blank.json", b'["", "  "]', "holds no prompts"),
        ("binary.txt", b"abc\x00\x01\x02", "looks binary"),
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), "not UTF-8.*re-save it as UTF-8"),
        ("bad.json", b"[1, 2", "invalid JSON"),
        ("dict.json", b'{"prompt": "x"}', "expected a JSON list"),
        ("numbers.json", b"[1, 2]", "item 0 is int"),
        ("nokey.json", b'[{"text": "x"}]', "no key 'prompt' .*keys: text.*set prompt_key"),
        ("nonstring.jsonl", b'{"prompt": 3}\n', "line 1 'prompt' is int"),
        ("badline.jsonl", b'"ok"\n{oops\n', "invalid JSON on line 2"),
        ("nocolumn.csv", b"id,text\n1,x\n", "no column 'prompt' .*columns: id, text.*set prompt_key"),
        ("prompts.parquet", b"PAR1", "not a readable parquet file|parquet needs the datasets extra"),
        ("prompts", b"x", "unsupported extension '\\(none\\)'"),
    ],
)
def test_bad_files_are_config_errors_naming_the_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as error:
        load_prompts(str(path))
    assert str(path) in str(error.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.txt does not exist"):
        load_prompts(str(tmp_path / "nope.txt"))


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"not a regular file"):
        load_prompts(str(folder))


def test_an_oversized_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt_sets, "MAX_PROMPT_FILE_BYTES", 10)
    path = _write(tmp_path / "big.txt", "a prompt that is longer than ten bytes\n")
    with pytest.raises(ConfigError, match=r"over the 10-byte limit"):
        load_prompts(path)


def test_the_default_size_bound_is_50_mb() -> None:
    assert prompt_sets.MAX_PROMPT_FILE_BYTES == 50 * 1024 * 1024


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("x\n", encoding="utf-8")
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match=r"cannot be read.*permissions"):
            load_prompts(str(path))
    finally:
        path.chmod(0o600)


def test_a_read_failure_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file, so a permission failure is simulated at the read call itself.
    path = tmp_path / "locked.txt"
    path.write_text("x\n", encoding="utf-8")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError, match=r"locked.txt cannot be read \(Permission denied\); check its permissions"):
        load_prompts(str(path))
