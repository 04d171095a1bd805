"""The example plugin's generic components take on the system's types."""

import torch

from astra_core import Algorithm, Sampler, Trainer, TrainingConfiguration
from astra_core.testing.toy import ToyScorer, ToySystem
from astra_example_plugin.chain import ChainSampler
from astra_example_plugin.reinforce import Example, ExampleBatch, Reinforce
from astra_example_plugin.signsgd import SignSGD

system = ToySystem()
chain: Sampler[str, str] = ChainSampler(system, ToyScorer(), depth=2, openers=["hello there"])
reinforce: Algorithm[str, str, Example[str, str], ExampleBatch[str, str]] = Reinforce(system, discount=0.9)
Trainer(TrainingConfiguration(training_steps=1), chain, reinforce)
optimizer: torch.optim.Optimizer = SignSGD(system.parameters(), lr=0.01)
