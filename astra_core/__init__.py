"""Astra Core: adaptive stress testing of language models with reinforcement learning.

The public API, re-exported. Names whose modules need torch (the trainer, the harness) are
imported on first use, so ``import astra_core`` and plugin registration stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from astra_core import factories
from astra_core.config import ComponentRef, RunConfig, TrainingConfiguration, load_run_file
from astra_core.errors import (
    AstraError,
    CheckpointError,
    ComponentBuildError,
    ConfigError,
    DuplicateComponentError,
    OptionsError,
    PluginLoadError,
    TrainingError,
    UnknownComponentError,
)
from astra_core.factories import TypedFactory
from astra_core.graph import Graph, Node
from astra_core.hooks import hookimpl, hookspec
from astra_core.kinds import ComponentKind, Kind
from astra_core.protocols import (
    Algorithm,
    Callback,
    ComparingEvaluator,
    EvaluationReport,
    Evaluator,
    FeatureSystem,
    MultiEpochAlgorithm,
    Reduction,
    Sampler,
    Scorer,
    System,
    TrainerView,
    TreeSampler,
)
from astra_core.registry import ComponentInfo, Provider, Registrar, Registration, Registries, Registry
from astra_core.turns import Reads, TextScorer, Turn, text_scorer

if TYPE_CHECKING:
    from astra_core.callbacks import BaseCallback
    from astra_core.harness import Harness
    from astra_core.assembly import seed_everything
    from astra_core.trainer import Trainer

__version__ = "0.1.0"

_LAZY = {
    "Trainer": "astra_core.trainer",
    "Harness": "astra_core.harness",
    "BaseCallback": "astra_core.callbacks",
    "seed_everything": "astra_core.assembly",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'astra_core' has no attribute {name!r}")


__all__ = [
    "Algorithm",
    "AstraError",
    "BaseCallback",
    "Callback",
    "CheckpointError",
    "ComparingEvaluator",
    "ComponentBuildError",
    "ComponentInfo",
    "ComponentKind",
    "ComponentRef",
    "ConfigError",
    "DuplicateComponentError",
    "EvaluationReport",
    "Evaluator",
    "FeatureSystem",
    "Graph",
    "Harness",
    "Kind",
    "MultiEpochAlgorithm",
    "Node",
    "OptionsError",
    "PluginLoadError",
    "Provider",
    "Reads",
    "Reduction",
    "Registrar",
    "Registration",
    "Registries",
    "Registry",
    "RunConfig",
    "Sampler",
    "Scorer",
    "System",
    "TextScorer",
    "Trainer",
    "TrainerView",
    "TrainingConfiguration",
    "TrainingError",
    "TreeSampler",
    "Turn",
    "TypedFactory",
    "UnknownComponentError",
    "factories",
    "hookimpl",
    "hookspec",
    "load_run_file",
    "seed_everything",
    "text_scorer",
]
