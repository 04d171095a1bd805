"""Training configuration, component references, and the TOML run file.

A run file has a ``[training]`` table (the `TrainingConfiguration` fields) and one table per
component kind, each a registered ``name`` plus that component's options::

    sampler = "ast"          # a plain string where no options are needed (before any table)

    [training]
    lr = 3e-4
    training_steps = 64
    optimizer = { name = "adamw", weight_decay = 0.01 }

    [algorithm]
    name = "dpo"
    beta = 0.1

    [[callbacks]]
    name = "tensorboard"

Missing tables take the defaults in `RunConfig`. Unknown keys are errors.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from astra_core.errors import ConfigError


class ComponentRef(BaseModel):
    """A registered component's name and the options to build it with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | ComponentRef) -> ComponentRef:
        """From ``"dpo"``, ``{"name": "dpo", "beta": 0.1}`` or a `ComponentRef`."""
        if isinstance(value, ComponentRef):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, Mapping):
            if "name" not in value:
                raise ValueError("a component table needs a 'name' key naming a registered component")
            options = {k: v for k, v in value.items() if k != "name"}
            if "options" in options and len(options) == 1 and isinstance(options["options"], Mapping):
                options = dict(options["options"])
            name = value["name"]
            if not isinstance(name, str):
                raise ValueError(f"'name' must be a string, got {name!r}")
            return cls(name=name, options=options)
        raise ValueError(f"expected a component name or a table with 'name', got {value!r}")

    def to_toml_value(self) -> str | dict[str, Any]:
        """The form a run file would use: a plain name, or a table with options."""
        return self.name if not self.options else {"name": self.name, **self.options}


# Whole numbers are strict: a boolean (`batch_size = true`) or a float (`training_steps = 1e3`)
# is an error, never silently 1 or 1000.
Count = Annotated[int, Strict()]
# torch's generators take seeds below 2**64.
MAX_SEED = 2**64 - 1
# Past any sane run (a million days at one step a second would still be shorter).
MAX_TRAINING_STEPS = 10**9
# A floor on what one episode (or one example in a batch) costs in memory: its text, its tree
# node and its share of the forward pass. Sizes whose floor alone exceeds the machine's memory
# are refused before anything is built.
BYTES_PER_EXAMPLE = 64 * 1024
# A run file nested deeper than this is not a run file (and would exhaust the parser's stack).
MAX_NESTING = 32


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.0f} PiB"


def check_fits_in_memory(key: str, count: int, bytes_each: int, what: str = "examples") -> None:
    """Raise ValueError when `count` `what` at `bytes_each` bytes cannot fit in this machine's memory.

    The estimate is a floor, so a refusal is certain to be right; the message prints it.
    """
    memory = physical_memory()
    need = count * bytes_each
    if memory is not None and need > memory:
        raise ValueError(
            f"{key} = {count} {what} need at least {_size(need)} of memory (about {_size(bytes_each)} each), "
            f"more than this machine's {_size(memory)}; lower it"
        )


def readable_file(value: str) -> str:
    """`value`, if it names an existing, readable regular file; else a ValueError saying why.

    For options that name a file to read, so that `astra validate` finds a missing file as
    `astra train` would: ``Annotated[str, AfterValidator(readable_file)]`` (`ReadableFile`).
    """
    path = Path(value).expanduser()
    if not value.strip():
        raise ValueError("is empty; give the path of a file")
    if not path.exists():
        raise ValueError(f"{value!r} does not exist (relative paths start where astra runs)")
    if not path.is_file():
        raise ValueError(f"{value!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{value!r} is not readable (check its permissions)")
    return value


ReadableFile = Annotated[str, AfterValidator(readable_file)]
"""An options-model type for a file a component reads: it must exist and be readable."""


def _ref(value: Any) -> ComponentRef:
    return ComponentRef.parse(value)


