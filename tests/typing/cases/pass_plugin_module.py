"""A plugin module as an author writes it: a typed hookimpl that registers by name and by object."""

from pydantic import BaseModel, ConfigDict

from astra_core import Registrar, hookimpl


class MyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = 0.1


@hookimpl
def astra_register(registrar: Registrar) -> None:
    registrar.algorithm("my-algo", "my_package.algo:MyAlgorithm", options="my_package.options:MyOptions")
    registrar.scorer("my-scorer", "my_package.scorer:MyScorer", options=MyOptions, summary="a scorer")
    registrar.add("optimizer", "my-sgd", "torch.optim:SGD", aliases=["mysgd"])
