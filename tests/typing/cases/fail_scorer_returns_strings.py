# expect: arg-type
# expect-message: incompatible type "Labels"; expected "Scorer[str, str]"
"""A scorer whose scores are strings does not match the Scorer protocol."""

from collections.abc import Sequence

from astra_core import Reads, Scorer, Turn


class Labels:
    reads: Reads = "text"

    def score(self, turns: Sequence[Turn[str, str]]) -> list[str]:
        return ["toxic" for _ in turns]


def use(scorer: Scorer[str, str]) -> None: ...


use(Labels())
