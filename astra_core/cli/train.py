"""``astra train``: train a tester into a run directory, resume one, or relaunch under torchrun."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astra_core import contracts
from astra_core.cli.common import (
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    PROG,
    RUN_FILE,
    UsageError,
    about,
    build,
    default_run_text,
    file_output_dir,
    parse_toml,
    positive_int,
    read_metrics,
    registries,
    resolve,
    reward_summary,
    run_config,
    run_file_of,
    timestamped,
    write_json,
)
from astra_core.errors import AstraError, CheckpointError, ComponentContractError, ConfigError

if TYPE_CHECKING:
    from astra_core.build import ResolvedRun
    from astra_core.config import RunConfig
    from astra_core.trainer import Trainer

# What marks a directory as written by `astra train` (so --overwrite may delete it).
_RUN_MARKERS = (RUN_FILE, CONFIG_FILE, METRICS_FILE, "checkpoints")
# OSError numbers that mean the run directory's disk failed us (full, read-only, gone).
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def add_parser(commands: Any) -> None:
    train = commands.add_parser("train", help="train a tester (the built-in default run without RUN.toml)")
    train.add_argument("run_file", metavar="RUN.toml", nargs="?", help="run file (default: the built-in one)")
    train.add_argument("--output", metavar="DIR", help="run directory (default: training.output_dir or runs/<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its newest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--steps", metavar="N", type=positive_int, help="override training.training_steps")
    train.add_argument("--nproc", metavar="N", type=positive_int, help="train data-parallel in N processes (torchrun)")
    train.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None and "WORLD_SIZE" not in os.environ:
        return _relaunch_under_torchrun(args)
    if args.resume is not None:
        return _resume(args)
    if args.run_file is None:
        text, source = default_run_text()
        data = parse_toml(text, source)
    else:
        from astra_core.config import read_run_file

        source = str(Path(args.run_file))
        data = read_run_file(source)
        text = Path(source).read_text(encoding="utf-8")  # copied into the run directory as is
    file_dir = file_output_dir(data)
    run_dir = Path(args.output) if args.output else Path(file_dir) if file_dir else timestamped(Path("runs"))
    overrides: dict[str, Any] = {"output_dir": str(run_dir)}
    if args.steps is not None:
        overrides["training_steps"] = args.steps
    config = run_config(data, source, overrides)
    if args.run_file is None:
        print(f"no run file given: training the built-in default ({_describe_default(config)})", flush=True)
    resolved = resolve(config, source)
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
        write_json(run_dir / CONFIG_FILE, resolved.describe())
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
    run_file = run_file_of(run_dir, "--resume")
    source = str(run_file)
    data = read_run_file(run_file)
    steps = args.steps if args.steps is not None else _saved_steps(run_dir)
    overrides: dict[str, Any] = {"output_dir": str(run_dir)}
    if steps is not None:
        overrides["training_steps"] = steps
    resolved = resolve(run_config(data, source, overrides), source)
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
    write_json(run_dir / CONFIG_FILE, resolved.describe())
    return _run_training(trainer, run_dir)


def _check_writable(run_dir: Path) -> None:
    """A probe write, before anything is built: a full disk or unwritable directory fails now, not at step K."""
    from astra_core.checkpoint import check_writable

    check_writable(run_dir)


def _run_training(trainer: Trainer[Any, Any, Any, Any], run_dir: Path) -> int:
    from astra_core.trainer import TrainingInterrupted

    try:
        trainer.train()
    except ComponentContractError as error:
        # One line on the terminal; the plugin's own traceback goes to the run's log.
        log = run_dir / LOG_FILE
        if not contracts.write_traceback(error, log):
            raise
        raise ComponentContractError(f"{error}; traceback in {log}") from error
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
    print(reward_summary(read_metrics(run_dir / METRICS_FILE)), flush=True)
    return 0


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


def _make_trainer(resolved: ResolvedRun, source: str) -> Trainer[Any, Any, Any, Any]:
    from astra_core.callbacks import MetricsJSONL, ProgressBar
    from astra_core.trainer import Trainer

    config = resolved.config
    built = build(resolved, source, with_evaluator=config.training.eval_every is not None)
    callbacks: list[Any] = []
    # A run file may configure these itself (say, to turn the bar off); then do not add a second.
    if not any(isinstance(c, ProgressBar) for c in built.callbacks):
        callbacks.append(ProgressBar())
    if not any(isinstance(c, MetricsJSONL) for c in built.callbacks):
        callbacks.append(MetricsJSONL())
    callbacks.extend(built.callbacks)
    with about(source):
        return Trainer(
            config.training,
            built.sampler,
            built.algorithm,
            evaluator=built.evaluator,
            callbacks=callbacks,
            registries=registries(),
            resolved_config=resolved.describe(),
        )


def _describe_default(config: RunConfig) -> str:
    parts = [f"{kind} {getattr(config, kind).name!r}" for kind in ("system", "scorer", "sampler", "algorithm")]
    return f"{', '.join(parts)}; {config.training.training_steps} steps"