class TrainingConfiguration(BaseModel):
    """How to train. Every field takes effect; the defaults keep the classic behaviour.

    >>> TrainingConfiguration(batch_size=4).batch_size
    4
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    lr: float = Field(default=3e-3, gt=0, allow_inf_nan=False, description="base learning rate")
    batch_size: Count = Field(default=16, ge=1, description="training examples per DataLoader batch")
    optimizer: ComponentRef = Field(
        default_factory=lambda: ComponentRef(name="adamw"),
        description="registered optimizer name, or a table with options",
    )
    gradient_accumulation_steps: Count = Field(default=1, ge=1, description="batches per optimizer update")
    training_steps: Count = Field(
        default=1024, ge=1, le=MAX_TRAINING_STEPS, description="experiences to collect and train on"
    )
    num_episodes_per_experience: Count = Field(default=8, ge=1, description="rollouts per experience")
    seed: Count = Field(default=0, ge=0, le=MAX_SEED, description="seeds rollouts, shuffling and initialisation")
    max_grad_norm: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="clip gradient norm; None: no clipping"
    )
    lr_scheduler: ComponentRef = Field(
        default_factory=lambda: ComponentRef(name="constant"),
        description="registered scheduler, stepped once per training step",
    )
    warmup_steps: Count = Field(default=0, ge=0, description="linear warmup steps for the scheduler")
    shuffle: StrictBool = Field(default=True, description="shuffle each experience with a seeded generator")
    shuffle_by: Literal["example", "episode"] = Field(
        default="episode",
        description="what shuffle permutes: whole episodes, whose examples stay together in batch order, or "
        "single examples",
    )
    checkpoint_every: Count | None = Field(
        default=None, ge=1, description="checkpoint every N steps (needs output_dir)"
    )
    keep_checkpoints: Count = Field(default=2, ge=1, description="how many recent checkpoints to keep")
    output_dir: str | None = Field(
        default=None, min_length=1, description="run directory for checkpoints, metrics, reports"
    )
    eval_every: Count | None = Field(default=None, ge=1, description="evaluate every N steps (needs an evaluator)")
    samples_every: Count | None = Field(
        default=10, ge=1, description="write rollouts of every Nth step to samples.jsonl (needs output_dir); None: off"
    )
    samples_per_step: Count = Field(default=2, ge=1, description="rollouts of a sampled step written to samples.jsonl")
    max_nonfinite_in_a_row: Count = Field(
        default=10, ge=1, description="stop after this many non-finite losses in a row"
    )
    parallelism: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description='over several processes: "ddp" replicates the tester, "fsdp" shards it (FSDP2)',
    )

    @field_validator("lr", "max_grad_norm", mode="before")
    @classmethod
    def _no_bool_as_float(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        return value

    @field_validator("batch_size", "num_episodes_per_experience")
    @classmethod
    def _fits_in_memory(cls, value: int, info: ValidationInfo) -> int:
        check_fits_in_memory(f"training.{info.field_name}", value, BYTES_PER_EXAMPLE)
        return value

    @field_validator("optimizer", "lr_scheduler", mode="before")
    @classmethod
    def _component(cls, value: Any) -> ComponentRef:
        return _ref(value)

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfiguration:
        # checkpoint_every without output_dir is checked by the Trainer, not here: `astra train`
        # gives every run a directory, so a run file may leave output_dir out.
        given = self.lr_scheduler.options.get("warmup_steps")
        if self.warmup_steps and given is not None and given != self.warmup_steps:
            raise ValueError(
                f"warmup_steps is {self.warmup_steps} but lr_scheduler.warmup_steps is {given}; set only one"
            )
        return self

    def scheduler_ref(self) -> ComponentRef:
        """The scheduler reference with ``warmup_steps`` folded into its options (what gets built)."""
        options = dict(self.lr_scheduler.options)
        if self.warmup_steps:
            options.setdefault("warmup_steps", self.warmup_steps)
        return ComponentRef(name=self.lr_scheduler.name, options=options)


DEFAULT_COMPONENTS: dict[str, str] = {
    "scorer": "profanity",
    "system": "transformers",
    "sampler": "ast",
    "algorithm": "dpo",
    "evaluator": "ast",
}


class RunConfig(BaseModel):
    """A whole run: training settings plus the components, by registered name."""

    model_config = ConfigDict(extra="forbid")

    training: TrainingConfiguration = Field(default_factory=TrainingConfiguration)
    scorer: ComponentRef = Field(default_factory=lambda: ComponentRef(name=DEFAULT_COMPONENTS["scorer"]))
    system: ComponentRef = Field(default_factory=lambda: ComponentRef(name=DEFAULT_COMPONENTS["system"]))
    sampler: ComponentRef = Field(default_factory=lambda: ComponentRef(name=DEFAULT_COMPONENTS["sampler"]))
    algorithm: ComponentRef = Field(default_factory=lambda: ComponentRef(name=DEFAULT_COMPONENTS["algorithm"]))
    evaluator: ComponentRef | None = Field(default_factory=lambda: ComponentRef(name=DEFAULT_COMPONENTS["evaluator"]))
    callbacks: list[ComponentRef] = Field(default_factory=list)

    @field_validator("scorer", "system", "sampler", "algorithm", "evaluator", mode="before")
    @classmethod
    def _component(cls, value: Any) -> ComponentRef | None:
        return None if value is None or value == "none" else _ref(value)

    @field_validator("callbacks", mode="before")
    @classmethod
    def _callbacks(cls, value: Any) -> list[ComponentRef]:
        if not isinstance(value, list):
            raise ValueError("callbacks must be a list of names or [[callbacks]] tables")
        return [_ref(item) for item in value]

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what a run directory records)."""
        data: dict[str, Any] = {"training": self.training.model_dump(mode="json")}
        for key in ("optimizer", "lr_scheduler"):
            data["training"][key] = getattr(self.training, key).to_toml_value()
        for kind in ("scorer", "system", "sampler", "algorithm", "evaluator"):
            ref = getattr(self, kind)
            data[kind] = ref.to_toml_value() if ref is not None else "none"
        data["callbacks"] = [ref.to_toml_value() for ref in self.callbacks]
        return data


