"""The ``astra`` command line: ``plugins``, ``validate``, ``train``, ``evaluate`` and ``report``.

Every user mistake (an `AstraError` or a usage error) becomes one line on stderr,
``astra: error: <message>``, and exit code 2; never a traceback. The module imports only the
standard library and the light core at start-up, so ``astra --help`` and ``astra plugins`` stay
fast: torch and the plugins' heavy dependencies load inside the commands that build components.

>>> main(["--version"])  # doctest: +SKIP
astra 0.1.0
0
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from astra_core.errors import AstraError, CheckpointError, ConfigError
from astra_core.types import json_safe

if TYPE_CHECKING:
    from astra_core.build import BuiltRun, ResolvedRun
    from astra_core.config import RunConfig
    from astra_core.protocols import EvaluationReport
    from astra_core.registry import Registries
    from astra_core.trainer import Trainer

PROG = "astra"
DEFAULT_RUN_FILE = "default_run.toml"
RUN_FILE = "run.toml"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
# What marks a directory as written by `astra train` (so --overwrite may delete it).
_RUN_MARKERS = (RUN_FILE, CONFIG_FILE, METRICS_FILE, "checkpoints")
# OSError numbers that mean the run directory's disk failed us (full, read-only, gone).
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


class UsageError(AstraError):
    """The command line itself is wrong (unknown flag, missing argument, bad value)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting, so `main` reports one line."""

    def error(self, message: str) -> NoReturn:
        where = f"{self.prog}: " if self.prog != PROG else ""
        raise UsageError(f"{where}{message} (see `{self.prog} --help`)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (give a number >= 1)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small (give a number >= 1)")
    return value


# --- entry point ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``astra`` command line with `argv` (default: ``sys.argv[1:]``); return the exit code.

    User mistakes print ``astra: error: <one line>`` on stderr and return 2. An interrupted
    training run returns 0 (SIGINT) or 143 (SIGTERM) after checkpointing.
    """
    parser = _parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        code: int = args.handler(args)
        return code
    except SystemExit as stop:  # --help and --version
        return stop.code if isinstance(stop.code, int) else 0
    except AstraError as error:
        _print_error(str(error))
        return 2
    except KeyboardInterrupt:
        _print_error("interrupted (a second Ctrl-C stops at once, without a checkpoint)")
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    # A rank that exits with gloo still running aborts ("terminate called without an active exception").
    if "astra_core.distributed" not in sys.modules:
        return
    from astra_core import distributed

    if distributed.is_initialized():
        distributed.destroy()


def _print_error(message: str) -> None:
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"{PROG}: error: {one_line}", file=sys.stderr, flush=True)


