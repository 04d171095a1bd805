"""Helpers every algorithm shares: option validation, frozen log-probs, finite rewards."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError

from astra_core.errors import OptionsError
from astra_core.graph import Node
from astra_core.types import ActionT, StateT

OptionsT = TypeVar("OptionsT", bound=BaseModel)


def validated(model: type[OptionsT], name: str, values: dict[str, Any]) -> OptionsT:
    """`values` checked against `model`, so direct construction obeys the run file's rules."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in error.errors()]
        raise OptionsError("algorithm", name, problems) from None


def frozen(values: torch.Tensor) -> torch.Tensor:
    """A float32 copy outside autograd. The clone matters: a system may compute frozen log-probs
    under `torch.inference_mode`, and inference tensors cannot be saved for backward."""
    return values.detach().float().clone()


def finite(nodes: Sequence[Node[StateT, ActionT]]) -> list[Node[StateT, ActionT]]:
    """The nodes whose reward is a finite number (a NaN reward is a scorer fault: not trained on)."""
    return [node for node in nodes if math.isfinite(node.reward)]
