"""The ast sampler takes its state type from its system: ASTSampler[Conversation] over a chat
system, ASTSampler[str] over a text one, each tied to an algorithm over the same states; a text
scorer scores turns of any state."""

from astra_algorithms.dpo import DPO
from astra_ast.sampler import ASTSampler
from astra_core import Sampler, Trainer, TrainingConfiguration
from astra_core.chat import Conversation
from astra_core.testing.toy import ToyScorer, ToySystem
from astra_scorers.llamaguard import LlamaGuardScorer
from astra_scorers.profanity import ProfanityScorer
from astra_transformers.system import ChatTransformersSystem, TransformersSystem


def chat(system: ChatTransformersSystem, guard: LlamaGuardScorer) -> None:
    sampler = ASTSampler(system, ProfanityScorer(), tree_width=2, tree_depth=2)
    typed: Sampler[Conversation, str] = sampler
    opened: list[Conversation] = [graph.context for graph in sampler.rollouts(4)]
    Trainer(TrainingConfiguration(training_steps=1), sampler, DPO(system))
    Trainer(TrainingConfiguration(training_steps=1), ASTSampler(system, guard), DPO(system))
    del typed, opened


def text(system: TransformersSystem) -> None:
    sampler: ASTSampler[str] = ASTSampler(system, ProfanityScorer())
    Trainer(TrainingConfiguration(training_steps=1), sampler, DPO(system))


toy = ToySystem()
Trainer(TrainingConfiguration(training_steps=1), ASTSampler(toy, ToyScorer()), DPO(toy))
