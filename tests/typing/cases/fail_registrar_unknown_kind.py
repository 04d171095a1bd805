# expect: arg-type
# expect-message: incompatible type "Literal['optimiser']"
"""Component kinds are a closed set: a misspelt kind is a type error, not a silent registration."""

from astra_core import Registrar, hookimpl


@hookimpl
def astra_register(registrar: Registrar) -> None:
    registrar.add("optimiser", "my-sgd", "torch.optim:SGD")
