"""The toy sampler is a Sampler[str, str]: it goes straight into a Harness or a Trainer."""

from astra_core import Sampler, Trainer, TrainingConfiguration
from astra_core.harness import Harness
from astra_core.testing.toy import ToyScorer, ToySampler, ToySystem
from astra_example_plugin.reinforce import Reinforce

system = ToySystem()
sampler: Sampler[str, str] = ToySampler(system, ToyScorer())
Harness(ToySampler(system, ToyScorer()), Reinforce(system))
Trainer(TrainingConfiguration(training_steps=1), ToySampler(system, ToyScorer()), Reinforce(system))
