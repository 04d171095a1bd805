"""What the ``astra`` commands share: the one-line error, run-file reading, resolving and building.

This module imports only the standard library and the light core; torch and the plugins'
heavy dependencies load inside the functions that build components.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from astra_core.errors import AstraError, ConfigError
from astra_core.rundir import RUN_FILE

if TYPE_CHECKING:
    from astra_core.build import BuiltRun, ResolvedRun
    from astra_core.config import RunConfig
    from astra_core.registry import Registries

PROG = "astra"
DEFAULT_RUN_FILE = "default_run.toml"


class UsageError(AstraError):
    """The command line itself is wrong (unknown flag, missing argument, bad value)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting, so `main` reports one line."""

    def error(self, message: str) -> NoReturn:
        where = f"{self.prog}: " if self.prog != PROG else ""
        raise UsageError(f"{where}{message} (see `{self.prog} --help`)")


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived outside the training loop (which has its own handling).

    A BaseException, so that no component's ``except Exception`` swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.run_dir: Path | None = None


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Stopped` for the block (the default would kill silently)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (give a number >= 1)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small (give a number >= 1)")
    return value


def step_count(text: str) -> int:
    """An argparse type: a number of training steps, 1 to `astra_core.config.MAX_TRAINING_STEPS`."""
    from astra_core.config import MAX_TRAINING_STEPS

    value = positive_int(text)
    if value > MAX_TRAINING_STEPS:
        raise argparse.ArgumentTypeError(f"{value} is past any sane run (give at most {MAX_TRAINING_STEPS})")
    return value


def print_error(message: str) -> None:
    """Print `message` as the one line ``astra: error: ...`` on stderr."""
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"{PROG}: error: {one_line}", file=sys.stderr, flush=True)


# --- run files --------------------------------------------------------------------------------


def default_run_text() -> tuple[str, str]:
    """The built-in default run file's text and a name for it in messages."""
    from importlib.resources import files

    resource = files("astra_core").joinpath(DEFAULT_RUN_FILE)
    return resource.read_text(encoding="utf-8"), f"built-in default run file (astra_core/{DEFAULT_RUN_FILE})"


def parse_toml(text: str, source: str) -> dict[str, Any]:
    from astra_core.config import parse_run_text

    return parse_run_text(text, source)


def run_config(data: dict[str, Any], source: str, training_overrides: Mapping[str, Any]) -> RunConfig:
    """Validate run-file data with CLI overrides applied to its ``[training]`` table."""
    from astra_core.config import parse_run_config

    training = data.setdefault("training", {})
    if isinstance(training, dict):
        given = training.get("output_dir")
        if isinstance(given, str) and not given.strip():  # checked before an override replaces it
            raise ConfigError(f"{source}: training.output_dir: is empty; name a directory or leave the key out")
        training.update(training_overrides)
    return parse_run_config(data, source)


def file_output_dir(data: Mapping[str, Any]) -> str | None:
    """The run file's own ``training.output_dir``, if it names one."""
    training = data.get("training")
    value = training.get("output_dir") if isinstance(training, Mapping) else None
    return value if isinstance(value, str) and value else None


def run_file_of(run_dir: Path, what: str) -> Path:
    """The run file a run directory was trained from; `what` names the command in the error."""
    if not run_dir.exists():
        raise ConfigError(f"{run_dir}: no such run directory ({what} needs a directory written by `astra train`)")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a directory ({what} needs a directory written by `astra train`)")
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise ConfigError(
            f"{run_dir}: not an astra run directory (no {RUN_FILE}); {what} needs a directory written by `astra train`"
        )
    return run_file


@contextmanager
def about(source: str) -> Iterator[None]:
    """Prefix errors raised inside with the run file they come from (unless they name it already)."""
    try:
        yield
    except AstraError as error:
        message = str(error)
        if message.startswith(source):
            raise
        raise ConfigError(f"{source}: {message}") from None


