"""The README's promises: its Python example runs, and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_python_example_trains(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("astra_algorithms")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has no Python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    history = namespace["history"]
    assert isinstance(history, list) and len(history) == 20
    assert all("reward/mean" in step for step in history)


def test_the_readme_names_two_setup_scripts_that_exist() -> None:
    for script in ("scripts/train.sh", "scripts/test.sh"):
        assert f"bash {script}" in README
        assert (ROOT / script).is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_every_docs_page_the_readme_links_exists() -> None:
    for link in re.findall(r"\]\((docs/[^)]+)\)", README):
        assert (ROOT / link).is_file(), link


@pytest.mark.parametrize("run_file", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_run_file_validates(run_file: Path) -> None:
    pytest.importorskip("astra_ast")
    from astra_core.build import resolve
    from astra_core.config import load_run_file

    resolved = resolve(load_run_file(run_file))
    assert {"scorer", "system", "sampler", "algorithm"} <= set(resolved.components)
