# expect: misc
# expect-message: Cannot infer value of type parameter "StateT" of "Trainer"
"""A Trainer whose ast sampler rolls out conversations but whose algorithm trains on text states."""

from astra_algorithms.dpo import DPO
from astra_ast.sampler import ASTSampler
from astra_core import Trainer, TrainingConfiguration
from astra_scorers.profanity import ProfanityScorer
from astra_transformers.system import ChatTransformersSystem, TransformersSystem


def wire(chat: ChatTransformersSystem, text: TransformersSystem) -> None:
    Trainer(TrainingConfiguration(training_steps=1), ASTSampler(chat, ProfanityScorer()), DPO(text))
