"""Data-parallel training over ``torch.distributed``: the process group and the few collectives the Trainer needs.

Launch one process per device with ``torchrun`` (or ``astra train --nproc N``); `init_from_env`
joins the group torchrun describes in ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. Without those variables, and without a group initialised by the caller, every
function here is a cheap no-op for a single process (rank 0 of 1). Importing this module does
not initialise anything.

The Trainer does no collective itself: it is handed a `Collectives` (by `astra_core.assembly`,
which joins the group once), `SingleProcess` alone or `ProcessGroup` under torchrun, and calls
it unconditionally.

>>> rank(), world_size(), is_main()
(0, 1, True)
>>> share(10, rank=1, world=4)
(3, 3)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Counts add up over ranks; extremes and times (the slowest rank sets the pace) take the extreme.
_SUMMED = frozenset({"episodes", "turns", "train_examples", "reward/nonfinite"})
# Per-turn averages, weighted by each rank's number of turns.
_TURN_WEIGHTED_PREFIXES = ("reward/mean", "score/")


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is active in this process."""
    return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """Whether the environment describes a process group (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def default_backend() -> str:
    """``"cpu:gloo,cuda:nccl"`` when CUDA is available (CPU and GPU tensors both reduce), else ``"gloo"``."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group that torchrun describes; return whether training is distributed.

    Does nothing when a group is already initialised (say, by ``accelerate launch`` or the
    caller) or when ``RANK``/``WORLD_SIZE`` are not set. With CUDA available it first selects
    the GPU ``LOCAL_RANK`` (so ``device="cuda"`` means this process's GPU: call it before
    building components on GPUs) and uses NCCL for CUDA tensors and gloo for CPU ones;
    `backend` overrides that choice (for example ``"gloo"``).
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        from astra_core.errors import ConfigError

        raise ConfigError("RANK and WORLD_SIZE are set but this torch has no torch.distributed; install a full torch")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    chosen = backend or os.environ.get("ASTRA_DIST_BACKEND") or default_backend()
    dist.init_process_group(backend=chosen)
    log.info("joined process group: rank %d of %d (%s)", rank(), world_size(), chosen)
    return True


def destroy() -> None:
    """Leave the process group, if one is active (call once at the end of a distributed program)."""
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank: 0 when not distributed."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes: 1 when not distributed."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that writes metrics, checkpoints and reports."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (a no-op for one process)."""
    if world_size() > 1:
        dist.barrier()


