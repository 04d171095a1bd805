"""The plugin manager: lazy loading, broken plugins reported not fatal, environment controls,
the installed example plugin end to end, and meta-tests that keep hooks tested and documented."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from astra_core import PluginLoadError, Registrar, TrainingConfiguration, UnknownComponentError, hookimpl
from astra_core.build import build, resolve
from astra_core.config import parse_run_config
from astra_core.hooks import AstraHookSpecs
from astra_core.plugins import PluginInfo, PluginSet, discover, load_plugins
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "examples" / "astra-example-plugin"


@pytest.fixture(autouse=True)
def _no_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for variable in ("ASTRA_PLUGINS", "ASTRA_DISABLE_PLUGINS", "ASTRA_STRICT_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    load_plugins.cache_clear()
    yield
    load_plugins.cache_clear()


def status(found: PluginSet, name: str) -> PluginInfo:
    [info] = [p for p in found.plugins if p.name == name]
    return info


class Registers:
    """An in-process plugin registering one sampler."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        registrar.sampler(self.name, "astra_core.testing.toy:ToySampler", summary="a toy sampler")


class RaisesHalfway:
    """Registers one component, then fails: none of its components may take effect."""

    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        registrar.sampler("half-registered", "astra_core.testing.toy:ToySampler")
        raise RuntimeError("misconfigured plugin")


# --- the hook ---------------------------------------------------------------------------------


def test_hook_astra_register() -> None:
    seen: list[Registrar] = []

    class Recording:
        @hookimpl
        def astra_register(self, registrar: Registrar) -> None:
            seen.append(registrar)
            registrar.sampler("recorded", "astra_core.testing.toy:ToySampler", summary="recorded")

    found = discover(extra=[("recording", Recording())])
    assert len(seen) == 1
    assert seen[0].provider.plugin == "recording"
    info = found.registries.get("sampler", "recorded")
    assert (info.provider.plugin, info.summary) == ("recording", "recorded")
    assert status(found, "recording").status == "loaded"


def test_every_hookspec_has_a_test() -> None:
    hooks = [name for name, _ in inspect.getmembers(AstraHookSpecs, inspect.isfunction) if name.startswith("astra_")]
    assert hooks, "no hookspecs found"
    missing = [name for name in hooks if f"test_hook_{name}" not in globals()]
    assert not missing, f"hookspecs without a test_hook_<name> test in {__file__}: {missing}"


def test_every_hookspec_is_documented_in_the_plugin_guide() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    hooks = [name for name, _ in inspect.getmembers(AstraHookSpecs, inspect.isfunction) if name.startswith("astra_")]
    undocumented = [name for name in hooks if not re.search(rf"^#+ .*`{name}`", guide, flags=re.MULTILINE)]
    assert not undocumented, f"hookspecs without a heading in docs/plugins.md: {undocumented}"


# --- lazy loading -----------------------------------------------------------------------------


def test_loading_plugins_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import json, sys\n"
        "from astra_core.plugins import load_plugins\n"
        "found = load_plugins()\n"
        "print(json.dumps({'heavy': sorted(m for m in ('torch', 'transformers') if m in sys.modules),\n"
        "                  'plugins': {p.name: p.status for p in found.plugins}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["plugins"].get("example") == "loaded"  # the entry points did load
    assert report["heavy"] == [], f"plugin registration imported {report['heavy']}"


# --- broken plugins ---------------------------------------------------------------------------


def test_a_plugin_raising_in_astra_register_is_reported_and_the_others_load() -> None:
    found = discover(extra=[("half", RaisesHalfway()), ("fine", Registers("fine-sampler"))])
    broken = status(found, "half")
    assert (broken.status, broken.distribution) == ("broken", "in-process")
    assert broken.error == "RuntimeError: misconfigured plugin"
    assert found.broken == [broken]
    assert found.registries.get("sampler", "fine-sampler").provider.plugin == "fine"
    assert status(found, "example").status == "loaded"
    with pytest.raises(UnknownComponentError):
        found.registries.get("sampler", "half-registered")  # all or nothing


