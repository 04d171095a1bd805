"""Prompt sets: the bundled neutral openers and loaders for the user's own files.

A prompt spec is ``"builtin:train"``, ``"builtin:dev"``, ``"builtin:test"`` or a path to a
``.txt`` (one prompt per line), ``.json`` (a list of strings, or of objects holding the prompt
under `key`), ``.jsonl`` (one string or object per line) or ``.csv`` (the column `key`, with a
header row) file. Blank entries are dropped. Every problem with a file is a `ConfigError` that
names the file and says how to fix it.

>>> len(load_prompts("builtin:test")) >= 30
True
"""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

from astra_core.errors import ConfigError

BUILTIN_SPLITS = ("train", "dev", "test")
FORMATS = (".txt", ".json", ".jsonl", ".csv")
MAX_PROMPT_FILE_BYTES = 50 * 1024 * 1024
BUILTIN_PREFIX = "builtin:"


def load_prompts(spec: str, key: str = "prompt") -> list[str]:
    """The prompts named by `spec` (a builtin split or a file path), in file order.

    `key` names the object key (json, jsonl) or the column (csv) that holds each prompt.
    """
    if spec.startswith(BUILTIN_PREFIX):
        return load_builtin(spec.removeprefix(BUILTIN_PREFIX))
    return load_prompt_file(spec, key)


def load_builtin(split: str) -> list[str]:
    """One of the bundled prompt sets: ``"train"``, ``"dev"`` or ``"test"``."""
    if split not in BUILTIN_SPLITS:
        names = ", ".join(BUILTIN_PREFIX + s for s in BUILTIN_SPLITS)
        raise ConfigError(f"unknown built-in prompt set {BUILTIN_PREFIX}{split}; use one of {names} or a file path")
    text = resources.files("astra_ast").joinpath("prompts", f"{split}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_prompt_file(path: str | Path, key: str = "prompt") -> list[str]:
    """Read prompts from a .txt, .json, .jsonl or .csv file (see the module doc for the formats)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"prompt file {path}: unsupported extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(FORMATS)} or a builtin:<split> prompt set"
        )
    text = _read_text(path)
    if suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines()]
    elif suffix == ".json":
        prompts = _from_json(path, text, key)
    elif suffix == ".jsonl":
        prompts = _from_jsonl(path, text, key)
    else:
        prompts = _from_csv(path, text, key)
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ConfigError(f"prompt file {path} holds no prompts; add at least one non-blank prompt")
    return prompts


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"prompt file {path} does not exist; check the path (relative paths start at the run's cwd)")
    if not path.is_file():
        raise ConfigError(f"prompt file {path} is not a regular file; give the path of a prompt file")
    try:
        size = path.stat().st_size
        if size > MAX_PROMPT_FILE_BYTES:
            raise ConfigError(
                f"prompt file {path} is {size} bytes, over the {MAX_PROMPT_FILE_BYTES}-byte limit; "
                f"split it or keep a sample of it"
            )
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"prompt file {path} cannot be read ({error.strerror}); check its permissions") from None
    if not data.strip():
        raise ConfigError(f"prompt file {path} is empty; add at least one prompt")
    if b"\x00" in data:
        raise ConfigError(f"prompt file {path} looks binary (it holds NUL bytes); give a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"prompt file {path} is not UTF-8 (bad byte at offset {error.start}); re-save it as UTF-8"
        ) from None


def _entry(path: Path, item: Any, key: str, where: str) -> str:
    if isinstance(item, str):
        return item.strip()
    if isinstance(item, dict):
        if key not in item:
            found = ", ".join(sorted(map(str, item))) or "none"
            raise ConfigError(
                f"prompt file {path}: {where} has no key {key!r} (keys: {found}); set prompt_key to the right key"
            )
        value = item[key]
        if not isinstance(value, str):
            raise ConfigError(f"prompt file {path}: {where} {key!r} is {type(value).__name__}, not a string")
        return value.strip()
    raise ConfigError(f"prompt file {path}: {where} is {type(item).__name__}; expected a string or an object")


def _from_json(path: Path, text: str, key: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"prompt file {path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(data, list):
        raise ConfigError(
            f"prompt file {path}: expected a JSON list of strings or objects, got {type(data).__name__}"
        )
    return [_entry(path, item, key, f"item {index}") for index, item in enumerate(data)]


def _from_jsonl(path: Path, text: str, key: str) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"prompt file {path}: invalid JSON on line {number}: {error.msg}") from None
        prompts.append(_entry(path, item, key, f"line {number}"))
    return prompts


def _from_csv(path: Path, text: str, key: str) -> list[str]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = reader.fieldnames or []
        if key not in columns:
            found = ", ".join(columns) or "none"
            raise ConfigError(
                f"prompt file {path}: no column {key!r} in the header (columns: {found}); "
                f"set prompt_key to the prompt column"
            )
        return [(row.get(key) or "").strip() for row in reader]
    except csv.Error as error:
        raise ConfigError(f"prompt file {path}: malformed CSV: {error}") from None