def share(total: int, rank: int, world: int) -> tuple[int, int]:
    """The slice ``(start, count)`` of `total` items that `rank` of `world` takes: contiguous,
    the first ``total % world`` ranks take one more.

    >>> [share(5, r, 2) for r in range(2)]
    [(0, 3), (3, 2)]
    """
    base, extra = divmod(total, world)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def step_seed(seed: int, rank: int, step: int) -> int:
    """A seed for `rank`'s randomness at `step`: distinct per rank and step, derived from the run's
    seed alone, so a resumed distributed run draws exactly what the uninterrupted one would."""
    low, high = np.random.SeedSequence((seed, rank, step)).generate_state(2)
    return (int(high) << 32 | int(low)) & (2**63 - 1)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` over ranks in place (and return it); unchanged for one process."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size())
    return tensor


def all_reduce_max(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """The element-wise maximum of `values` over ranks (every rank passes as many)."""
    if world_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(v) for v in tensor.tolist()]


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum `tensors` over ranks in place, one collective per (device, dtype) bucket.

    Flattening into one buffer per bucket keeps a model's hundreds of gradients to a few
    collectives, which is what makes the reduction cheap over NCCL.
    """
    if world_size() == 1 or not tensors:
        return
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for tensor in tensors:
        buckets.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    for members in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in members])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for tensor, reduced in zip(members, flat.split_with_sizes([t.numel() for t in members]), strict=True):
            tensor.copy_(reduced.view_as(tensor))


def broadcast_parameters(parameters: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy rank `src`'s values of `parameters` into every rank's, so all ranks start identical."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for parameter in parameters:
            dist.broadcast(parameter.data, src=src)


def reduce_metrics(logs: Mapping[str, float]) -> dict[str, float]:
    """One step's metrics over all ranks (every rank must call it; only rank 0 needs the answer).

    Counts (episodes, turns, training examples, non-finite rewards) are summed; ``*/min`` and
    ``*/max`` take the extreme; ``time/*`` the slowest rank; the mean reward and score parts are
    weighted by each rank's turns; everything else is the mean over the ranks that reported it.
    """
    if world_size() == 1:
        return dict(logs)
    gathered: list[dict[str, float] | None] = [None] * world_size()
    dist.all_gather_object(gathered, dict(logs))
    return merge_metrics([g for g in gathered if g is not None])


def merge_metrics(ranks: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Merge per-rank metrics by the rules of `reduce_metrics` (the pure part, usable anywhere).

    >>> merge_metrics([{"episodes": 3.0, "loss": 1.0}, {"episodes": 2.0, "loss": 3.0}])
    {'episodes': 5.0, 'loss': 2.0}
    """
    keys = list(dict.fromkeys(k for g in ranks for k in g))
    merged: dict[str, float] = {}
    for key in keys:
        pairs = [(g[key], g.get("turns", 1.0)) for g in ranks if key in g]
        values = [v for v, _ in pairs]
        finite = [(v, w) for v, w in pairs if math.isfinite(v)]
        if key in _SUMMED:
            merged[key] = sum(values)
        elif key.endswith("/min"):
            merged[key] = min((v for v, _ in finite), default=math.nan)
        elif key.endswith("/max") or key.startswith("time/"):
            merged[key] = max((v for v, _ in finite), default=math.nan)
        elif key.startswith(_TURN_WEIGHTED_PREFIXES) and sum(w for _, w in finite) > 0:
            merged[key] = sum(v * w for v, w in finite) / sum(w for _, w in finite)
        else:
            merged[key] = sum(v for v, _ in finite) / len(finite) if finite else math.nan
    return merged


class Collectives(Protocol):
    """What the Trainer asks of the processes it runs in (see `SingleProcess`, `ProcessGroup`)."""

    @property
    def rank(self) -> int:
        """This process's rank (0 alone)."""
        ...

    @property
    def world_size(self) -> int:
        """The number of processes (1 alone)."""
        ...

    def broadcast(self, parameters: Sequence[torch.Tensor]) -> None:
        """Give every rank rank 0's values of `parameters`."""
        ...

    def average_gradients(self, parameters: Sequence[torch.Tensor], finite: bool, contributed: bool) -> bool:
        """Average the gradients of `parameters` over the ranks that `contributed` data to this
        update; return whether every rank's loss was `finite` (if not, all ranks skip it)."""
        ...

    def max(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        """The element-wise maximum of `values` over ranks."""
        ...

    def reduce_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        """One step's metrics merged over ranks (see `reduce_metrics`)."""
        ...

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        ...


class SingleProcess:
    """`Collectives` of one process: every call is the identity or a no-op."""

    rank = 0
    world_size = 1

    def broadcast(self, parameters: Sequence[torch.Tensor]) -> None:
        return None

    def average_gradients(self, parameters: Sequence[torch.Tensor], finite: bool, contributed: bool) -> bool:
        return finite

    def max(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        return [float(v) for v in values]

    def reduce_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        return dict(logs)

    def barrier(self) -> None:
        return None


class ProcessGroup:
    """`Collectives` over the active ``torch.distributed`` group: gradients averaged by hand, one
    flattened SUM per (device, dtype) bucket (DDP is not used yet)."""

    def __init__(self) -> None:
        if not is_initialized():
            raise RuntimeError("ProcessGroup needs an initialised torch.distributed group (call init_from_env)")
        self.rank, self.world_size = rank(), world_size()

    def broadcast(self, parameters: Sequence[torch.Tensor]) -> None:
        broadcast_parameters(parameters)

    def average_gradients(self, parameters: Sequence[torch.Tensor], finite: bool, contributed: bool) -> bool:
        # One small collective agrees on the contributors, the skip and which parameters have a
        # gradient anywhere (a parameter with none stays None, as it would in one process).
        device = parameters[0].device
        flags = [float(contributed), float(not finite)] + [float(p.grad is not None) for p in parameters]
        control = torch.tensor(flags, dtype=torch.float32, device=device)
        all_reduce_sum_([control])
        counts = control.tolist()
        if counts[1] > 0:
            return False
        grads = []
        for parameter, has_grad in zip(parameters, counts[2:], strict=True):
            if has_grad == 0:
                parameter.grad = None
                continue
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            grads.append(parameter.grad)
        all_reduce_sum_(grads)
        for grad in grads:
            grad.div_(max(counts[0], 1.0))
        return True

    def max(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        return all_reduce_max(values, device)

    def reduce_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        return reduce_metrics(logs)

    def barrier(self) -> None:
        barrier()


def collectives() -> Collectives:
    """`ProcessGroup` when this process is one of several in an initialised group, else `SingleProcess`."""
    return ProcessGroup() if world_size() > 1 else SingleProcess()


__all__ = [
    "Collectives",
    "ProcessGroup",
    "SingleProcess",
    "all_reduce_max",
    "all_reduce_mean",
    "all_reduce_sum_",
    "barrier",
    "broadcast_parameters",
    "collectives",
    "default_backend",
    "destroy",
    "init_from_env",
    "is_initialized",
    "is_main",
    "launched_by_torchrun",
    "merge_metrics",
    "rank",
    "reduce_metrics",
    "share",
    "step_seed",
    "world_size",
]