def test_a_plugin_raising_in_astra_register_is_fatal_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_STRICT_PLUGINS", "1")
    with pytest.raises(
        PluginLoadError, match=r"plugin 'half' .*RuntimeError: misconfigured plugin.*ASTRA_STRICT_PLUGINS"
    ):
        discover(extra=[("half", RaisesHalfway())])


@pytest.fixture
def broken_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution `astra-broken-import` whose plugin module raises on import."""
    (tmp_path / "astra_broken_import.py").write_text("raise ImportError('needs a library that is not installed')\n")
    info = tmp_path / "astra_broken_import-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: astra-broken-import\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[astra_core]\nbroken = astra_broken_import\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "broken"


def test_a_plugin_failing_at_import_is_reported_with_its_distribution(broken_distribution: str) -> None:
    found = discover()
    broken = status(found, broken_distribution)
    assert (broken.status, broken.distribution, broken.version) == ("broken", "astra-broken-import", "0.3")
    assert broken.error == "ImportError: needs a library that is not installed"
    assert status(found, "example").status == "loaded"
    assert found.registries.get("algorithm", "example-reinforce")


def test_a_plugin_failing_at_import_is_fatal_in_strict_mode(
    broken_distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRA_STRICT_PLUGINS", "1")
    with pytest.raises(
        PluginLoadError, match=r"plugin 'broken' from astra-broken-import 0\.3 failed to load: ImportError"
    ):
        discover()


# --- selecting plugins ------------------------------------------------------------------------


@pytest.mark.parametrize("allow", ["example", "astra-example-plugin", "other, example"])
def test_allowlist_loads_the_named_plugins(monkeypatch: pytest.MonkeyPatch, allow: str) -> None:
    monkeypatch.setenv("ASTRA_PLUGINS", allow)
    found = discover()
    assert status(found, "example").status == "loaded"
    assert status(found, "core").status == "loaded"


def test_allowlist_skips_every_other_plugin_but_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_PLUGINS", "core")
    found = discover()
    assert status(found, "example").status == "disabled"
    assert found.registries.get("optimizer", "adamw").provider.plugin == "core"
    with pytest.raises(UnknownComponentError, match="unknown algorithm 'example-reinforce'"):
        found.registries.get("algorithm", "example-reinforce")


@pytest.mark.parametrize("deny", ["example", "astra-example-plugin"])
def test_blocklist_skips_a_plugin_by_entry_point_or_distribution(monkeypatch: pytest.MonkeyPatch, deny: str) -> None:
    monkeypatch.setenv("ASTRA_DISABLE_PLUGINS", deny)
    found = discover()
    assert status(found, "example") == PluginInfo("example", "astra-example-plugin", "0.1.0", "disabled")
    assert "example-chain" not in found.registries["sampler"]


def test_blocklist_wins_over_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_PLUGINS", "example")
    monkeypatch.setenv("ASTRA_DISABLE_PLUGINS", "example")
    assert status(discover(), "example").status == "disabled"


def test_disabling_a_plugin_skips_importing_it(broken_distribution: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_DISABLE_PLUGINS", broken_distribution)
    monkeypatch.setenv("ASTRA_STRICT_PLUGINS", "1")  # would raise if it were imported
    assert status(discover(), broken_distribution).status == "disabled"


# --- the installed example plugin -------------------------------------------------------------


def test_example_plugin_is_discovered_by_name_with_its_distribution() -> None:
    found = load_plugins()
    assert status(found, "example") == PluginInfo("example", "astra-example-plugin", "0.1.0", "loaded")
    for kind, name in [
        ("algorithm", "example-reinforce"),
        ("sampler", "example-chain"),
        ("optimizer", "example-signsgd"),
    ]:
        provider = found.registries.kind(kind).get(name).provider
        assert (provider.plugin, provider.distribution) == ("example", "astra-example-plugin")


RUN_FILE = """
scorer = "toy"
system = "toy"
sampler = "example-chain"
algorithm = "example-reinforce"
evaluator = "none"

