"""The plugin manager: lazy loading, broken plugins reported not fatal, environment controls,
the installed example plugin end to end, and meta-tests that keep hooks tested and documented."""

from __future__ import annotations

import inspect
import json
import os
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


def install_distribution(where: Path, distribution: str, version: str, plugin: str, source: str) -> None:
    """Make `where` hold an installed distribution whose entry point `plugin` is a module with `source`."""
    module = distribution.replace("-", "_")
    (where / f"{module}.py").write_text(source)
    info = where / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[astra_core]\n{plugin} = {module}\n")


@pytest.fixture
def broken_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution `astra-broken-import` whose plugin module raises on import."""
    install_distribution(
        tmp_path, "astra-broken-import", "0.3", "broken", "raise ImportError('needs a library that is not installed')\n"
    )
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


# --- plugins that load but do nothing ---------------------------------------------------------


class MisspeltHook:
    @hookimpl
    def astra_registr(self, registrar: Registrar) -> None:
        registrar.sampler("never", "astra_core.testing.toy:ToySampler")


class Unmarked:
    def astra_register(self, registrar: Registrar) -> None:  # no @hookimpl: pluggy never calls it
        registrar.sampler("never", "astra_core.testing.toy:ToySampler")


class RegistersNothing:
    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        pass


class NoHookAtAll:
    pass


class ExtraHook(Registers):
    @hookimpl
    def astra_configure(self) -> None: ...


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        (
            MisspeltHook(),
            "registered nothing: 'astra_registr' is not an Astra Core hook; did you mean 'astra_register'?",
        ),
        (Unmarked(), "registered nothing: its astra_register is not marked with @hookimpl (from astra_core)"),
        (RegistersNothing(), "registered nothing: its astra_register hook ran but registered no components"),
        (NoHookAtAll(), "registered nothing: it implements no astra_register hook"),
    ],
    ids=["misspelt-hook", "missing-hookimpl", "registers-nothing", "no-hook"],
)
def test_a_plugin_that_registers_nothing_is_flagged_empty_with_the_reason(plugin: object, reason: str) -> None:
    found = discover(extra=[("quiet", plugin), ("fine", Registers("fine-sampler"))])
    assert status(found, "quiet") == PluginInfo("quiet", "in-process", "", "empty", reason)
    assert found.flagged == [status(found, "quiet")]
    assert found.broken == []
    assert found.registries.get("sampler", "fine-sampler")  # the others load
    assert "never" not in found.registries["sampler"]


@pytest.mark.parametrize("plugin", [MisspeltHook(), Unmarked(), RegistersNothing()])
def test_a_plugin_that_registers_nothing_is_fatal_in_strict_mode(
    plugin: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRA_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=r"plugin 'quiet' from in-process: registered nothing: .*STRICT"):
        discover(extra=[("quiet", plugin)])


def test_an_unknown_hook_next_to_a_working_one_is_flagged_and_the_components_load() -> None:
    found = discover(extra=[("extra", ExtraHook("extra-sampler")), ("fine", Registers("fine-sampler"))])
    extra = status(found, "extra")
    assert extra.status == "loaded"
    assert extra.error == "implements 'astra_configure', which is not an Astra Core hook (hooks: astra_register)"
    assert found.flagged == [extra]
    assert found.registries.get("sampler", "extra-sampler").provider.plugin == "extra"
    assert status(found, "fine") == PluginInfo("fine", "in-process", "", "loaded")


def test_an_unknown_hook_is_fatal_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=r"plugin 'extra' .*'astra_configure', which is not an Astra Core hook"):
        discover(extra=[("extra", ExtraHook("extra-sampler"))])


@pytest.fixture
def misspelt_distribution(tmp_path: Path) -> Path:
    """A directory holding a distribution `astra-misspelt` whose plugin module misspells its hook."""
    source = (
        "from astra_core import Registrar, hookimpl\n\n\n"
        "@hookimpl\n"
        "def astra_registr(registrar: Registrar) -> None:\n"
        "    registrar.sampler('misspelt', 'astra_core.testing.toy:ToySampler')\n"
    )
    install_distribution(tmp_path, "astra-misspelt", "1.0", "misspelt", source)
    return tmp_path


def _astra(*args: str, path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path), **environment}
    for variable in ("ASTRA_PLUGINS", "ASTRA_DISABLE_PLUGINS", "ASTRA_STRICT_PLUGINS"):
        if variable not in environment:
            env.pop(variable, None)
    return subprocess.run(
        [sys.executable, "-m", "astra_core", *args], capture_output=True, text=True, check=False, env=env, cwd=ROOT
    )


def test_astra_plugins_flags_an_installed_plugin_whose_hook_never_runs(misspelt_distribution: Path) -> None:
    result = _astra("plugins", path=misspelt_distribution)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.strip().startswith("misspelt ")]
    assert "astra-misspelt 1.0  EMPTY: registered nothing: 'astra_registr' is not an Astra Core hook" in line
    listed = json.loads(_astra("plugins", "--json", path=misspelt_distribution).stdout)
    [row] = [p for p in listed["plugins"] if p["name"] == "misspelt"]
    assert row["status"] == "empty"


def test_astra_plugins_stops_on_it_in_strict_mode(misspelt_distribution: Path) -> None:
    result = _astra("plugins", path=misspelt_distribution, ASTRA_STRICT_PLUGINS="1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "plugin 'misspelt' from astra-misspelt 1.0: registered nothing" in result.stderr


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


def test_a_component_of_a_disabled_plugin_says_which_plugin_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_DISABLE_PLUGINS", "example")
    with pytest.raises(UnknownComponentError) as caught:
        discover().registries.get("sampler", "example-chain")
    assert str(caught.value) == (
        "unknown sampler 'example-chain': it is provided by plugin example (astra-example-plugin 0.1.0), "
        "which is disabled by ASTRA_DISABLE_PLUGINS"
    )
    assert "install" not in str(caught.value)


def test_a_component_of_an_unselected_plugin_names_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_PLUGINS", "core")
    with pytest.raises(UnknownComponentError, match=r"provided by plugin example .*not selected by ASTRA_PLUGINS"):
        discover().registries.get("algorithm", "example-reinforce")


def test_a_name_no_disabled_plugin_has_gets_the_usual_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_DISABLE_PLUGINS", "example")
    with pytest.raises(UnknownComponentError, match=r"install the one that provides it"):
        discover().registries.get("sampler", "nobody-has-this")


def test_a_run_file_naming_a_disabled_plugins_component_fails_in_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text(RUN_FILE)
    result = _astra("validate", str(run), path=tmp_path, ASTRA_DISABLE_PLUGINS="astra-example-plugin")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "which is disabled by ASTRA_DISABLE_PLUGINS" in result.stderr


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


def test_the_guides_table_of_kinds_is_generated_from_the_code() -> None:
    from astra_core import kinds

    assert kinds.table_markdown() in GUIDE.read_text(encoding="utf-8"), (
        "docs/plugins.md's table of kinds differs from astra_core.kinds; paste there what "
        "`python -c 'from astra_core import kinds; print(kinds.table_markdown())'` prints"
    )


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
