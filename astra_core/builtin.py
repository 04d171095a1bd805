"""The core's own plugin: optimizers, LR schedulers and callbacks, registered like any other.

Everything is named by path, so loading this plugin imports neither torch nor pydantic.
"""

from __future__ import annotations

from astra_core.hooks import hookimpl
from astra_core.registry import Registrar

_OPTIM = "astra_core.optim"
_CALLBACKS = "astra_core.callbacks"


@hookimpl
def astra_register(registrar: Registrar) -> None:
    registrar.optimizer("adam", "torch.optim:Adam", options=f"{_OPTIM}:AdamOptions", summary="Adam (torch.optim.Adam)")
    registrar.optimizer(
        "adamw",
        "torch.optim:AdamW",
        options=f"{_OPTIM}:AdamWOptions",
        summary="Adam with decoupled weight decay (torch.optim.AdamW)",
    )
    registrar.optimizer(
        "sgd",
        "torch.optim:SGD",
        options=f"{_OPTIM}:SGDOptions",
        summary="stochastic gradient descent with momentum (torch.optim.SGD)",
    )
    registrar.optimizer(
        "rmsprop", "torch.optim:RMSprop", options=f"{_OPTIM}:RMSpropOptions", summary="RMSprop (torch.optim.RMSprop)"
    )
    registrar.optimizer(
        "adagrad", "torch.optim:Adagrad", options=f"{_OPTIM}:AdagradOptions", summary="Adagrad (torch.optim.Adagrad)"
    )
    registrar.scheduler(
        "constant",
        f"{_OPTIM}:constant_schedule",
        options=f"{_OPTIM}:WarmupOptions",
        summary="constant learning rate after a linear warmup",
    )
    registrar.scheduler(
        "linear",
        f"{_OPTIM}:linear_schedule",
        options=f"{_OPTIM}:DecayOptions",
        summary="linear warmup, then linear decay to min_lr_ratio",
    )
    registrar.scheduler(
        "cosine",
        f"{_OPTIM}:cosine_schedule",
        options=f"{_OPTIM}:DecayOptions",
        summary="linear warmup, then cosine decay to min_lr_ratio",
    )
    registrar.scorer(
        "toy",
        "astra_core.testing.toy:ToyScorer",
        options="astra_core.testing.options:ToyScorerOptions",
        summary="counts toxic words of a 16-word vocabulary (tests and demos)",
    )
    registrar.system(
        "toy",
        "astra_core.testing.toy:ToySystem",
        options="astra_core.testing.options:ToySystemOptions",
        summary="a tiny torch word policy and an echoing target (tests and demos)",
    )
    registrar.sampler(
        "toy",
        "astra_core.testing.toy:ToySampler",
        options="astra_core.testing.options:ToySamplerOptions",
        summary="a batched tree sampler over the toy system (tests and demos)",
    )
    registrar.callback(
        "progress",
        f"{_CALLBACKS}:ProgressBar",
        options=f"{_CALLBACKS}:ProgressOptions",
        summary="a tqdm progress bar with step, loss and mean reward",
    )
    registrar.callback(
        "jsonl",
        f"{_CALLBACKS}:MetricsJSONL",
        options=f"{_CALLBACKS}:JSONLOptions",
        summary="append every step's metrics to metrics.jsonl in the run directory",
    )
    registrar.callback(
        "tensorboard",
        f"{_CALLBACKS}:TensorBoard",
        options=f"{_CALLBACKS}:TensorBoardOptions",
        summary="TensorBoard scalars (extra: astra-core[tensorboard])",
    )
    registrar.callback(
        "wandb",
        f"{_CALLBACKS}:WandB",
        options=f"{_CALLBACKS}:WandBOptions",
        summary="Weights & Biases logging, offline mode works (extra: astra-core[wandb])",
    )