[training]
lr = 0.01
training_steps = 2
num_episodes_per_experience = 2
batch_size = 4
optimizer = { name = "example-signsgd", weight_decay = 0.01 }
"""


def test_a_run_file_naming_the_example_components_validates() -> None:
    resolved = resolve(parse_run_config(tomllib.loads(RUN_FILE), "run.toml"))
    described = resolved.describe()
    assert described["sampler"]["name"] == "example-chain"
    assert described["sampler"]["options"]["depth"] == 3  # defaults filled in
    assert described["algorithm"]["options"] == {"discount": 1.0, "baseline": "mean"}
    assert described["training"]["optimizer"]["options"] == {"weight_decay": 0.01}
    assert "astra-example-plugin" in described["algorithm"]["provider"]


def test_a_run_file_with_a_bad_example_option_names_component_and_field() -> None:
    data = tomllib.loads(
        RUN_FILE.replace('sampler = "example-chain"', 'sampler = { name = "example-chain", depth = 0 }')
    )
    with pytest.raises(Exception, match=r"sampler 'example-chain': depth"):
        resolve(parse_run_config(data))


def test_the_trainer_finds_the_plugins_optimizer_by_name() -> None:
    from astra_core import Trainer
    from astra_example_plugin.signsgd import SignSGD

    config = parse_run_config(tomllib.loads(RUN_FILE))
    parts = build(resolve(config))
    trainer = Trainer(config.training, parts.sampler, parts.algorithm)
    assert isinstance(trainer.optimizer, SignSGD)
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.01
    before = [p.detach().clone() for p in parts.system.parameters()]
    history = trainer.train()
    assert len(history) == 2
    moved = [float((p.detach() - b).abs().max()) for p, b in zip(parts.system.parameters(), before, strict=True)]
    assert max(moved) > 0  # sign SGD moved the tester


def test_the_trainer_finds_an_in_process_plugins_optimizer_by_name() -> None:
    from astra_core import Trainer
    from astra_example_plugin.reinforce import Reinforce

    class Optimizers:
        @hookimpl
        def astra_register(self, registrar: Registrar) -> None:
            registrar.optimizer("plain-sgd", "torch.optim:SGD", options="astra_core.optim:SGDOptions")

    registries = discover(extra=[("optimizers", Optimizers())]).registries
    system = ToySystem()
    config = TrainingConfiguration(training_steps=1, num_episodes_per_experience=2, optimizer="plain-sgd")
    trainer = Trainer(config, ToySampler(system, ToyScorer()), Reinforce(system), registries=registries)
    assert type(trainer.optimizer).__name__ == "SGD"


# --- the guide --------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?P<lang>\w*)\n(?P<body>.*?)```", re.DOTALL)


def _blocks(language: str, page: Path = GUIDE) -> list[str]:
    return [m["body"] for m in _FENCE.finditer(page.read_text(encoding="utf-8")) if m["lang"] == language]


def test_files_quoted_in_the_guide_match_the_example_package() -> None:
    quoted = 0
    for body in _blocks("python") + _blocks("toml"):
        first, _, rest = body.partition("\n")
        match = re.fullmatch(r"# file: (\S+)", first.strip())
        if match:
            source = (ROOT / match[1]).read_text(encoding="utf-8")
            assert rest.strip() in source, f"docs/plugins.md quotes {match[1]} but it no longer matches the file"
            quoted += 1
    assert quoted >= 5, "the guide should quote the example package's files"


def test_python_snippets_in_the_guide_run() -> None:
    snippets = [b for b in _blocks("python") if not b.startswith("# file:")]
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, str(GUIDE), "exec"), {"__name__": "guide_snippet"})


def test_python_snippets_in_the_concepts_page_run() -> None:
    page = ROOT / "docs" / "concepts.md"
    snippets = _blocks("python", page)
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, str(page), "exec"), {"__name__": "concepts_snippet"})
