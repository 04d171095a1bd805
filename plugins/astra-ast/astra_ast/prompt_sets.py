"""Prompt sets: the bundled neutral openers and loaders for the user's own files.

A prompt spec is ``"builtin:train"``, ``"builtin:dev"``, ``"builtin:test"`` or a path to a
``.txt`` (one prompt per line), ``.json`` (a list of strings, or of objects holding the prompt
under `key`), ``.jsonl`` (one string or object per line) or ``.csv`` (the column `key`, with a
header row) file. With the ``datasets`` extra (``pip install 'astra-ast[datasets]'``) it may also
be a ``.parquet`` file or a directory written by Hugging Face ``datasets``' ``save_to_disk``
(the column `key`), or ``"hf:<dataset id>"`` / ``"hf:<dataset id>:<split>"`` (split ``train`` by
default), loaded from the hub where the network is reachable. Blank entries are dropped. Every
problem with a file is a `ConfigError` that names the file and says how to fix it.

>>> len(load_prompts("builtin:test")) >= 30
True
"""

from __future__ import annotations

import csv
import importlib
import io
import json
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from astra_core.errors import ConfigError

BUILTIN_SPLITS = ("train", "dev", "test")
FORMATS = (".txt", ".json", ".jsonl", ".csv", ".parquet")
MAX_PROMPT_FILE_BYTES = 50 * 1024 * 1024
BUILTIN_PREFIX = "builtin:"
HUB_PREFIX = "hf:"
_EXTRA = "pip install 'astra-ast[datasets]'"


def load_prompts(spec: str, key: str = "prompt") -> list[str]:
    """The prompts named by `spec` (a builtin split or a file path), in file order.

    `key` names the object key (json, jsonl) or the column (csv) that holds each prompt.
    """
    if spec.startswith(BUILTIN_PREFIX):
        return load_builtin(spec.removeprefix(BUILTIN_PREFIX))
    if spec.startswith(HUB_PREFIX):
        return load_hub_dataset(spec.removeprefix(HUB_PREFIX), key)
    if Path(spec).is_dir() and Path(spec).suffix.lower() not in FORMATS:
        return load_dataset_directory(spec, key)
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
    if suffix == ".parquet":
        return _nonblank(path, _from_parquet(path, key))
    text = _read_text(path)
    if suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines()]
    elif suffix == ".json":
        prompts = _from_json(path, text, key)
    elif suffix == ".jsonl":
        prompts = _from_jsonl(path, text, key)
    else:
        prompts = _from_csv(path, text, key)
    return _nonblank(path, prompts)


def _nonblank(where: str | Path, prompts: list[str]) -> list[str]:
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ConfigError(f"prompt file {where} holds no prompts; add at least one non-blank prompt")
    return prompts


def _column(where: str | Path, columns: Sequence[str], values: Callable[[], list[Any]], key: str) -> list[str]:
    if key not in columns:
        raise ConfigError(
            f"prompt set {where}: no column {key!r} (columns: {', '.join(columns) or 'none'}); "
            f"set prompt_key to the prompt column"
        )
    prompts = []
    for index, value in enumerate(values()):
        if value is None:
            continue
        if not isinstance(value, str):
            raise ConfigError(f"prompt set {where}: row {index} {key!r} is {type(value).__name__}, not a string")
        prompts.append(value.strip())
    return prompts


def _from_parquet(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist; check the path (relative paths start at the run's cwd)")
    try:
        pq: Any = importlib.import_module("pyarrow.parquet")  # untyped; comes with the datasets extra
    except ImportError:
        raise ConfigError(f"prompt file {path}: reading parquet needs the datasets extra: {_EXTRA}") from None
    try:
        schema = pq.read_schema(path)
        return _column(path, schema.names, lambda: pq.read_table(path, columns=[key]).column(key).to_pylist(), key)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"prompt file {path} is not a readable parquet file ({error})") from None


def _datasets() -> Any:
    try:
        datasets: Any = importlib.import_module("datasets")  # untyped
    except ImportError:
        return None
    datasets.disable_progress_bars()
    return datasets


def load_dataset_directory(path: str | Path, key: str = "prompt") -> list[str]:
    """The column `key` of a directory written by ``Dataset.save_to_disk`` (a ``DatasetDict``'s
    directory works when it holds one split; otherwise name the split's subdirectory)."""
    path = Path(path)
    datasets = _datasets()
    if datasets is None:
        raise ConfigError(f"prompt set {path} is a directory; reading a datasets directory needs {_EXTRA}")
    if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise ConfigError(
            f"prompt set {path} is a directory but not one written by datasets' save_to_disk "
            f"(no state.json or dataset_dict.json); give a prompt file or such a directory"
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # any failure of the library is reported against the path
        raise ConfigError(f"prompt set {path}: datasets cannot load it ({type(error).__name__}: {error})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if len(splits) != 1:
            raise ConfigError(
                f"prompt set {path} holds the splits {', '.join(splits)}; give one split's directory, "
                f"e.g. {path / splits[0]}"
            )
        loaded = loaded[splits[0]]
    return _nonblank(path, _column(path, list(loaded.column_names), lambda: list(loaded[key]), key))


def load_hub_dataset(name: str, key: str = "prompt") -> list[str]:
    """The column `key` of the hub dataset `name` (``"owner/id"`` or ``"owner/id:split"``), which
    needs the network (or the datasets cache); failing that, a one-line `ConfigError`."""
    dataset_id, _, split = name.partition(":")
    split = split or "train"
    where = f"{HUB_PREFIX}{dataset_id}:{split}"
    if not dataset_id:
        raise ConfigError(f"prompt set {HUB_PREFIX}{name}: give a dataset id, e.g. hf:owner/name or hf:owner/name:test")
    datasets = _datasets()
    if datasets is None:
        raise ConfigError(f"prompt set {where}: loading from the hub needs {_EXTRA}")
    try:
        loaded = datasets.load_dataset(dataset_id, split=split)
    except Exception as error:  # offline, unknown id, unknown split: one line, not a traceback
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(
            f"prompt set {where} cannot be loaded ({type(error).__name__}: {first[:200]}); without the network, "
            f"save it as a parquet file or with save_to_disk and give that path"
        ) from None
    return _nonblank(where, _column(where, list(loaded.column_names), lambda: list(loaded[key]), key))


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
        raise ConfigError(f"prompt file {path}: expected a JSON list of strings or objects, got {type(data).__name__}")
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