def registries() -> Registries:
    from astra_core import plugins as plugin_manager

    return plugin_manager.load_plugins().registries


def resolve(config: RunConfig, source: str, *, for_training: bool = True) -> ResolvedRun:
    """Look up every name and validate every option of `config`, building nothing heavy."""
    from astra_core.build import resolve as resolve_run

    with about(source):
        resolved = resolve_run(config, registries())
        _check_tree_size(resolved)
    if for_training and config.training.eval_every is not None and config.evaluator is None:
        raise ConfigError(
            f'{source}: training.eval_every is set but evaluator = "none"; name an evaluator or drop eval_every'
        )
    return resolved


def _check_tree_size(resolved: ResolvedRun) -> None:
    """Refuse a sampler tree whose turns per experience cannot fit in memory (printing the estimate)."""
    from astra_core.config import BYTES_PER_EXAMPLE, check_fits_in_memory

    sampler = resolved.components.get("sampler")
    options = sampler.options.model_dump() if sampler is not None else {}
    width, depth = options.get("tree_width"), options.get("tree_depth")
    if not (isinstance(width, int) and isinstance(depth, int)) or width < 1 or depth < 1:
        return
    episodes = resolved.config.training.num_episodes_per_experience
    # sum(width**d for d in 1..depth) without computing a huge power first
    turns, level = 0, 1
    for _ in range(depth):
        level *= width
        turns += level
        if episodes * turns * BYTES_PER_EXAMPLE > 1 << 80:
            break
    try:
        check_fits_in_memory(
            "sampler.tree_width/tree_depth", episodes * turns, BYTES_PER_EXAMPLE, "turns per experience"
        )
    except ValueError as error:
        raise ConfigError(f"{error} (num_episodes_per_experience x tree_width^1..tree_depth)") from None


def build(resolved: ResolvedRun, source: str, *, with_evaluator: bool) -> BuiltRun:
    """Build the components of a resolved run, seeded (and in the process group under torchrun)."""
    from astra_core.build import build as build_run
    from astra_core.distributed import init_from_env
    from astra_core.trainer import seed_everything

    init_from_env()  # under torchrun: join the group and pick this rank's GPU before building on "cuda"
    # Seed before building so randomly initialised parts (value heads, toy policies) repeat.
    seed_everything(resolved.config.training.seed)
    with about(source):
        return build_run(resolved, with_evaluator=with_evaluator)


# --- files ------------------------------------------------------------------------------------


def timestamped(parent: Path, prefix: str = "") -> Path:
    """A new path ``parent/<prefix><time>`` that does not exist yet."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = parent / f"{prefix}{stamp}", 1
    while candidate.exists():
        n += 1
        candidate = parent / f"{prefix}{stamp}-{n}"
    return candidate


# --- metrics ----------------------------------------------------------------------------------


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """The (steps, values) of one metric, finite numbers only."""
    steps, values = [], []
    for record in records:
        value, step = record.get(key), record.get("step")
        if isinstance(value, int | float) and isinstance(step, int | float) and math.isfinite(value):
            steps.append(float(step))
            values.append(float(value))
    return steps, values


def reward_summary(records: Sequence[Mapping[str, Any]]) -> str:
    """First-fifth against last-fifth mean reward: the one-line verdict on a run."""
    _, rewards = series(records, "reward/mean")
    if not rewards:
        return "no reward recorded"
    k = max(1, len(rewards) // 5)
    first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
    return (
        f"mean reward {first:.4f} over the first {k} step(s) -> {last:.4f} over the last {k} "
        f"({last - first:+.4f}, {len(rewards)} steps)"
    )


def metrics_table(columns: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table: one row per metric, one column per labelled set of metrics."""
    names: list[str] = []
    for metrics in columns.values():
        names.extend(k for k in metrics if k not in names)
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = [_fmt(metrics.get(name)) for metrics in columns.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
