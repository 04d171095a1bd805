"""The plugin registers every algorithm by name, lightly, with validated options."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from astra_algorithms import plugin
from astra_algorithms.dpo import DPO
from astra_algorithms.grpo import GRPO
from astra_algorithms.ipo import IPO
from astra_algorithms.ppo import PPO
from astra_core.errors import OptionsError
from astra_core.plugins import discover
from astra_core.registry import Registries
from astra_core.testing.toy import ToySystem


def registries() -> Registries:
    """Via the entry point when the distribution is installed, else registered in-process."""
    found = discover().registries
    return found if "dpo" in found["algorithm"] else discover(extra=[("algorithms", plugin)]).registries


def test_registration_imports_no_torch() -> None:
    code = (
        "import sys, astra_algorithms.plugin\n"
        "from astra_core.plugins import discover\n"
        "names = discover().registries['algorithm'].names()\n"
        "if 'dpo' not in names:\n"
        "    names = discover(extra=[('algorithms', astra_algorithms.plugin)]).registries['algorithm'].names()\n"
        "assert {'dpo', 'ipo', 'ppo', 'grpo'} <= set(names), names\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    # Only this plugin (and the core's), so another plugin's imports cannot blur the result.
    env = {**os.environ, "ASTRA_PLUGINS": "algorithms"}
    env.pop("ASTRA_DISABLE_PLUGINS", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("name", "cls"), [("dpo", DPO), ("ipo", IPO), ("ppo", PPO), ("grpo", GRPO)])
def test_each_algorithm_builds_by_name(name: str, cls: type) -> None:
    info = registries().get("algorithm", name)
    algorithm = info.build(ToySystem(), options={})
    assert isinstance(algorithm, cls)


def test_options_from_a_run_file_reach_the_algorithm() -> None:
    info = registries().get("algorithm", "dpo")
    algorithm = info.build(ToySystem(), options={"beta": 0.25, "label_smoothing": 0.1})
    assert (algorithm.beta, algorithm.label_smoothing) == (0.25, 0.1)


def test_unknown_option_names_the_valid_ones() -> None:
    info = registries().get("algorithm", "ppo")
    with pytest.raises(OptionsError, match=r"unknown option 'clip'.*clip_range"):
        info.validate({"clip": 0.2})


def test_options_models_match_the_constructors() -> None:
    import inspect

    for name, cls in [("dpo", DPO), ("ipo", IPO), ("ppo", PPO), ("grpo", GRPO)]:
        model = registries().get("algorithm", name).options_model()
        signature = inspect.signature(cls.__init__)
        parameters = {p: v.default for p, v in signature.parameters.items() if p not in ("self", "system")}
        defaults = {field: info.default for field, info in model.model_fields.items()}
        assert parameters == defaults, name
