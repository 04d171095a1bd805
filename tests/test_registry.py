"""The registry: lookups that teach, duplicates that are never silent, options validated by name."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astra_core import (
    ComponentBuildError,
    DuplicateComponentError,
    OptionsError,
    PluginLoadError,
    Registrar,
    UnknownComponentError,
    factories,
    hookimpl,
    kinds,
)
from astra_core.build import build, resolve
from astra_core.config import parse_run_config
from astra_core.kinds import KINDS, KINDS_TABLE
from astra_core.plugins import PluginSet, discover
from astra_core.registry import Registries


@pytest.fixture(autouse=True)
def _no_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for variable in ("ASTRA_PLUGINS", "ASTRA_DISABLE_PLUGINS", "ASTRA_STRICT_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    yield


class Plugin:
    """An in-process plugin that registers `(kind, name, factory, options)` rows."""

    def __init__(self, *rows: tuple[Any, ...], aliases: dict[str, list[str]] | None = None) -> None:
        self.rows = rows
        self.aliases = aliases or {}

    @hookimpl
    def astra_register(self, registrar: Registrar) -> None:
        for kind, name, factory, *options in self.rows:
            registrar.add(
                kind, name, factory, options=options[0] if options else None, aliases=self.aliases.get(name, ())
            )


def make_sampler(system: object, scorer: object, depth: int = 2, label: str = "chain") -> dict[str, Any]:
    """A stand-in factory whose typed signature is its options model."""
    return {"system": system, "scorer": scorer, "depth": depth, "label": label}


def needs_width(system: object, scorer: object, width: int) -> int:
    return width


def with_plugins(*plugins: tuple[str, object]) -> PluginSet:
    return discover(extra=list(plugins))


@pytest.fixture
def registries() -> Registries:
    return with_plugins(
        ("chains", Plugin(("sampler", "chain-sampler", make_sampler), aliases={"chain-sampler": ["chain"]})),
        ("widths", Plugin(("sampler", "needs-width", needs_width))),
    ).registries


# --- unknown names ----------------------------------------------------------------------------


def test_unknown_name_names_kind_close_matches_available_and_the_plugins_command(registries: Registries) -> None:
    with pytest.raises(UnknownComponentError) as caught:
        registries.get("sampler", "chain-sampled")
    error = caught.value
    assert (error.kind, error.name) == ("sampler", "chain-sampled")
    assert error.close[0] == "chain-sampler"
    assert {"chain", "chain-sampler", "needs-width", "toy"} <= set(error.available)
    message = str(error)
    assert "unknown sampler 'chain-sampled'" in message
    assert "did you mean 'chain-sampler'" in message
    assert "available samplers:" in message
    assert "`astra plugins`" in message


def test_unknown_name_without_a_close_match_offers_no_guess(registries: Registries) -> None:
    with pytest.raises(UnknownComponentError) as caught:
        registries.get("algorithm", "zzzz")
    assert caught.value.close == []
    assert "did you mean" not in str(caught.value)


def test_unknown_component_error_is_a_key_error_with_a_readable_message(registries: Registries) -> None:
    with pytest.raises(KeyError) as caught:
        registries.get("scorer", "nope")
    assert str(caught.value).startswith("unknown scorer 'nope'")  # not KeyError's quoted repr


def test_unknown_kind_is_taught_too(registries: Registries) -> None:
    with pytest.raises(UnknownComponentError, match=r"unknown component kind 'algo'.*did you mean 'algorithm'"):
        registries.kind("algo")


@pytest.mark.parametrize("name", ["os:system", "subprocess.run", "builtins:eval", "astra_core.testing.toy:ToySampler"])
def test_import_paths_in_configs_are_unknown_names(registries: Registries, name: str) -> None:
    with pytest.raises(UnknownComponentError, match="unknown sampler"):
        registries.get("sampler", name)


def test_a_config_naming_a_module_never_imports_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "astra_sentinel_module.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = parse_run_config(
        {"system": "toy", "scorer": "toy", "sampler": "astra_sentinel_module:run", "evaluator": "none"}
    )
    with pytest.raises(UnknownComponentError, match="unknown sampler 'astra_sentinel_module:run'"):
        resolve(config, discover().registries)
    config = parse_run_config({"scorer": "astra_sentinel_module.run", "evaluator": "none"})
    with pytest.raises(UnknownComponentError, match="unknown scorer"):
        resolve(config, discover().registries)
    assert "astra_sentinel_module" not in sys.modules


def test_names_that_look_like_import_paths_cannot_be_registered() -> None:
    registrar = Registrar(discover().registries.get("optimizer", "adam").provider)
    with pytest.raises(ValueError, match="contain no ':'"):
        registrar.sampler("os:system", make_sampler)
    with pytest.raises(ValueError, match="unknown component kind 'sampelr'"):
        registrar.add("sampelr", "x", make_sampler)  # type: ignore[arg-type]


def test_a_misspelt_registration_keyword_is_an_error_not_dropped() -> None:
    registrar = Registrar(discover().registries.get("optimizer", "adam").provider)
    with pytest.raises(TypeError, match=r"registering sampler 'x': unexpected option \(expected options"):
        registrar.sampler("x", make_sampler, option="m:Options")  # type: ignore[call-arg]


# --- duplicates -------------------------------------------------------------------------------


def test_same_name_from_two_plugins_is_an_error_naming_both_on_lookup() -> None:
    found = with_plugins(
        ("alpha", Plugin(("sampler", "shared", make_sampler), ("sampler", "only-alpha", make_sampler))),
        ("beta", Plugin(("sampler", "shared", needs_width))),
    )
    with pytest.raises(DuplicateComponentError) as caught:
        found.registries.get("sampler", "shared")
    assert [p.split(" ")[0] for p in caught.value.providers] == ["alpha", "beta"]
    assert "alpha" in str(caught.value) and "beta" in str(caught.value)
    assert "ASTRA_DISABLE_PLUGINS" in str(caught.value)
    assert found.registries.get("sampler", "only-alpha").provider.plugin == "alpha"  # the rest still works
    assert "shared" not in found.registries["sampler"].names()
    assert list(found.registries["sampler"].conflicts()) == ["shared"]


def test_a_plugin_cannot_silently_replace_a_core_component() -> None:
    found = with_plugins(("shadow", Plugin(("optimizer", "adamw", make_sampler))))
    with pytest.raises(DuplicateComponentError, match=r"core .*shadow"):
        found.registries.get("optimizer", "adamw")


def test_an_alias_clash_is_a_duplicate_too() -> None:
    found = with_plugins(
        ("alpha", Plugin(("sampler", "alpha-sampler", make_sampler), aliases={"alpha-sampler": ["common"]})),
        ("beta", Plugin(("sampler", "common", needs_width))),
    )
    assert found.registries.get("sampler", "alpha-sampler").provider.plugin == "alpha"
    with pytest.raises(DuplicateComponentError, match="'common'"):
        found.registries.get("sampler", "common")


def test_duplicates_are_fatal_at_load_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRA_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=r"plugin 'beta'.*sampler 'shared'.*alpha .*beta") as caught:
        with_plugins(
            ("alpha", Plugin(("sampler", "shared", make_sampler))), ("beta", Plugin(("sampler", "shared", needs_width)))
        )
    duplicate = caught.value.__cause__
    assert isinstance(duplicate, DuplicateComponentError)
    assert [p.split(" ")[0] for p in duplicate.providers] == ["alpha", "beta"]


def test_aliases_resolve_to_the_same_component(registries: Registries) -> None:
    assert registries.get("sampler", "chain") is registries.get("sampler", "chain-sampler")
    assert [info.name for info in registries["sampler"] if info.provider.plugin == "chains"] == ["chain-sampler"]


# --- options ----------------------------------------------------------------------------------


def test_unknown_option_names_component_field_and_valid_options() -> None:
    info = discover().registries.get("sampler", "toy")
    with pytest.raises(OptionsError) as caught:
        info.validate({"tree_widht": 3})
    assert (caught.value.kind, caught.value.name) == ("sampler", "toy")
    message = str(caught.value)
    assert "bad options for sampler 'toy'" in message
    assert "unknown option 'tree_widht'" in message
    assert "tree_width" in message  # the valid options are listed


def test_bad_option_value_names_component_and_field() -> None:
    info = discover().registries.get("system", "toy")
    with pytest.raises(OptionsError, match=r"bad options for system 'toy': probe_length: .*greater than or equal to 1"):
        info.validate({"probe_length": 0})


def test_options_errors_from_a_run_file_name_the_component() -> None:
    config = parse_run_config(
        {"scorer": "toy", "system": {"name": "toy", "probe_length": "three"}, "sampler": "toy", "evaluator": "none"}
    )
    with pytest.raises(OptionsError, match=r"system 'toy'.*probe_length"):
        resolve(config, discover().registries)


def test_options_come_from_the_typed_signature_when_no_model_is_given(registries: Registries) -> None:
    info = registries.get("sampler", "chain-sampler")
    assert set(info.options_model().model_fields) == {"depth", "label"}  # not `system`, `scorer`: dependencies
    assert info.validate({"depth": "4"}).model_dump() == {"depth": 4, "label": "chain"}
    with pytest.raises(OptionsError, match=r"sampler 'chain-sampler'.*depth"):
        info.validate({"depth": "deep"})
    with pytest.raises(OptionsError, match="unknown option 'width'"):
        info.validate({"width": 2})
    built = info.build("the system", "the scorer", options={"depth": 5})
    assert built == {"system": "the system", "scorer": "the scorer", "depth": 5, "label": "chain"}


def test_a_signature_option_without_default_is_required(registries: Registries) -> None:
    with pytest.raises(OptionsError, match=r"sampler 'needs-width': width: Field required"):
        registries.get("sampler", "needs-width").validate({})


def test_injected_arguments_are_not_options() -> None:
    def plain_sgd(params: object, lr: float, momentum: float = 0.0) -> object:
        return (params, lr, momentum)

    info = with_plugins(("optim", Plugin(("optimizer", "plain-sgd", plain_sgd)))).registries.get(
        "optimizer", "plain-sgd"
    )
    assert set(info.options_model().model_fields) == {"momentum"}
    assert info.build(["p"], options={"momentum": 0.5}, lr=0.1) == (["p"], 0.1, 0.5)


# --- building ---------------------------------------------------------------------------------


def test_a_factory_that_raises_is_reported_with_component_and_options() -> None:
    def exploding(system: object, scorer: object, depth: int = 1) -> None:
        raise RuntimeError("no GPU here")

    info = with_plugins(("boom", Plugin(("sampler", "exploding", exploding)))).registries.get("sampler", "exploding")
    with pytest.raises(ComponentBuildError, match=r"sampler 'exploding' \(plugin boom .*\{'depth': 3\}.*no GPU here"):
        info.build(None, None, options={"depth": 3})


def test_a_lazy_factory_that_cannot_be_imported_names_the_plugin_and_the_path() -> None:
    found = with_plugins(("lazy", Plugin(("sampler", "missing", "astra_no_such_module:Sampler"))))
    info = found.registries.get("sampler", "missing")  # registration itself imported nothing
    with pytest.raises(
        ComponentBuildError, match=r"sampler 'missing' from plugin lazy.*'astra_no_such_module:Sampler'"
    ):
        info.build(None)


# --- the table of kinds -----------------------------------------------------------------------


def _protocols() -> dict[str, type]:
    from astra_core import protocols

    return {
        name: cls
        for name, cls in vars(protocols).items()
        if isinstance(cls, type) and getattr(cls, "_is_protocol", False) and cls.__module__ == protocols.__name__
    }


def test_the_kind_literal_and_the_table_name_the_same_kinds() -> None:
    assert list(KINDS_TABLE) == list(KINDS)
    assert all(record.name == name for name, record in KINDS_TABLE.items())


def test_the_registrar_has_one_registration_per_kind() -> None:
    declared = {n: a.replace("'", '"') for n, a in Registrar.__annotations__.items() if a.startswith("Registration[")}
    assert declared == {kind: f'Registration[Literal["{kind}"]]' for kind in KINDS}
    registrar = Registrar(discover().registries.get("optimizer", "adam").provider)
    for kind in KINDS:
        getattr(registrar, kind)(f"a-{kind}", make_sampler, summary=kind)
    assert [(info.kind, info.name, info.summary) for info in registrar.staged] == [(k, f"a-{k}", k) for k in KINDS]
    assert repr(registrar.sampler) == "<registrar.sampler: factory(system, scorer, **options)>"


def test_required_methods_are_the_protocols_members() -> None:
    system = kinds.kind("system")
    assert {"advance", "join", "rollout_tester", "tester_logprobs", "parameters"} <= set(system.required)
    assert system.optional_members == (
        "state_features",
        "tester_pair_logprobs",
        "turn_text",
        "save_pretrained",
        "named_parameters",
    )
    assert kinds.kind("sampler").required[:1] == ("system",)
    assert kinds.kind("algorithm").required == ("flatten", "collate_fn", "loss", "parameters")
    assert kinds.kind("callback").required == ()
    assert set(kinds.kind("callback").optional_members) == {
        "on_train_begin",
        "on_step_end",
        "on_evaluate",
        "on_train_end",
    }


def test_every_member_of_a_kinds_protocol_is_either_required_or_optional() -> None:
    for record in KINDS_TABLE.values():
        if record.is_protocol:
            protocol = set(kinds.members(record.protocol))
            assert set(record.required) == protocol - set(record.optional_members), record.name
            assert not set(record.required) & set(record.optional_members)


def test_every_runtime_checkable_protocol_is_an_optional_part_of_one_kind() -> None:
    # A new extension protocol that no kind lists would be invisible to the build, the kit and the docs.
    checkable = {name for name, cls in _protocols().items() if getattr(cls, "_is_runtime_protocol", False)}
    listed = [name for record in KINDS_TABLE.values() for name in record.extensions]
    assert sorted(listed) == sorted(set(listed)), "a protocol is optional for two kinds"
    assert checkable <= set(listed)
    assert set(listed) <= set(_protocols())


def test_every_kinds_protocol_is_in_the_protocols_module() -> None:
    for record in KINDS_TABLE.values():
        if record.is_protocol:
            assert _protocols()[record.protocol_name] is record.protocol


def test_the_build_order_puts_each_kind_after_its_dependencies() -> None:
    order = kinds.build_order()
    assert sorted(order) == sorted(KINDS)
    for record in KINDS_TABLE.values():
        assert all(order.index(d) < order.index(record.name) for d in record.depends_on), record.name


def test_factory_calls_are_written_from_dependencies_and_injected_keywords() -> None:
    assert kinds.kind("optimizer").call == "factory(params, lr=lr, **options)"
    assert kinds.kind("scheduler").call == "factory(optimizer, total_steps=total_steps, **options)"
    assert kinds.kind("callback").call == "factory(**options)"


def test_a_built_component_lacking_a_required_method_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoEvalRollouts:
        def __init__(self, system: object, scorer: object) -> None:
            self.system, self.scorer = system, scorer

        def rollouts(self, count: int) -> None: ...

    found = with_plugins(("partial", Plugin(("sampler", "no-eval", NoEvalRollouts))))
    config = parse_run_config({"scorer": "toy", "system": "toy", "sampler": "no-eval", "evaluator": "none"})
    resolved = resolve(config, found.registries)
    with pytest.raises(ComponentBuildError, match=r"sampler 'no-eval' \(plugin partial .*lacks eval_rollouts"):
        build(resolved)


def test_a_torch_kind_is_checked_by_its_base_class() -> None:
    import torch

    optimizer = kinds.kind("optimizer")
    assert optimizer.missing(object()) == ["the base class Optimizer"]
    assert optimizer.missing(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)) == []


def test_a_kinds_guard_is_the_contract_wrapper_looked_up_by_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    calls: list[tuple[str, object, object]] = []
    contracts = types.ModuleType("astra_core.contracts")

    def guard(kind: str, component: object, origin: object = None) -> object:
        calls.append((kind, component, origin))
        return component

    contracts.guard = guard  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "astra_core.contracts", contracts)
    component = object()
    assert kinds.kind("scorer").guard(component) is component
    assert calls == [("scorer", component, None)]


# --- typed factories --------------------------------------------------------------------------


def test_a_typed_factory_builds_and_its_options_come_from_the_wrapped_signature() -> None:
    found = with_plugins(("typed", Plugin(("sampler", "typed-chain", factories.sampler(make_sampler)))))  # type: ignore[arg-type]
    info = found.registries.get("sampler", "typed-chain")
    assert set(info.options_model().model_fields) == {"depth", "label"}
    built = info.build("the system", "the scorer", options={"depth": 4})
    assert built == {"system": "the system", "scorer": "the scorer", "depth": 4, "label": "chain"}


def test_a_typed_factory_registered_as_another_kind_is_refused() -> None:
    registrar = Registrar(discover().registries.get("optimizer", "adam").provider)
    with pytest.raises(ValueError, match=r"algorithm 'x': the factory is declared as a sampler factory"):
        registrar.algorithm("x", factories.sampler(make_sampler))  # type: ignore[arg-type]


def test_a_typed_factory_path_registered_as_another_kind_fails_at_build(monkeypatch: pytest.MonkeyPatch) -> None:
    module = type(sys)("astra_typed_factories_demo")
    module.chain = factories.sampler(make_sampler)  # type: ignore[arg-type,attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    found = with_plugins(("typed", Plugin(("algorithm", "chain-as-algorithm", "astra_typed_factories_demo:chain"))))
    with pytest.raises(ComponentBuildError, match=r"declared as a sampler factory .*not a algorithm one"):
        found.registries.get("algorithm", "chain-as-algorithm").build(None)


def test_every_kind_has_a_typed_factory_declaring_its_protocol_and_dependencies() -> None:
    import inspect
    import re

    for record in KINDS_TABLE.values():
        declare = getattr(factories, record.name)
        annotation = str(inspect.signature(declare).parameters["factory"].annotation)
        assert record.call in (declare.__doc__ or ""), record.name
        if record.dependencies:
            head = annotation.split(", ...]")[0]
            while "[" in head.removeprefix("Callable[Concatenate["):  # drop generic arguments
                head = "Callable[Concatenate[" + re.sub(r"\[[^\[\]]*\]", "", head.removeprefix("Callable[Concatenate["))
            given = head.removeprefix("Callable[Concatenate[").split(", ")
            expected = [
                "Iterable" if d.argument == "params" else KINDS_TABLE[d.kind].protocol_path.replace(":", ".")
                for d in record.dependencies
            ]
            assert [e.removeprefix("astra_core.protocols.") for e in expected] == given, (record.name, annotation)
        returned = annotation.split("...], ")[-1] if record.dependencies else annotation.split("[P, ")[-1]
        assert re.match(rf"([\w.]*\.)?{record.protocol_name}\b", returned), (record.name, annotation)
