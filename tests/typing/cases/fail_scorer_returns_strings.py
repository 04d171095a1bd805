# expect: arg-type
# expect-message: incompatible type "Labels"; expected "Scorer[str, str]"
"""A scorer whose scores are strings does not match the Scorer protocol."""

from collections.abc import Sequence

from astra_core import Scorer


class Labels:
    def score(self, items: Sequence[str]) -> list[str]:
        return ["toxic" for _ in items]


def use(scorer: Scorer[str, str]) -> None: ...


use(Labels())
