# expect: arg-type
# expect-message: "ChatTransformersSystem"; expected "System[str, str]"
"""An ast sampler over text states does not take a chat system (its states are conversations)."""

from astra_ast.sampler import ASTSampler
from astra_scorers.profanity import ProfanityScorer
from astra_transformers.system import ChatTransformersSystem


def wire(system: ChatTransformersSystem) -> None:
    sampler: ASTSampler[str] = ASTSampler(system, ProfanityScorer())
    del sampler
