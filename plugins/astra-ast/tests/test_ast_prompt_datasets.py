"""Prompt sets kept the Hugging Face way: parquet files, save_to_disk directories, hub ids."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from astra_ast.prompt_sets import load_prompts
from astra_core.errors import ConfigError

datasets = pytest.importorskip("datasets", reason="the datasets extra: pip install 'astra-ast[datasets]'")

ROWS = {"prompt": ["How was your day?", "  ", "Any plans for the weekend?"], "id": [1, 2, 3]}


def test_a_parquet_file_reads_its_prompt_column(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    datasets.Dataset.from_dict(ROWS).to_parquet(str(path))
    assert load_prompts(str(path)) == ["How was your day?", "Any plans for the weekend?"]


def test_a_parquet_file_without_the_column_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    datasets.Dataset.from_dict(ROWS).to_parquet(str(path))
    with pytest.raises(ConfigError, match=r"no column 'text' \(columns: prompt, id\); set prompt_key"):
        load_prompts(str(path), key="text")


def test_a_non_string_column_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    datasets.Dataset.from_dict(ROWS).to_parquet(str(path))
    with pytest.raises(ConfigError, match="row 0 'id' is int, not a string"):
        load_prompts(str(path), key="id")


def test_a_save_to_disk_directory_reads_its_prompt_column(tmp_path: Path) -> None:
    datasets.Dataset.from_dict(ROWS).save_to_disk(str(tmp_path / "set"))
    assert load_prompts(str(tmp_path / "set")) == ["How was your day?", "Any plans for the weekend?"]


def test_a_dataset_dict_directory_needs_one_split(tmp_path: Path) -> None:
    split = datasets.Dataset.from_dict(ROWS)
    datasets.DatasetDict({"train": split}).save_to_disk(str(tmp_path / "one"))
    assert len(load_prompts(str(tmp_path / "one"))) == 2
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ConfigError, match="holds the splits train, test; give one split's directory"):
        load_prompts(str(tmp_path / "two"))
    assert len(load_prompts(str(tmp_path / "two" / "test"))) == 2


def test_a_directory_that_is_not_a_dataset_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not one written by datasets' save_to_disk"):
        load_prompts(str(tmp_path))


def test_a_hub_id_offline_fails_with_one_line(tmp_path: Path) -> None:
    # A fresh process: the offline switch must be set before datasets is imported.
    code = (
        "from astra_ast.prompt_sets import load_prompts\n"
        "from astra_core.errors import ConfigError\n"
        "try:\n    load_prompts('hf:astra-nobody/no-such-prompts:test')\n"
        "except ConfigError as error:\n    print(error)\n"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith("prompt set hf:astra-nobody/no-such-prompts:test cannot be loaded")
    assert "save it as a parquet file or with save_to_disk" in lines[0]
