"""Benchmarks of Astra Core's training step (see docs/performance.md).

`bench.step_benchmark` is the entry point (``python -m bench.step_benchmark --help``);
`bench.recorder` times and counts a step from outside the components, `bench.per_node` is the
reference toolbox's one-call-per-node rollout, and `bench.reference` counts the reference's work.
"""
