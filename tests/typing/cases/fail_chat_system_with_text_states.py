# expect: arg-type
# expect-message: "ChatTransformersSystem"; expected "System[str, str]"
"""A chat-mode system's states are conversations: a sampler over text states does not take it."""

from astra_core import Sampler
from astra_core.testing.toy import ToyScorer
from astra_example_plugin.chain import ChainSampler
from astra_transformers.system import ChatTransformersSystem


def wire(system: ChatTransformersSystem) -> None:
    sampler: Sampler[str, str] = ChainSampler[str, str](system, ToyScorer(), depth=2, openers=["Hi"])
    del sampler
