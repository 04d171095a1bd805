# expect: arg-type
# expect-message: incompatible type "NoJoin"; expected "System[str, str]"
"""A system without `join` is not a System, wherever one is expected."""

from collections.abc import Iterator, Sequence

import torch

from astra_core import System
from astra_core.protocols import Reduction


class NoJoin:
    def tester_logprobs(
        self, contexts: Sequence[str], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        return torch.zeros(len(contexts))

    baseline_logprobs = tester_logprobs
    target_logprobs = tester_logprobs

    def rollout_tester(self, contexts: Sequence[str]) -> list[str]:
        return list(contexts)

    def rollout_target(self, contexts: Sequence[str]) -> list[str]:
        return list(contexts)

    def advance(self, context: str, probe: str, response: str) -> str:
        return context + probe + response

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())


def use(system: System[str, str]) -> None: ...


use(NoJoin())