def _model_at(location: tuple[Any, ...]) -> tuple[type[BaseModel], str] | None:
    """The model whose keys an unknown key at `location` was checked against, and how to name them."""
    if len(location) == 1:
        return RunConfig, "top-level key"
    if len(location) == 2 and location[0] == "training":
        return TrainingConfiguration, "[training] key"
    return None


def _unknown_key(location: tuple[Any, ...]) -> str:
    """'unknown key' with the closest valid keys (difflib) and every valid key, on one line."""
    found = _model_at(location)
    if found is None:
        return "unknown key (check the spelling; see docs/configuration.md for valid keys)"
    model, where = found
    key, valid = str(location[-1]), list(model.model_fields)
    close = difflib.get_close_matches(key, valid, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown key (there is no {where} {key!r}); {hint}valid {where}s: {', '.join(valid)}"


def _describe(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"] if p not in ("function-after",))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = _unknown_key(tuple(p for p in item["loc"] if p != "function-after"))
        problems.append(f"{location}: {message}" if location else message)
    return f"{source}: " + "; ".join(problems)


def parse_run_config(data: Mapping[str, Any], source: str = "run config") -> RunConfig:
    """Validate run-file data; errors name `source` and every bad key."""
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


MAX_RUN_FILE_BYTES = 1 << 20


def read_run_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML run file into plain data, without validating it against `RunConfig`.

    Checks that `path` is a readable UTF-8 file of at most `MAX_RUN_FILE_BYTES` holding valid
    TOML; each failure is a one-line `ConfigError` naming the file. Use it where the data is
    changed before validation (the CLI applies its overrides), then call `parse_run_config`.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such run file (give the path to a .toml run file)")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file (give the path to a .toml run file)")
    if path.stat().st_size > MAX_RUN_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_RUN_FILE_BYTES} bytes; a run file is a small TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; a run file is a UTF-8 TOML file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    return parse_run_text(text, str(path))


def parse_run_text(text: str, source: str) -> dict[str, Any]:
    """Parse run-file TOML `text` into plain data; a syntax error is a `ConfigError` naming `source`."""
    depth = _bracket_depth(text)
    if depth > MAX_NESTING:
        raise ConfigError(
            f"{source}: arrays or inline tables nested {depth} deep, more than the {MAX_NESTING} a run file may use"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: invalid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to parse; a run file is a flat TOML file") from None


def _bracket_depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings and comments (an upper bound is enough)."""
    depth = deepest = 0
    quote: str | None = None
    comment = escaped = False
    for char in text:
        if comment:
            comment = char != "\n"
        elif quote is not None:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote or (char == "\n" and quote in "\"'"):
                quote = None if char == quote else quote
        elif char == "#":
            comment = True
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def load_run_file(path: str | Path) -> RunConfig:
    """Read and validate a TOML run file (`read_run_file`, then `parse_run_config`)."""
    return parse_run_config(read_run_file(path), str(path))
