"""One assembly: a resolved run becomes a ready `Trainer`, in one place.

`assemble` is the only path from a validated run config to a Trainer: it joins the process
group and seeds (`prepare`, once per run, before anything random is built), builds the
components in dependency order (`astra_core.build`), attaches the algorithm's trainable
parameters to the process's `Collectives` (which may shard them: FSDP), builds the optimizer
over the parameters that hands back and the scheduler over the optimizer, and hands all of it
to the Trainer. ``astra train``, the benchmark and the soak script call
it; a Trainer wired by hand in Python (``Trainer(config, sampler, algorithm)``) asks
`prepare` and `optimizer_and_scheduler` itself, so the two paths build the same run.

>>> from astra_core.build import resolve
>>> from astra_core.config import parse_run_config
>>> from astra_core.plugins import registries
>>> config = parse_run_config({"system": "toy", "scorer": "toy", "sampler": "toy",
...                            "algorithm": "example-reinforce", "evaluator": "none",
...                            "training": {"training_steps": 2, "num_episodes_per_experience": 2}})
>>> trainer = assemble(resolve(config, registries()))
>>> [type(trainer.optimizer).__name__, len(trainer.train())]
['AdamW', 2]
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from astra_core import contracts, distributed
from astra_core.build import BuiltRun, Resolved, ResolvedRun, build, build_component
from astra_core.config import TrainingConfiguration
from astra_core.protocols import Callback
from astra_core.registry import Registries

if TYPE_CHECKING:
    from astra_core.trainer import Trainer


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's on every CUDA device too).

    >>> seed_everything(0); a = torch.rand(1); seed_everything(0); bool(torch.rand(1) == a)
    True
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def prepare(seed: int, parallelism: distributed.Parallelism = "ddp") -> distributed.Collectives:
    """Join torchrun's process group (a no-op alone) and seed every generator with `seed`.

    Call it once per run, before building anything that initialises at random (value heads, toy
    policies), so those repeat; on GPUs it also selects this rank's device first. With
    `parallelism` ``"fsdp"`` a process started alone joins a group of one, so its tester is
    sharded (over one rank) by the same code as under torchrun.
    """
    distributed.init_from_env()
    if parallelism == "fsdp":
        distributed.init_single_process()
    seed_everything(seed)
    return distributed.collectives(parallelism)


def trainable_parameters(parameters: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters a run optimises and checkpoints, in order: those that require a gradient,
    each once (first occurrence), whatever `algorithm.parameters()` repeats.

    `astra_core.checkpoint.load_weights` expects exactly this list.
    """
    seen: set[int] = set()
    unique = []
    for parameter in parameters:
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            unique.append(parameter)
    return unique


def optimizer_and_scheduler(
    config: TrainingConfiguration,
    parameters: Sequence[torch.nn.Parameter],
    registries: Registries | None = None,
    *,
    resolved: tuple[Resolved, Resolved] | None = None,
) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer over `parameters` and the LR scheduler over it, as `config` names them.

    Built from `resolved` (the run's resolved optimizer and scheduler, options validated) when
    given; else ``config.optimizer`` and ``config.scheduler_ref()`` are looked up in `registries`
    (default: the installed plugins). ``lr`` and ``total_steps`` are injected.
    """
    if resolved is None:
        if registries is None:
            from astra_core.plugins import registries as loaded

            registries = loaded()
        schedule = config.scheduler_ref()
        optimizer_info = registries.get("optimizer", config.optimizer.name)
        scheduler_info = registries.get("scheduler", schedule.name)
        resolved = (
            Resolved(optimizer_info, optimizer_info.validate(config.optimizer.options)),
            Resolved(scheduler_info, scheduler_info.validate(schedule.options)),
        )
    optimizer_ref, scheduler_ref = resolved
    # build_component checks each is of its kind and records its plugin, as for every component.
    optimizer: torch.optim.Optimizer = build_component(optimizer_ref, parameters, lr=config.lr)
    scheduler = build_component(scheduler_ref, optimizer, total_steps=config.training_steps)
    return optimizer, scheduler


def assemble(
    run: ResolvedRun,
    *,
    callbacks: Sequence[Callback] = (),
    with_evaluator: bool | None = None,
    sampler: Callable[[BuiltRun], Any] | None = None,
) -> Trainer[Any, Any, Any, Any]:
    """A ready Trainer for `run`: process group joined and seeded once, components, optimizer and
    scheduler built; `callbacks` first and the run file's after them (where the run file
    configures a callback of the same class, its own is used instead).

    `with_evaluator` builds the evaluator (default: when ``training.eval_every`` is set);
    `sampler`, given the built components, replaces the run's sampler (the benchmark's
    per-node comparison uses it).
    """
    from astra_core.trainer import Trainer

    training = run.config.training
    collectives = prepare(training.seed, training.parallelism)
    if with_evaluator is None:
        with_evaluator = training.eval_every is not None
    built = build(run, with_evaluator=with_evaluator)
    parameters = trainable_parameters(built.algorithm.parameters())
    optimizer, scheduler = None, None
    if parameters:  # none: the Trainer says so in its own words
        # FSDP replaces the parameters with shards: the optimizer must hold those.
        owners = (contracts.unwrap(built.sampler.system), contracts.unwrap(built.algorithm))
        parameters = collectives.attach(parameters, owners)
        resolved = (run.components["optimizer"], run.components["lr_scheduler"])
        optimizer, scheduler = optimizer_and_scheduler(training, parameters, resolved=resolved)
    return Trainer(
        training,
        sampler(built) if sampler is not None else built.sampler,
        built.algorithm,
        optimizer=optimizer,
        scheduler=scheduler,
        evaluator=built.evaluator,
        callbacks=[
            *(c for c in callbacks if not any(isinstance(own, type(c)) for own in built.callbacks)),
            *built.callbacks,
        ],
        collectives=collectives,
        resolved_config=run.describe(),
    )