def _parser() -> _Parser:
    from astra_core import __version__

    parser = _Parser(
        prog=PROG,
        description="Adaptive stress testing of language models with reinforcement learning.",
        epilog="Run `astra COMMAND --help` for a command's options; docs/cli.md has examples.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    plugins = commands.add_parser("plugins", help="list plugins and every component they register")
    plugins.add_argument("--json", action="store_true", help="print machine-readable JSON")
    plugins.set_defaults(handler=_cmd_plugins)

    validate = commands.add_parser("validate", help="check a run file and print its resolved config")
    validate.add_argument("run_file", metavar="RUN.toml", help="the run file to check")
    validate.set_defaults(handler=_cmd_validate)

    train = commands.add_parser("train", help="train a tester (the built-in default run without RUN.toml)")
    train.add_argument("run_file", metavar="RUN.toml", nargs="?", help="run file (default: the built-in one)")
    train.add_argument("--output", metavar="DIR", help="run directory (default: training.output_dir or runs/<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its newest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--steps", metavar="N", type=_positive_int, help="override training.training_steps")
    train.add_argument("--nproc", metavar="N", type=_positive_int, help="train data-parallel in N processes (torchrun)")
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a trained tester (or the base model)")
    evaluate.add_argument("target", metavar="TARGET", help="a run directory, or a run file for the untrained base")
    evaluate.add_argument("--checkpoint", metavar="STEP_DIR", help="checkpoint to load (default: the newest)")
    evaluate.add_argument("--base", action="store_true", help="evaluate the untrained base tester only")
    evaluate.add_argument("--compare-base", action="store_true", help="evaluate base and trained tester together")
    evaluate.add_argument("--prompts", metavar="SPEC", help="override the evaluator's prompts option")
    evaluate.add_argument("--num-prompts", metavar="N", type=_positive_int, help="override its num_prompts option")
    evaluate.add_argument("--output", metavar="DIR", help="where evaluation.json/.md go (default: RUN_DIR/eval)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    report = commands.add_parser("report", help="write RUN_DIR/report.md with plots of the metrics")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `astra train`")
    report.set_defaults(handler=_cmd_report)
    return parser


# --- astra plugins ----------------------------------------------------------------------------


def _cmd_plugins(args: argparse.Namespace) -> int:
    from astra_core import plugins as plugin_manager

    loaded = plugin_manager.load_plugins()
    plugin_rows = [
        {"name": p.name, "distribution": p.distribution, "version": p.version, "status": p.status, "error": p.error}
        for p in loaded.plugins
    ]
    components: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    for registry in loaded.registries:
        clashing = registry.conflicts()
        for info in registry:
            components.append(
                {
                    "kind": info.kind,
                    "name": info.name,
                    "aliases": list(info.aliases),
                    "provider": str(info.provider),
                    "plugin": info.provider.plugin,
                    "distribution": info.provider.distribution,
                    "version": info.provider.version,
                    "summary": info.summary.splitlines()[0] if info.summary else "",
                    "conflict": any(n in clashing for n in (info.name, *info.aliases)),
                }
            )
        for name, infos in sorted(clashing.items()):
            conflicts.append({"kind": registry.kind, "name": name, "providers": [str(i.provider) for i in infos]})
    if args.json:
        print(json.dumps({"plugins": plugin_rows, "components": components, "conflicts": conflicts}, indent=2))
        return 0

    print("plugins:")
    width = max((len(str(p["name"])) for p in plugin_rows), default=4)
    for p in plugin_rows:
        state = "loaded" if p["status"] == "loaded" else str(p["status"]).upper()
        error = f": {p['error']}" if p["error"] else ""
        print(f"  {p['name']!s:<{width}}  {p['distribution']} {p['version']}  {state}{error}")
    name_width = max((len(c["name"]) for c in components), default=4)
    kind = None
    for c in components:
        if c["kind"] != kind:
            kind = c["kind"]
            print(f"{kind}s:")
        aliases = f" (aliases: {', '.join(c['aliases'])})" if c["aliases"] else ""
        flag = "  CONFLICT" if c["conflict"] else ""
        print(f"  {c['name']:<{name_width}}  {c['provider']}{flag}  {c['summary']}{aliases}")
    if conflicts:
        print("conflicts (a name registered by more than one plugin; disable one with ASTRA_DISABLE_PLUGINS):")
        for conflict in conflicts:
            print(f"  {conflict['kind']} {conflict['name']!r}: {' and '.join(conflict['providers'])}")
    broken = [p for p in plugin_rows if p["status"] == "broken"]
    if broken:
        print(f"{len(broken)} plugin(s) failed to load; set ASTRA_DEBUG_PLUGINS=1 for their tracebacks")
    return 0


# --- run files --------------------------------------------------------------------------------


def _default_run_text() -> tuple[str, str]:
    from importlib.resources import files

    resource = files("astra_core").joinpath(DEFAULT_RUN_FILE)
    return resource.read_text(encoding="utf-8"), f"built-in default run file (astra_core/{DEFAULT_RUN_FILE})"


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    from astra_core.config import parse_run_text

    return parse_run_text(text, source)


def _run_config(data: dict[str, Any], source: str, training_overrides: Mapping[str, Any]) -> RunConfig:
    """Validate run-file data with CLI overrides applied to its ``[training]`` table."""
    from astra_core.config import parse_run_config

    training = data.setdefault("training", {})
    if isinstance(training, dict):
        training.update(training_overrides)
    return parse_run_config(data, source)


def _file_output_dir(data: Mapping[str, Any]) -> str | None:
    training = data.get("training")
    value = training.get("output_dir") if isinstance(training, Mapping) else None
    return value if isinstance(value, str) and value else None


@contextmanager
def _about(source: str) -> Iterator[None]:
    """Prefix errors raised inside with the run file they come from (unless they name it already)."""
    try:
        yield
    except AstraError as error:
        message = str(error)
        if message.startswith(source):
            raise
        raise ConfigError(f"{source}: {message}") from None


def _registries() -> Registries:
    from astra_core import plugins as plugin_manager

    return plugin_manager.load_plugins().registries


def _resolve(config: RunConfig, source: str, *, for_training: bool = True) -> ResolvedRun:
    """Look up every name and validate every option of `config`, building nothing heavy."""
    from astra_core.build import resolve

    with _about(source):
        resolved = resolve(config, _registries())
    if for_training and config.training.eval_every is not None and config.evaluator is None:
        raise ConfigError(
            f'{source}: training.eval_every is set but evaluator = "none"; name an evaluator or drop eval_every'
        )
    return resolved


# --- astra validate ---------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    from astra_core.config import read_run_file

    path = Path(args.run_file)
    source = str(path)
    data = read_run_file(path)
    # `astra train` gives every run a directory, so a file may set checkpoint_every without one.
    overrides = {} if _file_output_dir(data) else {"output_dir": "runs/<timestamp>"}
    resolved = _resolve(_run_config(data, source, overrides), source)
    print(json.dumps(resolved.describe(), indent=2))
    print(f"{source}: valid", file=sys.stderr)
    return 0


# --- astra train ------------------------------------------------------------------------------


def _timestamped(parent: Path, prefix: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = parent / f"{prefix}{stamp}", 1
    while candidate.exists():
        n += 1
        candidate = parent / f"{prefix}{stamp}-{n}"
    return candidate


def _is_run_dir(path: Path) -> bool:
    return any((path / marker).exists() for marker in _RUN_MARKERS)


def _check_output_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a directory; pass --output DIR with a directory path")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    if not overwrite:
        raise ConfigError(
            f"{run_dir}: output directory exists and is not empty; pass --resume {run_dir} to continue it, "
            f"--overwrite to replace it, or --output DIR for a new run"
        )
    if not _is_run_dir(run_dir):
        raise ConfigError(
            f"{run_dir}: refusing to --overwrite a non-empty directory that is not an astra run "
            f"(no {RUN_FILE}, {CONFIG_FILE}, {METRICS_FILE} or checkpoints/); choose another --output"
        )


def _build(resolved: ResolvedRun, source: str, *, with_evaluator: bool) -> BuiltRun:
    from astra_core.build import build
    from astra_core.distributed import init_from_env
    from astra_core.trainer import seed_everything

    init_from_env()  # under torchrun: join the group and pick this rank's GPU before building on "cuda"
    # Seed before building so randomly initialised parts (value heads, toy policies) repeat.
    seed_everything(resolved.config.training.seed)
    with _about(source):
        return build(resolved, with_evaluator=with_evaluator)


def _make_trainer(resolved: ResolvedRun, source: str) -> Trainer[Any, Any, Any, Any]:
    from astra_core.callbacks import MetricsJSONL, ProgressBar
    from astra_core.trainer import Trainer

    config = resolved.config
    built = _build(resolved, source, with_evaluator=config.training.eval_every is not None)
    callbacks: list[Any] = []
    # A run file may configure these itself (say, to turn the bar off); then do not add a second.
    if not any(isinstance(c, ProgressBar) for c in built.callbacks):
        callbacks.append(ProgressBar())
    if not any(isinstance(c, MetricsJSONL) for c in built.callbacks):
        callbacks.append(MetricsJSONL())
    callbacks.extend(built.callbacks)
    with _about(source):
        return Trainer(
            config.training,
            built.sampler,
            built.algorithm,
            evaluator=built.evaluator,
            callbacks=callbacks,
            registries=_registries(),
            resolved_config=resolved.describe(),
        )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _describe_default(config: RunConfig) -> str:
    parts = [f"{kind} {getattr(config, kind).name!r}" for kind in ("system", "scorer", "sampler", "algorithm")]
    return f"{', '.join(parts)}; {config.training.training_steps} steps"


def _cmd_train(args: argparse.Namespace) -> int:
    if args.nproc is not None and "WORLD_SIZE" not in os.environ:
        return _relaunch_under_torchrun(args)
    if args.resume is not None:
        return _resume(args)
    if args.run_file is None:
        text, source = _default_run_text()
        data = _parse_toml(text, source)
    else:
        from astra_core.config import read_run_file

        source = str(Path(args.run_file))
        data = read_run_file(source)
        text = Path(source).read_text(encoding="utf-8")  # copied into the run directory as is
    file_dir = _file_output_dir(data)
    run_dir = Path(args.output) if args.output else Path(file_dir) if file_dir else _timestamped(Path("runs"))
    overrides: dict[str, Any] = {"output_dir": str(run_dir)}
    if args.steps is not None:
        overrides["training_steps"] = args.steps
    config = _run_config(data, source, overrides)
    if args.run_file is None:
        print(f"no run file given: training the built-in default ({_describe_default(config)})", flush=True)
    resolved = _resolve(config, source)
    if not _is_main_process():
        return _train_other_rank(_make_trainer(resolved, source))
    _check_output_dir(run_dir, args.overwrite)
    _check_writable(run_dir)
    trainer = _make_trainer(resolved, source)
    # Only now, with every component built, touch the file system.
    try:
        if args.overwrite and run_dir.is_dir():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / CONFIG_FILE, resolved.describe())
        (run_dir / RUN_FILE).write_text(text, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{run_dir}: cannot write the run directory: {error.strerror or error}") from None
    print(f"training into {run_dir} ({config.training.training_steps} steps)", flush=True)
    return _run_training(trainer, run_dir)


def _saved_steps(run_dir: Path) -> int | None:
    """training_steps as the run last recorded it (so --steps survives a resume)."""
    try:
        value = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))["training"]["training_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and value >= 1 else None


def _run_file_of(run_dir: Path, what: str) -> Path:
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


def _resume(args: argparse.Namespace) -> int:
    from astra_core import checkpoint as ckpt
    from astra_core.config import read_run_file

    run_dir = Path(args.resume)
    if args.run_file is not None:
        raise UsageError(f"give either RUN.toml or --resume {run_dir}, not both (a run resumes with its own run.toml)")
    if args.overwrite:
        raise UsageError("--overwrite and --resume contradict each other; choose one")
    if args.output is not None and Path(args.output).resolve() != run_dir.resolve():
        raise UsageError(
            f"--output {args.output} differs from --resume {run_dir}; a resumed run stays in its directory"
        )
    run_file = _run_file_of(run_dir, "--resume")
    source = str(run_file)
    data = read_run_file(run_file)
    steps = args.steps if args.steps is not None else _saved_steps(run_dir)
    overrides: dict[str, Any] = {"output_dir": str(run_dir)}
    if steps is not None:
        overrides["training_steps"] = steps
    resolved = _resolve(_run_config(data, source, overrides), source)
    if not _is_main_process():
        return _train_other_rank(_make_trainer(resolved, source), resume=run_dir)
    if ckpt.latest_checkpoint(run_dir) is None:
        found = ckpt.list_checkpoints(run_dir)
        why = "it has no checkpoint"
        if found:
            try:
                ckpt.verify(found[-1])
            except CheckpointError as error:
                why = f"every checkpoint is corrupted ({error})"
        raise CheckpointError(
            f"{run_dir}: cannot resume: {why}; start again with `astra train {run_file} --overwrite --output {run_dir}`"
        )
    _check_writable(run_dir)
    trainer = _make_trainer(resolved, source)
    newest = ckpt.list_checkpoints(run_dir)[-1]
    checkpoint = trainer.resume(run_dir)
    if checkpoint != newest:
        print(f"warning: {newest} is corrupted; resuming from the older {checkpoint}", file=sys.stderr)
    total = trainer.config.training_steps
    print(f"resuming {run_dir} from checkpoint {checkpoint} (step {trainer.global_step} of {total})", flush=True)
    _write_json(run_dir / CONFIG_FILE, resolved.describe())
    return _run_training(trainer, run_dir)


def _check_writable(run_dir: Path) -> None:
    """A probe write, before anything is built: a full disk or unwritable directory fails now, not at step K."""
    from astra_core.checkpoint import check_writable

    check_writable(run_dir)


def _run_training(trainer: Trainer[Any, Any, Any, Any], run_dir: Path) -> int:
    from astra_core.trainer import TrainingInterrupted

    try:
        trainer.train()
    except TrainingInterrupted as stop:
        name = signal.Signals(stop.signum).name
        where = f"checkpoint written to {stop.checkpoint}" if stop.checkpoint else "no checkpoint written"
        print(f"{name}: stopped after step {trainer.global_step} of {trainer.config.training_steps}; {where}")
        print(f"resume with: {PROG} train --resume {run_dir}", flush=True)
        return 0 if stop.signum == signal.SIGINT else 128 + stop.signum
    except OSError as error:
        # A disk that fills up (or turns read-only) mid-run, say under metrics.jsonl: one line,
        # not a traceback. A failed checkpoint is already a CheckpointWriteError saying as much.
        if isinstance(error, AstraError) or error.errno not in _DISK_ERRNOS:
            raise
        from astra_core.checkpoint import describe_os_error

        where = f" ({error.filename})" if error.filename else ""
        raise AstraError(
            f"{run_dir}: training stopped at step {trainer.global_step}: {describe_os_error(error)}{where}; "
            f"free space or make it writable, then: {PROG} train --resume {run_dir}"
        ) from None
    print(f"run directory: {run_dir}")
    print(_reward_summary(_read_metrics(run_dir / METRICS_FILE)), flush=True)
    return 0


# --- metrics ----------------------------------------------------------------------------------


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The training records of a metrics.jsonl (evaluation records and torn lines skipped)."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and not any(str(k).startswith("eval/") for k in record):
            records.append(record)
    return records


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for record in records:
        value, step = record.get(key), record.get("step")
        if isinstance(value, int | float) and isinstance(step, int | float) and math.isfinite(value):
            steps.append(float(step))
            values.append(float(value))
    return steps, values


def _reward_summary(records: Sequence[Mapping[str, Any]]) -> str:
    """First-fifth against last-fifth mean reward: the one-line verdict on a run."""
    _, rewards = _series(records, "reward/mean")
    if not rewards:
        return "no reward recorded"
    k = max(1, len(rewards) // 5)
    first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
    return (
        f"mean reward {first:.4f} over the first {k} step(s) -> {last:.4f} over the last {k} "
        f"({last - first:+.4f}, {len(rewards)} steps)"
    )


# --- data-parallel training (torchrun) ---------------------------------------------------------


def _is_main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the process that checks and writes the run directory."""
    return os.environ.get("RANK", "0") == "0"


def _relaunch_under_torchrun(args: argparse.Namespace) -> int:
    """`astra train --nproc N ...`: run ``astra train ...`` (without --nproc) in N torchrun processes."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    command += ["-m", "astra_core", "train"] + ([args.run_file] if args.run_file is not None else [])
    for flag, value in (("--output", args.output), ("--resume", args.resume), ("--steps", args.steps)):
        if value is not None:
            command += [flag, str(value)]
    command += ["--overwrite"] if args.overwrite else []
    print(f"launching {args.nproc} training processes: {' '.join(command)}", flush=True)
    with subprocess.Popen(command) as process:
        # Ctrl-C reaches the workers directly (same process group); forward SIGTERM to torchrun.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
        try:
            return process.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)


def _train_other_rank(trainer: Trainer[Any, Any, Any, Any], resume: Path | None = None) -> int:
    """A rank other than 0: train in step with rank 0, silently; rank 0 checks, writes and reports."""
    from astra_core.trainer import TrainingInterrupted

    if resume is not None:
        trainer.resume(resume)
    try:
        trainer.train()
    except TrainingInterrupted as stop:
        return 0 if stop.signum == signal.SIGINT else 128 + stop.signum
    return 0


# --- astra evaluate ---------------------------------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from astra_core import checkpoint as ckpt
    from astra_core.config import ComponentRef, read_run_file

    target = Path(args.target)
    if args.base and args.compare_base:
        raise UsageError("--base and --compare-base contradict each other; choose one")
    if args.base and args.checkpoint:
        raise UsageError("--base evaluates the untrained tester; drop --checkpoint or --base")
    if not target.exists():
        raise ConfigError(
            f"{target}: no such run directory or run file (give one written by `astra train`, or a .toml)"
        )
    is_run = target.is_dir()
    run_file = _run_file_of(target, "evaluate") if is_run else target
    source = str(run_file)
    data = read_run_file(run_file)
    placeholder = {} if _file_output_dir(data) else {"output_dir": str(target if is_run else "runs/<timestamp>")}
    config = _run_config(data, source, placeholder)
    if config.evaluator is None:
        raise ConfigError(f'{source}: evaluator = "none"; name an evaluator (for example evaluator = "ast")')
    evaluator_options = dict(config.evaluator.options)
    if args.prompts is not None:
        evaluator_options["prompts"] = args.prompts
    if args.num_prompts is not None:
        evaluator_options["num_prompts"] = args.num_prompts
    evaluator = ComponentRef(name=config.evaluator.name, options=evaluator_options)
    config = config.model_copy(update={"evaluator": evaluator})
    resolved = _resolve(config, source, for_training=False)

    trained = not args.base and (is_run or args.checkpoint is not None)
    checkpoint: Path | None = None
    if trained:
        if args.checkpoint is not None:
            checkpoint = Path(args.checkpoint)
            ckpt.verify(checkpoint)
        else:
            checkpoint = ckpt.latest_checkpoint(target)
            if checkpoint is None:
                raise CheckpointError(
                    f"{target}: no complete checkpoint to evaluate; pass --base to evaluate the untrained tester"
                )
    output = Path(args.output) if args.output else target / "eval" if is_run else _timestamped(Path("runs"), "eval-")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output}: exists and is not a directory; pass --output DIR with a directory path")

    built = _build(resolved, source, with_evaluator=True)
    reports: dict[str, EvaluationReport] = {}
    if not trained or args.compare_base:
        reports["base"] = _evaluate_once(built, resolved.config.training.seed, source)
    step = None
    if checkpoint is not None:
        step = _load_tester(built, checkpoint)
        reports["trained"] = _evaluate_once(built, resolved.config.training.seed, source)
    markdown = _evaluation_markdown(reports, target, checkpoint, built.evaluator)
    payload = {
        "target": str(target),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "step": step,
        "reports": {label: {"metrics": r.metrics, "details": r.details} for label, r in reports.items()},
    }
    try:
        output.mkdir(parents=True, exist_ok=True)
        _write_json(output / "evaluation.json", payload)
        (output / "evaluation.md").write_text(markdown, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{output}: cannot write the evaluation: {error.strerror or error}") from None
    print(markdown)
    print(f"wrote {output / 'evaluation.json'} and {output / 'evaluation.md'}")
    return 0


def _evaluate_once(built: BuiltRun, seed: int, source: str) -> EvaluationReport:
    from astra_core.trainer import seed_everything

    seed_everything(seed)  # the same sampling noise for the base and the trained tester
    if built.evaluator is None:  # build() skips it only when asked to
        raise ConfigError(f"{source}: no evaluator was built")
    with _about(source):
        report: EvaluationReport = built.evaluator.evaluate()
    return report


def _load_tester(built: BuiltRun, checkpoint: Path) -> int:
    """Copy a checkpoint's weights into the system, as the Trainer saved them; return its step."""
    from astra_core import checkpoint as ckpt
    from astra_core.trainer import trainable_parameters

    ckpt.load_weights(checkpoint, trainable_parameters(built.algorithm.parameters()))
    try:
        return int(ckpt.read_json(checkpoint, "state.json")["global_step"])
    except Exception as error:  # a file that passed its checksum but is not ours
        raise CheckpointError(f"{checkpoint}: unreadable state.json ({type(error).__name__}: {error})") from None


def _metrics_table(columns: Mapping[str, Mapping[str, Any]]) -> str:
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


def _evaluation_markdown(
    reports: Mapping[str, EvaluationReport], target: Path, checkpoint: Path | None, evaluator: object
) -> str:
    header = f"# Evaluation of {target}\n\n" + (f"Trained tester: `{checkpoint}`\n\n" if checkpoint else "")
    if len(reports) == 1:
        (report,) = reports.values()
        body = report.markdown or _metrics_table({label: r.metrics for label, r in reports.items()})
        return header + body.rstrip() + "\n"
    from astra_core.protocols import ComparingEvaluator

    if isinstance(evaluator, ComparingEvaluator):
        try:
            return header + str(evaluator.compare(reports)).rstrip() + "\n"
        except Exception as error:  # a plugin's renderer failing must not lose the evaluation
            name = type(evaluator).__name__
            print(f"warning: {name}.compare failed ({error}); writing a plain table", file=sys.stderr)
    return header + _metrics_table({label: r.metrics for label, r in reports.items()}) + "\n"


# --- astra report -----------------------------------------------------------------------------


def _cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory (give a directory written by `astra train`)")
    if not metrics_path.is_file():
        raise ConfigError(f"{run_dir}: no {METRICS_FILE}; give a directory written by `astra train`")
    records = _read_metrics(metrics_path)
    if not records:
        raise ConfigError(f"{metrics_path}: no training steps recorded yet; train first, then report")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise AstraError(
            "`astra report` draws its plots with matplotlib, which is not installed: pip install 'astra-core[report]'"
        ) from None

    plots_dir = run_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    keys = sorted({k for r in records for k in r})
    toxicity = [k for k in keys if k.startswith("score/")]
    figures = [
        ("loss.png", "loss", ["loss"]),
        ("reward.png", "mean reward", ["reward/mean"]),
        ("toxicity.png", "toxicity scores", toxicity),
    ]
    images = []
    for filename, title, series in figures:
        drawn = [(key, *_series(records, key)) for key in series]
        drawn = [d for d in drawn if d[1]]
        if not drawn:
            continue
        figure = Figure(figsize=(6.4, 3.6), layout="constrained")
        axes = figure.subplots()
        for key, steps, values in drawn:
            axes.plot(steps, values, label=key)
        axes.set_xlabel("step")
        axes.set_title(title)
        axes.legend()
        figure.savefig(plots_dir / filename, dpi=100)
        images.append((title, f"plots/{filename}"))

    lines = [f"# Run report: {run_dir.name}", "", f"- steps recorded: {len(records)}"]
    lines.append(f"- {_reward_summary(records)}")
    _, losses = _series(records, "loss")
    if losses:
        lines.append(f"- final loss: {losses[-1]:.4g}")
    lines.append("")
    for title, path in images:
        lines += [f"## {title.capitalize()}", "", f"![{title}]({path})", ""]
    lines += _evaluation_section(run_dir / "eval")
    report_path = run_dir / "report.md"
    report_path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {report_path} ({len(images)} plot(s) in {plots_dir})")
    return 0


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _evaluation_section(eval_dir: Path) -> list[str]:
    lines: list[str] = []
    periodic: dict[str, Mapping[str, Any]] = {}
    for path in sorted(eval_dir.glob("step-*.json")):
        data = _load_json(path)
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            periodic[f"step {data.get('step', path.stem)}"] = data["metrics"]
    if periodic:
        lines += ["## Evaluations during training", "", _metrics_table(periodic), ""]
    final = _load_json(eval_dir / "evaluation.json")
    if isinstance(final, dict) and isinstance(final.get("reports"), dict):
        columns = {
            str(label): r["metrics"]
            for label, r in final["reports"].items()
            if isinstance(r, dict) and isinstance(r.get("metrics"), dict)
        }
        if columns:
            lines += ["## Evaluation", "", _metrics_table(columns), ""]
    return lines


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["UsageError", "main"]
