"""`mypy --strict` accepts components that match the protocols and rejects ones that do not.

Each file in ``cases/`` is a snippet: ``pass_*.py`` must type-check cleanly; ``fail_*.py`` starts
with ``# expect: <error code>`` and ``# expect-message: <fragment>`` and must produce that error
and no other. One mypy run (the repo's pyproject config, a cache in the temp dir) checks every case;
its report is grouped by file.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parent / "cases"
PASS = sorted(CASES.glob("pass_*.py"))
FAIL = sorted(CASES.glob("fail_*.py"))
EXAMPLE_PLUGIN = ROOT / "examples" / "astra-example-plugin"

# Snippets that state a contract the core does not meet yet; strict, so fixing the core makes
# the test fail until the entry is removed.
KNOWN_GAPS: dict[str, str] = {}

_LINE = re.compile(
    r"^(?P<path>[^:]+\.py):(?P<line>\d+): (?P<severity>error|note): (?P<message>.*?)(?:  \[(?P<code>[a-z-]+)\])?$"
)


@dataclass(frozen=True)
class Diagnostic:
    """One mypy error: its line, message and error code."""

    line: int
    message: str
    code: str


@pytest.fixture(scope="session")
def mypy_errors() -> dict[str, list[Diagnostic]]:
    """Every case checked in one mypy run; errors by case file name."""
    from mypy import api
    from mypy import version as mypy_version

    # A cache in the system's temp dir, one per checkout: the first run checks torch's stubs (about
    # half a minute), later runs only what changed.
    digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"astra-core-mypy-{mypy_version.__version__}-{digest}"
    # Find the example plugin even where it was installed through an import hook mypy cannot follow.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MYPYPATH", str(EXAMPLE_PLUGIN))
        patch.chdir(ROOT)
        stdout, stderr, status = api.run(
            [
                "--config-file",
                str(ROOT / "pyproject.toml"),
                "--cache-dir",
                str(cache),
                "--no-error-summary",
                "--hide-error-context",
                "--no-pretty",
                *(str(path.relative_to(ROOT)) for path in [*PASS, *FAIL]),
            ]
        )
    assert status in (0, 1), f"mypy crashed (status {status}):\n{stdout}\n{stderr}"
    errors: dict[str, list[Diagnostic]] = {path.name: [] for path in [*PASS, *FAIL]}
    for line in stdout.splitlines():
        match = _LINE.match(line)
        if match and match["severity"] == "error":
            errors.setdefault(Path(match["path"]).name, []).append(
                Diagnostic(int(match["line"]), match["message"], match["code"] or "")
            )
        elif line.strip() and not match:
            raise AssertionError(f"unparsed mypy output: {line!r}")
    return errors


def _expectation(path: Path) -> tuple[str, str]:
    code = message = ""
    for line in path.read_text(encoding="utf-8").splitlines()[:5]:
        if line.startswith("# expect: "):
            code = line.removeprefix("# expect: ").strip()
        elif line.startswith("# expect-message: "):
            message = line.removeprefix("# expect-message: ").strip()
    return code, message


def _describe(errors: list[Diagnostic]) -> str:
    return "\n".join(f"  line {e.line}: {e.message} [{e.code}]" for e in errors) or "  (none)"


def _ids(paths: list[Path]) -> Iterator[str]:
    return (path.stem for path in paths)


def test_there_are_cases_of_both_kinds() -> None:
    assert len(PASS) >= 3
    assert len(FAIL) >= 5


@pytest.mark.parametrize("path", FAIL, ids=list(_ids(FAIL)))
def test_fail_case_declares_its_expected_error(path: Path) -> None:
    code, message = _expectation(path)
    assert re.fullmatch(r"[a-z-]+", code), f"{path.name}: first line must be '# expect: <mypy error code>'"
    assert message, f"{path.name}: needs '# expect-message: <fragment of the error message>'"


@pytest.mark.slow
@pytest.mark.parametrize("path", PASS, ids=list(_ids(PASS)))
def test_pass_case_type_checks(path: Path, mypy_errors: dict[str, list[Diagnostic]]) -> None:
    errors = mypy_errors[path.name]
    if path.name in KNOWN_GAPS:
        if errors:
            pytest.xfail(KNOWN_GAPS[path.name])
        pytest.fail(f"{path.name} now type-checks: remove it from KNOWN_GAPS")
    assert not errors, f"{path.name} should type-check but mypy says:\n{_describe(errors)}"


@pytest.mark.slow
@pytest.mark.parametrize("path", FAIL, ids=list(_ids(FAIL)))
def test_fail_case_is_rejected_with_the_expected_error(path: Path, mypy_errors: dict[str, list[Diagnostic]]) -> None:
    code, message = _expectation(path)
    errors = mypy_errors[path.name]
    assert errors, f"{path.name} should be rejected with [{code}] but type-checks"
    unexpected = [e for e in errors if e.code != code]
    assert not unexpected, f"{path.name}: errors other than [{code}]:\n{_describe(unexpected)}"
    assert any(message in e.message for e in errors), (
        f"{path.name}: no [{code}] error mentions {message!r}:\n{_describe(errors)}"
    )
