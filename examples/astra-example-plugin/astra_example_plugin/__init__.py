"""An example Astra Core plugin, small enough to read in one sitting.

It registers three components (see `astra_example_plugin.plugin`): the algorithm
``example-reinforce``, the sampler ``example-chain`` and the optimizer ``example-signsgd``.
docs/plugins.md walks through every file.
"""
