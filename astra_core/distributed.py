"""Data-parallel training over ``torch.distributed``: the process group and the few collectives the Trainer needs.

Launch one process per device with ``torchrun`` (or ``astra train --nproc N``); `init_from_env`
joins the group torchrun describes in ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. Without those variables, and without a group initialised by the caller, every
function here is a cheap no-op for a single process (rank 0 of 1). Importing this module does
not initialise anything.

The Trainer does no collective itself: it is handed a `Collectives` (by `astra_core.assembly`,
which joins the group once), `SingleProcess` alone, `DataParallel` under torchrun (the
trainable parameters wrapped by torch's DistributedDataParallel) or `FullyShard` with
``training.parallelism = "fsdp"`` (the tester sharded by torch's FSDP2 ``fully_shard``), and
calls it unconditionally.

>>> rank(), world_size(), is_main()
(0, 1, True)
>>> share(10, rank=1, world=4)
(3, 3)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from astra_core.errors import ConfigError, TrainingError

Parameter = torch.nn.Parameter
log = logging.getLogger(__name__)
Parallelism = Literal["ddp", "fsdp"]
_In = TypeVar("_In")
_Out = TypeVar("_Out")

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
        raise ConfigError("RANK and WORLD_SIZE are set but this torch has no torch.distributed; install a full torch")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    chosen = backend or os.environ.get("ASTRA_DIST_BACKEND") or default_backend()
    dist.init_process_group(backend=chosen)
    log.info("joined process group: rank %d of %d (%s)", rank(), world_size(), chosen)
    return True


def init_single_process() -> None:
    """A process group of this process alone (an in-memory store, no port): what FSDP needs to
    shard over one rank when torchrun did not start the process."""
    if not is_initialized():
        from torch._C._distributed_c10d import HashStore  # torch.distributed re-exports it untyped

        dist.init_process_group(backend=default_backend(), store=HashStore(), rank=0, world_size=1)


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
    """What the Trainer asks of the processes it runs in (see `SingleProcess`, `DataParallel`).

    The Trainer `attach`es the trainable parameters once and optimises what `attach` hands
    back (FSDP replaces them with shards). Its update over a group of batches is: per batch,
    ``with accumulating(not last):`` run the loss through `forward` and backward it (every
    rank, a non-finite loss too); then `average_gradients` before clipping and stepping. Rollouts,
    evaluations and the saved tester run inside `gathered`; checkpoints read `full_state`.
    """

    @property
    def rank(self) -> int:
        """This process's rank (0 alone)."""
        ...

    @property
    def world_size(self) -> int:
        """The number of processes (1 alone)."""
        ...

    def attach(self, parameters: Sequence[Parameter], owners: Sequence[object] = ()) -> list[Parameter]:
        """Take charge of the trainable `parameters` (every rank starts from rank 0's values) and
        return the parameters to optimise in their place: the same ones, or FSDP's shards of
        them. `owners` (the system, then the algorithm) hold the modules FSDP shards. Attaching
        the returned list again returns it unchanged."""
        ...

    def gathered(self) -> AbstractContextManager[object]:
        """A context in which the model runs on this rank alone with its full weights (rollouts,
        evaluation, saving the tester): no forward inside needs the other ranks. Every rank
        enters it together."""
        ...

    def tester_state(self) -> dict[str, torch.Tensor] | None:
        """The sharded tester module's full state dict (by its own names; rank 0's is the one to
        save, other ranks get an empty one), or None where the tester is whole on every rank
        (save the module as it is). Every rank calls it."""
        ...

    def full_state(
        self, parameters: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The full weights of `parameters` by name and the optimizer's state dict with full
        tensors, as a checkpoint stores them. Every rank calls it; rank 0's answer is the one to
        write (under FSDP the other ranks get the weights and optimizer state left out)."""
        ...

    def forward(self, compute: Callable[[_In], _Out], batch: _In) -> _Out:
        """``compute(batch)``, run so that the backward of its result reduces the gradients."""
        ...

    def accumulating(self, local: bool) -> AbstractContextManager[object]:
        """A context whose backwards keep their gradients local (`local`: a batch that is not
        the last of its update), to be reduced with the next synchronised backward."""
        ...

    def average_gradients(self, parameters: Sequence[torch.Tensor], finite: bool, contributed: bool) -> bool:
        """Finish the gradient average of an update over the ranks that `contributed` data to it
        (a rank that did not takes part with a zero gradient); return whether every rank's loss
        was `finite` (if not, all ranks skip the update)."""
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

    def attach(self, parameters: Sequence[Parameter], owners: Sequence[object] = ()) -> list[Parameter]:
        return list(parameters)

    def gathered(self) -> AbstractContextManager[object]:
        return nullcontext()

    def tester_state(self) -> dict[str, torch.Tensor] | None:
        return None

    def full_state(
        self, parameters: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return dict(parameters), optimizer.state_dict()

    def forward(self, compute: Callable[[_In], _Out], batch: _In) -> _Out:
        return compute(batch)

    def accumulating(self, local: bool) -> AbstractContextManager[object]:
        return nullcontext()

    def average_gradients(self, parameters: Sequence[torch.Tensor], finite: bool, contributed: bool) -> bool:
        return finite

    def max(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        return [float(v) for v in values]

    def reduce_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        return dict(logs)

    def barrier(self) -> None:
        return None


class _Held(torch.nn.Module):
    """The trainable parameters as one module (the same tensors, not copies), whose forward runs
    the loss computation it is given: what DistributedDataParallel wraps. The model itself stays
    the system's; only the parameters that train are the engine's concern."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        super().__init__()
        self.held = torch.nn.ParameterList(parameters)

    def forward(self, compute: Callable[[Any], Any], batch: Any) -> Any:
        return compute(batch)


def _agree_on_update(parameters: Sequence[torch.Tensor], finite: bool, contributed: bool, world_size: int) -> bool:
    """After the engine reduced the gradients: whether every rank's loss was finite (else no rank
    steps), and the reduced mean rescaled from all ranks to the ranks that had data."""
    control = torch.tensor([float(contributed), float(not finite)], dtype=torch.float32, device=parameters[0].device)
    all_reduce_sum_([control])
    contributors, nonfinite = control.tolist()
    if nonfinite > 0:
        return False
    if 0 < contributors < world_size:
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.grad.mul_(world_size / contributors)
    return True


class _GroupCollectives:
    """What `DataParallel` and `FullyShard` share: the active ``torch.distributed`` group, and
    the collectives that do not touch the tester (maxima, metrics, barriers)."""

    def __init__(self) -> None:
        if not is_initialized():
            raise RuntimeError(
                f"{type(self).__name__} needs an initialised torch.distributed group (call init_from_env)"
            )
        self.rank, self.world_size = rank(), world_size()

    def max(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        return all_reduce_max(values, device)

    def reduce_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        return reduce_metrics(logs)

    def barrier(self) -> None:
        barrier()


class DataParallel(_GroupCollectives):
    """`Collectives` over the active ``torch.distributed`` group, with the trainable parameters
    wrapped by torch's ``DistributedDataParallel``: it broadcasts rank 0's values when attached,
    and its bucketed all-reduce (overlapped with backward, NCCL on GPUs) averages the gradients.

    On top of DDP only what it does not know: a rank out of data takes part in an update with a
    zero loss, and the average is taken over the ranks that had data (DDP divides by the world
    size); a non-finite loss anywhere skips the update everywhere (its NaN gradients were reduced
    like any others, and are dropped). ``find_unused_parameters`` is on, so a parameter that no
    rank used keeps no gradient, as in one process.
    """

    def __init__(self) -> None:
        super().__init__()
        self.engine: torch.nn.parallel.DistributedDataParallel | None = None
        self._parameters: list[torch.nn.Parameter] = []

    def attach(self, parameters: Sequence[Parameter], owners: Sequence[object] = ()) -> list[Parameter]:
        if self.engine is not None:
            return _same_as_attached(self._parameters, parameters)
        self._parameters = list(parameters)
        # device_ids=None: the parameters may span devices (or be on the CPU) and inputs are the
        # loss function's own business; DDP broadcasts rank 0's parameters here.
        self.engine = torch.nn.parallel.DistributedDataParallel(
            _Held(self._parameters), device_ids=None, find_unused_parameters=True, broadcast_buffers=False
        )
        return self._parameters

    def gathered(self) -> AbstractContextManager[object]:
        return nullcontext()  # every rank holds the whole model

    def tester_state(self) -> dict[str, torch.Tensor] | None:
        return None

    def full_state(
        self, parameters: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return dict(parameters), optimizer.state_dict()

    def _engine(self) -> torch.nn.parallel.DistributedDataParallel:
        if self.engine is None:
            raise RuntimeError("DataParallel.attach(parameters) must come before forward or average_gradients")
        return self.engine

    def forward(self, compute: Callable[[_In], _Out], batch: _In) -> _Out:
        result: _Out = self._engine()(compute, batch)
        return result

    def accumulating(self, local: bool) -> AbstractContextManager[object]:
        return self._engine().no_sync() if local else nullcontext()

    def average_gradients(self, parameters: Sequence[torch.Tensor], finite: bool, contributed: bool) -> bool:
        if not contributed:
            # DDP reduces inside backward: a rank without data joins that reduction with zeros.
            zero = self.forward(
                lambda held: torch.stack([(p * 0).sum().to(held[0].device) for p in held]).sum(), self._parameters
            )
            torch.autograd.backward(zero)
        return _agree_on_update(parameters, finite, contributed, self.world_size)


def _same_as_attached(attached: list[Parameter], given: Sequence[Parameter]) -> list[Parameter]:
    if [id(p) for p in given] != [id(p) for p in attached]:
        raise RuntimeError("these collectives are already attached to other parameters; use one Collectives per run")
    return attached


def _fsdp_error(problem: str, fix: str) -> ConfigError:
    return ConfigError(f'training.parallelism = "fsdp" {problem}; {fix}')


def shardable_modules(parameters: Sequence[torch.nn.Parameter], owners: Sequence[object]) -> list[torch.nn.Module]:
    """The modules `FullyShard` shards for the trainable `parameters`: the tester model (the
    ``tester`` of the first of `owners`, the system) and any module attribute of the other
    owners (the algorithm's value head) that holds the rest. Raises `ConfigError` when FSDP
    cannot take the run as it is: no ``tester`` module, a tester with frozen weights (a LoRA
    adapter over a frozen base), or a trainable parameter no module owns.
    """
    system = owners[0] if owners else None
    tester = getattr(system, "tester", None)
    if not isinstance(tester, torch.nn.Module):
        raise _fsdp_error(
            f"shards the tester model, but the system ({type(system).__name__}) has no torch.nn.Module `tester`",
            'set training.parallelism = "ddp" (the default) for this system',
        )
    frozen = [name for name, p in tester.named_parameters() if not p.requires_grad]
    if frozen:
        total = sum(1 for _ in tester.parameters())
        raise _fsdp_error(
            f"shards a tester whose weights all train, but {len(frozen)} of its {total} parameter tensors are "
            f"frozen ({frozen[0]}, ...: a LoRA adapter over a frozen base model)",
            'set training.parallelism = "ddp" (an adapter is small enough to replicate), or train the whole tester',
        )
    modules: list[torch.nn.Module] = [tester]
    owned = {id(p) for p in tester.parameters()}
    for owner in owners[1:]:
        for value in vars(owner).values() if hasattr(owner, "__dict__") else ():
            if isinstance(value, torch.nn.Module) and value is not tester:
                held = {id(p) for p in value.parameters()}
                if any(id(p) in held and id(p) not in owned for p in parameters):
                    modules.append(value)
                    owned |= held
    stray = sum(1 for p in parameters if id(p) not in owned)
    if stray:
        raise _fsdp_error(
            f"shards modules, but {stray} trainable parameter(s) belong to neither the tester nor a module "
            f"attribute of the algorithm",
            'set training.parallelism = "ddp", or hold those parameters in a torch.nn.Module attribute',
        )
    return modules


def _blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """A model's repeated blocks, each its own FSDP unit: the classes a Hugging Face model names
    in ``_no_split_modules`` (its transformer blocks); none for other modules (one unit)."""
    kinds: set[str] = set()
    for sub in module.modules():
        kinds.update(getattr(sub, "_no_split_modules", None) or ())
    return [sub for sub in module.modules() if sub is not module and type(sub).__name__ in kinds]


class _Sharded(torch.nn.Module):
    """The root FSDP unit: the sharded modules as children, and a forward that runs the loss
    computation it is given, so the root's hooks gather its own weights (embeddings, LM head)
    and reduce their gradients around whatever pieces of the models the loss calls."""

    def __init__(self, modules: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.held = torch.nn.ModuleList(modules)

    def forward(self, compute: Callable[[Any], Any], batch: Any) -> Any:
        return compute(batch)


class FullyShard(_GroupCollectives):
    """`Collectives` that shard the tester with torch's FSDP2 (``fully_shard``): each of its
    blocks is one unit, the rest of it (and an algorithm's own module) the root unit. Parameters,
    gradients and optimizer state are ``DTensor`` shards between updates, so the optimizer
    holds 1/N of its state on each of N ranks.

    Ranks roll out different episodes, with different numbers of decoding steps and batches,
    while a sharded forward is a collective every rank must join. So the weights are gathered
    whole for rollouts and evaluation (`gathered`) and, during an update, by its first forward
    and kept until its last backward reduce-scatters the gradients (``reshard_after_forward``
    off): one all-gather and one reduce-scatter per unit and update, however many batches each
    rank runs. A rank out of data joins an update with a zero-weighted pass over its last batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.root: torch.nn.Module | None = None
        self._units: list[Any] = []
        self._parameters: list[torch.nn.Parameter] = []
        self._last: tuple[Callable[[Any], Any], Any] | None = None

    def attach(self, parameters: Sequence[Parameter], owners: Sequence[object] = ()) -> list[Parameter]:
        if self.root is not None:
            return _same_as_attached(self._parameters, parameters)
        from torch.distributed.fsdp import FSDPModule, fully_shard

        modules = shardable_modules(parameters, owners)
        root = _Sharded(modules)
        for module in modules:  # every rank starts from rank 0's weights, as with DDP
            broadcast_parameters([*module.parameters(), *module.buffers()])
        by_id = {id(p): name for name, p in root.named_parameters()}
        order = [by_id[id(p)] for p in parameters]
        for module in modules:
            for block in _blocks(module):
                fully_shard(block, reshard_after_forward=False)
        fully_shard(root, reshard_after_forward=False)
        self._units = [m for m in root.modules() if isinstance(m, FSDPModule)]
        sharded_root: Any = root  # FSDP2 swaps its class in place: its methods are not nn.Module's
        # Every unit takes part in every reduce-scatter, used or not, so ranks always agree.
        sharded_root.set_reduce_scatter_unused_params(True)
        root(lambda _: None, None)  # the first forward makes the wrapper FSDP's root
        sharded_root.reshard()
        self.root = root
        sharded = dict(root.named_parameters())
        self._parameters = [sharded[name] for name in order]
        return self._parameters

    def _root(self) -> Any:
        if self.root is None:
            raise RuntimeError("FullyShard.attach(parameters, owners) must come first")
        return self.root

    def forward(self, compute: Callable[[_In], _Out], batch: _In) -> _Out:
        self._last = (compute, batch)
        result: _Out = self._root()(compute, batch)
        return result

    @contextmanager
    def _accumulating(self, local: bool) -> Iterator[None]:
        root = self._root()
        # A local backward neither reduces nor frees the gathered weights (the next batch reuses them).
        root.set_requires_gradient_sync(not local)
        root.set_reshard_after_backward(not local)
        try:
            yield
        finally:
            root.set_requires_gradient_sync(True)
            root.set_reshard_after_backward(True)

    def accumulating(self, local: bool) -> AbstractContextManager[object]:
        return self._accumulating(local)

    @contextmanager
    def _gathered(self) -> Iterator[None]:
        for unit in self._units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in self._units:
                unit.reshard()

    def gathered(self) -> AbstractContextManager[object]:
        return self._gathered() if self._units else nullcontext()

    def average_gradients(self, parameters: Sequence[torch.Tensor], finite: bool, contributed: bool) -> bool:
        if not contributed:
            # The reduce-scatter happens in backward: join it with a zero-weighted pass.
            if self._last is None:
                raise TrainingError("a rank had no training batch to join an FSDP update with; use more episodes")
            compute, batch = self._last
            with self.accumulating(False):
                out = self.forward(compute, batch)
                loss = out[0] if isinstance(out, tuple) else out
                torch.autograd.backward(loss * 0.0)
        return _agree_on_update(parameters, finite, contributed, self.world_size)

    def tester_state(self) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        tester = self._root().held[0]
        # FSDP2's state_dict() is sharded by contract; this gathers it, to the CPU of rank 0 only.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(tester, options=options)
        return {name: value for name, value in full.items() if isinstance(value, torch.Tensor)}

    def full_state(
        self, parameters: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        # One tensor gathered at a time, moved to the CPU on rank 0 and dropped elsewhere: a
        # device never holds more than one full tensor beyond its shards.
        weights = {name: t for name, t in ((n, self._full(p)) for n, p in parameters.items()) if t is not None}
        state = optimizer.state_dict()
        # state_dict() shares each parameter's state dict with the optimizer: build new ones.
        gathered: dict[Any, dict[str, Any]] = {}
        for index, values in state["state"].items():
            gathered[index] = {}
            for key, value in values.items():
                full = self._full(value) if isinstance(value, torch.Tensor) else value
                if full is not None:
                    gathered[index][key] = full
        return weights, {**state, "state": gathered}

    def _full(self, tensor: torch.Tensor) -> torch.Tensor | None:
        from torch.distributed.tensor import DTensor

        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        return full.detach().cpu() if self.rank == 0 else None


def collectives(parallelism: Parallelism = "ddp") -> Collectives:
    """`FullyShard` for ``"fsdp"`` in an initialised group (of one process too); else
    `DataParallel` when this process is one of several, else `SingleProcess`."""
    if parallelism == "fsdp" and is_initialized():
        return FullyShard()
    return DataParallel() if world_size() > 1 else SingleProcess()


__all__ = [
    "Collectives",
    "DataParallel",
    "FullyShard",
    "Parallelism",
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
    "init_single_process",
    "is_initialized",
    "is_main",
    "launched_by_torchrun",
    "merge_metrics",
    "rank",
    "reduce_metrics",
    "shardable_modules",
    "share",
    "step_seed",
    "world_size",
]
