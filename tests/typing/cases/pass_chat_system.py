"""A chat-mode system (conversation states) ties its sampler, scorer and algorithm to Conversation."""

from astra_algorithms.dpo import DPO
from astra_core import Sampler, Trainer, TrainingConfiguration
from astra_core.chat import Conversation
from astra_core.protocols import FeatureSystem, System
from astra_example_plugin.chain import ChainSampler
from astra_scorers.llamaguard import LlamaGuardScorer
from astra_transformers.system import ChatTransformersSystem


def wire(system: ChatTransformersSystem, scorer: LlamaGuardScorer) -> None:
    typed: System[Conversation, str] = system
    features: FeatureSystem[Conversation] = system
    sampler: Sampler[Conversation, str] = ChainSampler(system, scorer, depth=2, openers=[system.opening("Hi")])
    Trainer(TrainingConfiguration(training_steps=1), sampler, DPO(typed))
    del features
