"""Security: no code path deserialises or evaluates untrusted input, and config strings name
registered components only, never something to import."""

from __future__ import annotations

import ast
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astra_core import checkpoint as ckpt
from astra_core.build import resolve
from astra_core.cli import main
from astra_core.config import parse_run_config
from astra_core.errors import CheckpointError, UnknownComponentError
from astra_core.plugins import discover, load_plugins
from astra_core.registry import KINDS, Registries

ROOT = Path(__file__).resolve().parents[1]
# Every shipped Python file: the core, each first-party plugin package, the benchmarks and the
# examples. Tests are not shipped, and may plant what these checks look for.
SCANNED = [ROOT / "astra_core", *sorted(ROOT.glob("plugins/*/astra_*")), ROOT / "bench", ROOT / "examples"]
# (path relative to the repository, the forbidden call) -> why it is safe. Empty today: add an
# entry only with a reason a reviewer can check.
ALLOWED: dict[tuple[str, str], str] = {}

_UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle"}
_LOADS = {"load", "loads", "Unpickler"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def forbidden_calls(source: str, filename: str = "<source>") -> Iterator[tuple[int, str]]:
    """(line, description) for each dangerous construct in Python `source`.

    Flags ``torch.load`` without ``weights_only=True``; any load from pickle and its relatives
    (and importing them at all); ``numpy.load`` with ``allow_pickle=True``; ``yaml.load`` and
    ``yaml.unsafe_load``; and calls to the builtins ``eval``, ``exec``, ``compile`` and
    ``__import__``. Method calls that merely share a name (``model.eval()``) are not flagged.
    """
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in _UNPICKLERS:
                    yield node.lineno, f"import {module}"
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, last = name.rpartition(".")
        if name in {"eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"}:
            yield node.lineno, f"{name}("
        elif last == "load" and head == "torch" and not _keyword_is_true(node, "weights_only"):
            yield node.lineno, "torch.load( without weights_only=True"
        elif head.split(".")[0] in _UNPICKLERS and last in _LOADS:
            yield node.lineno, f"{name}("
        elif last == "load" and head in {"np", "numpy"} and _keyword_is_true(node, "allow_pickle"):
            yield node.lineno, f"{name}(allow_pickle=True)"
        elif head == "yaml" and last in {"load", "unsafe_load", "full_load"}:
            yield node.lineno, f"{name}("


def python_files() -> Iterator[Path]:
    for root in SCANNED:
        if root.is_dir():
            yield from (p for p in sorted(root.rglob("*.py")) if "egg-info" not in str(p) and "build/" not in str(p))


@pytest.mark.parametrize(
    ("snippet", "found"),
    [
        ("import torch\ntorch.load('w.pt')\n", "torch.load( without weights_only=True"),
        ("import torch\ntorch.load('w.pt', weights_only=False)\n", "torch.load( without weights_only=True"),
        ("import pickle\n", "import pickle"),
        ("from pickle import loads\n", "import pickle"),
        ("x = pickle.loads(b'')\n", "pickle.loads("),
        ("x = dill.load(f)\n", "dill.load("),
        ("eval('1 + 1')\n", "eval("),
        ("exec('x = 1')\n", "exec("),
        ("__import__('os')\n", "__import__("),
        ("np.load('a.npy', allow_pickle=True)\n", "np.load(allow_pickle=True)"),
        ("yaml.load(text)\n", "yaml.load("),
    ],
)
def test_the_scanner_finds_each_forbidden_construct(snippet: str, found: str) -> None:
    assert [what for _, what in forbidden_calls(snippet)] == [found]


def test_the_scanner_lets_safe_lookalikes_pass() -> None:
    safe = (
        "model.eval()\nself.tester.eval()\ntorch.load(path, weights_only=True)\n"
        "safetensors.torch.load_file(path)\njson.loads(text)\nnp.load('a.npy')\nyaml.safe_load(text)\n"
        "text = 'eval(x) and pickle.loads(y) in a string'\n# torch.load(path) in a comment\n"
    )
    assert list(forbidden_calls(safe)) == []


def test_no_shipped_python_unpickles_or_evaluates() -> None:
    files = list(python_files())
    assert any("astra_core" in str(p) for p in files) and any("astra_transformers" in str(p) for p in files)
    found = []
    for path in files:
        relative = str(path.relative_to(ROOT))
        for line, what in forbidden_calls(path.read_text(encoding="utf-8"), relative):
            if (relative, what) not in ALLOWED:
                found.append(f"{relative}:{line}: {what}")
    assert found == [], "dangerous calls (remove them or add to ALLOWED with a reason):\n" + "\n".join(found)


# --- config strings never import anything -------------------------------------------------------

HOSTILE_NAMES = [
    "os:system",
    "os.system",
    "subprocess.run",
    "subprocess:run",
    "builtins.eval",
    "builtins:eval",
    "__import__",
    "astra_security_sentinel",
    "astra_security_sentinel:run",
    "astra_security_sentinel.run",
    "../../etc/passwd",
]


@pytest.fixture
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module that records being imported: it must never be."""
    (tmp_path / "astra_security_sentinel.py").write_text("raise SystemExit('astra_security_sentinel was imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "astra_security_sentinel"
    assert "astra_security_sentinel" not in sys.modules


@pytest.fixture(scope="module")
def every_plugin() -> Registries:
    return discover().registries


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_import_like_names_are_unknown_components_of_every_kind(
    every_plugin: Registries, sentinel: str, kind: str, name: str
) -> None:
    with pytest.raises(UnknownComponentError, match=f"unknown {kind} "):
        every_plugin.kind(kind).get(name)


RUN_KEYS = {
    "scorer": ("scorer", None),
    "system": ("system", None),
    "sampler": ("sampler", None),
    "algorithm": ("algorithm", None),
    "evaluator": ("evaluator", None),
    "optimizer": ("training", "optimizer"),
    "scheduler": ("training", "lr_scheduler"),
    "callback": ("callbacks", None),
}


@pytest.mark.parametrize("kind", sorted(RUN_KEYS))
@pytest.mark.parametrize("name", ["astra_security_sentinel:run", "astra_security_sentinel", "os:system"])
def test_a_run_file_naming_a_module_for_any_component_is_refused_without_importing_it(
    every_plugin: Registries, sentinel: str, kind: str, name: str
) -> None:
    data: dict[str, object] = {
        "system": "toy",
        "scorer": "toy",
        "sampler": "toy",
        "algorithm": "dpo",
        "evaluator": "none",
    }
    key, inner = RUN_KEYS[kind]
    if key == "training":
        data["training"] = {inner: name}
    elif key == "callbacks":
        data["callbacks"] = [name]
    else:
        data[key] = name
    with pytest.raises(UnknownComponentError, match=f"unknown {kind} '{name}'"):
        resolve(parse_run_config(data), every_plugin)


def test_the_cli_refuses_a_module_path_in_a_run_file_in_one_line(
    tmp_path: Path, sentinel: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASTRA_PLUGINS", raising=False)
    load_plugins.cache_clear()
    path = tmp_path / "run.toml"
    path.write_text(
        'system = "toy"\nscorer = "toy"\nsampler = "toy"\nalgorithm = "astra_security_sentinel:run"\n'
        'evaluator = "none"\n',
        encoding="utf-8",
    )
    try:
        assert main(["validate", str(path)]) == 2
    finally:
        load_plugins.cache_clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown algorithm 'astra_security_sentinel:run'" in err


# --- data read as data, with bounds -------------------------------------------------------------


def test_an_oversized_checkpoint_manifest_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoints" / "step-00000001"
    checkpoint.mkdir(parents=True)
    padding = " " * (ckpt.MAX_MANIFEST_BYTES + 1)
    (checkpoint / ckpt.MANIFEST).write_text(json.dumps({"format": ckpt.FORMAT}) + padding, encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"manifest\.json is \d+ bytes, over the 1048576-byte limit"):
        ckpt.verify(checkpoint)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_a_manifest_cannot_point_outside_its_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "step-00000001"
    checkpoint.mkdir()
    (tmp_path / "secret.txt").write_text("not yours", encoding="utf-8")
    files = {name: "0" * 64 for name in ckpt.REQUIRED_FILES} | {"../secret.txt": "0" * 64}
    (checkpoint / ckpt.MANIFEST).write_text(json.dumps({"format": ckpt.FORMAT, "files": files}), encoding="utf-8")
    with pytest.raises(
        CheckpointError, match=r"lists '\.\./secret\.txt', which is not a file name inside the checkpoint"
    ):
        ckpt.verify(checkpoint)


# --- model directories: no code, no pickle, unless the user says so ---------------------------------


def _transformers() -> Any:
    return pytest.importorskip("astra_transformers.system")


def test_every_from_pretrained_in_the_plugins_passes_trust_remote_code_false() -> None:
    for package in sorted(ROOT.glob("plugins/*/astra_*")):
        for path in package.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _dotted(node.func).endswith("from_pretrained"):
                    if _dotted(node.func).startswith("peft."):
                        continue  # an adapter has no code of its own; its weights are checked first
                    keywords = {k.arg: k.value for k in node.keywords}
                    value = keywords.get("trust_remote_code")
                    explicit = isinstance(value, ast.Constant) and value.value is False
                    assert explicit, f"{path}:{node.lineno} loads without trust_remote_code=False"


def test_a_model_directory_with_pickle_weights_loads_only_with_the_opt_in(tmp_path: Path) -> None:
    system = _transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from astra_core.errors import ComponentBuildError

    tiny = system.resolve_source("tiny")
    model = tmp_path / "pickled"
    source = AutoModelForCausalLM.from_pretrained(tiny)
    source.save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(model)
    (model / "model.safetensors").unlink()  # the same weights, as a pickle only
    torch.save(source.state_dict(), model / "pytorch_model.bin")
    assert (model / "pytorch_model.bin").is_file() and not (model / "model.safetensors").exists()
    with pytest.raises(ComponentBuildError, match="weights must be safetensors unless allow_pickle_weights = true"):
        system.load_model(str(model), torch.float32, torch.device("cpu"))
    loaded = system.load_model(str(model), torch.float32, torch.device("cpu"), allow_pickle_weights=True)
    assert loaded.module is not None


def test_code_in_a_model_directory_never_runs_and_the_terminal_is_never_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = _transformers()
    import shutil

    import torch

    from astra_core.errors import ComponentBuildError

    model = tmp_path / "remote-code"
    shutil.copytree(system.resolve_source("tiny"), model)
    sentinel = tmp_path / "code-ran"
    (model / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n", encoding="utf-8")
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")

    def no_input(*args: Any) -> str:
        raise AssertionError("the terminal was asked")

    monkeypatch.setattr("builtins.input", no_input)
    with contextlib.suppress(ComponentBuildError):  # refusing is fine; running the code or asking is not
        system.load_model(str(model), torch.float32, torch.device("cpu"))
    assert not sentinel.exists()
