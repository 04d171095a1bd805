"""``astra train``: train a tester into a run directory, resume one, or relaunch under torchrun."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astra_core.cli.common import (
    PROG,
    Stopped,
    UsageError,
    about,
    build,
    default_run_text,
    file_output_dir,
    parse_toml,
    positive_int,
    registries,
    resolve,
    reward_summary,
    run_config,
    run_file_of,
    step_count,
    stop_on_signals,
    timestamped,
)
from astra_core.errors import AstraError, CheckpointError, ConfigError
from astra_core.rundir import LOCK, MARKER, RunDir, describe_os_error, is_disk_error

if TYPE_CHECKING:
    from astra_core.build import ResolvedRun
    from astra_core.config import RunConfig
    from astra_core.trainer import Trainer


def add_parser(commands: Any) -> None:
    train = commands.add_parser("train", help="train a tester (the built-in default run without RUN.toml)")
    train.add_argument("run_file", metavar="RUN.toml", nargs="?", help="run file (default: the built-in one)")
    train.add_argument("--output", metavar="DIR", help="run directory (default: training.output_dir or runs/<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its newest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--steps", metavar="N", type=step_count, help="override training.training_steps")
    train.add_argument("--nproc", metavar="N", type=positive_int, help="train data-parallel in N processes (torchrun)")
    train.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None and "WORLD_SIZE" not in os.environ:
        return _relaunch_under_torchrun(args)
    run_dir: RunDir | None = None
    try:
        with stop_on_signals():
            if args.resume is not None:
                run_dir = RunDir(args.resume)
                return _resume(args, run_dir)
            return _train(args)
    except Stopped as stop:
        # SIGTERM/SIGHUP outside the training loop (building models, saving the tester):
        # whatever was being written is staged and discarded; the run directory stays resumable.
        name = signal.Signals(stop.signum).name
        print(f"{name}: stopped before training finished; nothing half-written was kept", flush=True)
        if run_dir is not None or stop.run_dir is not None:
            print(f"resume with: {PROG} train --resume {stop.run_dir or run_dir}", flush=True)
        return int(128 + stop.signum)


def _train(args: argparse.Namespace) -> int:
    if args.run_file is None:
        text, source = default_run_text()
        data = parse_toml(text, source)
    else:
        from astra_core.config import read_run_file

        source = str(Path(args.run_file))
        data = read_run_file(source)
        text = Path(source).read_text(encoding="utf-8")  # copied into the run directory as is
    file_dir = file_output_dir(data)
    if args.output is not None and not args.output.strip():
        raise UsageError("--output is empty; give a directory path")
    path = Path(args.output) if args.output else Path(file_dir) if file_dir else timestamped(Path("runs"))
    overrides: dict[str, Any] = {"output_dir": str(path)}
    if args.steps is not None:
        overrides["training_steps"] = args.steps
    config = run_config(data, source, overrides)
    if args.run_file is None:
        print(f"no run file given: training the built-in default ({_describe_default(config)})", flush=True)
    resolved = resolve(config, source)
    if not _is_main_process():
        return _train_other_rank(_make_trainer(resolved, source))
    run_dir = RunDir(path)
    existed = path.exists()
    try:
        _check_output_dir(run_dir, args.overwrite)  # takes the lock of an existing run
        _check_writable(path)
        trainer = _make_trainer(resolved, source)
        # Only now, with every component built, touch the file system.
        _create(run_dir, resolved.describe(), text, overwrite=args.overwrite, existed=existed)
        print(f"training into {path} ({config.training.training_steps} steps)", flush=True)
        return _run_training(trainer, run_dir)
    finally:
        run_dir.release()


def _check_output_dir(run_dir: RunDir, overwrite: bool) -> None:
    path = run_dir.path
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a directory; pass --output DIR with a directory path")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not run_dir.is_run():
        raise ConfigError(
            f"{path}: output directory exists and is not empty, and is not an astra run (no {MARKER}): "
            f"astra never writes into or deletes such a directory; pass --output DIR for a new run"
        )
    run_dir.check_unlocked()  # a run still training: refused here, naming its PID
    if not overwrite:
        raise ConfigError(
            f"{path}: output directory exists and is not empty; pass --resume {path} to continue it, "
            f"--overwrite to replace it, or --output DIR for a new run"
        )


def _create(run_dir: RunDir, config: dict[str, Any], text: str, *, overwrite: bool, existed: bool) -> None:
    """Make (or, with --overwrite, empty) the run directory under its lock and write its first files."""
    path = run_dir.path
    try:
        path.mkdir(parents=True, exist_ok=True)
        run_dir.acquire()
        others = [p.name for p in path.iterdir() if p.name != LOCK]
        if others and not (overwrite and run_dir.is_run()):
            raise ConfigError(f"{path}: another process created this directory meanwhile; pass --output DIR")
        if overwrite and others:
            deleted = run_dir.clear()
            print(f"--overwrite: deleted {len(deleted)} entries of the previous run in {path}: {', '.join(deleted)}")
        run_dir.create(config=config, run_text=text)
    except OSError as error:
        if not existed:  # a half-made run directory helps nobody
            run_dir.release()
            shutil.rmtree(path, ignore_errors=True)
        raise ConfigError(
            f"{path}: cannot write the run directory: {describe_os_error(error)}; "
            f"pass --output DIR with a writable directory that has free space"
        ) from None


def _saved_steps(run_dir: RunDir) -> int | None:
    """training_steps as the run last recorded it (so --steps survives a resume)."""
    config = run_dir.read_config()
    training = config.get("training") if config else None
    value = training.get("training_steps") if isinstance(training, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _resume(args: argparse.Namespace, run_dir: RunDir) -> int:
    from astra_core import checkpoint as ckpt
    from astra_core.config import read_run_file

    path = run_dir.path
    if args.run_file is not None:
        raise UsageError(f"give either RUN.toml or --resume {path}, not both (a run resumes with its own run.toml)")
    if args.overwrite:
        raise UsageError("--overwrite and --resume contradict each other; choose one")
    if args.output is not None and Path(args.output).resolve() != path.resolve():
        raise UsageError(f"--output {args.output} differs from --resume {path}; a resumed run stays in its directory")
    run_file = run_file_of(path, "--resume")
    if not run_dir.is_run():
        raise ConfigError(
            f"{path}: not marked as an astra run (no {MARKER}); --resume needs a directory `astra train` made"
        )
    source = str(run_file)
    data = read_run_file(run_file)
    steps = args.steps if args.steps is not None else _saved_steps(run_dir)
    overrides: dict[str, Any] = {"output_dir": str(path)}
    if steps is not None:
        overrides["training_steps"] = steps
    resolved = resolve(run_config(data, source, overrides), source)
    if not _is_main_process():
        has_checkpoint = ckpt.latest_checkpoint(path) is not None
        return _train_other_rank(_make_trainer(resolved, source), resume=path if has_checkpoint else None)
    try:
        run_dir.check_unlocked()
        for _ in range(2):  # once read-only (a refusal touches nothing), once under the lock
            problem = ckpt.resume_problem(path)
            if problem is not None:
                raise CheckpointError(
                    f"{path}: cannot resume: {problem}; start again with "
                    f"`astra train {run_file} --overwrite --output {path}`"
                )
            run_dir.acquire()
        _check_writable(path)
        run_dir.clean_partial()
        trainer = _make_trainer(resolved, source)
        total = trainer.config.training_steps
        if ckpt.list_checkpoints(path) or ckpt.without_manifest(path):
            checkpoint = trainer.resume(path)
            print(f"resuming {path} from checkpoint {checkpoint} (step {trainer.global_step} of {total})", flush=True)
        else:  # stopped before its first checkpoint (a signal, a full disk): start it again
            print(f"resuming {path}: no checkpoint was written yet, starting again at step 0 of {total}", flush=True)
        run_dir.write_config(resolved.describe())
        return _run_training(trainer, run_dir)
    finally:
        run_dir.release()


def _check_writable(path: Path) -> None:
    """A probe write, before anything is built: a full disk or unwritable directory fails now, not at step K."""
    from astra_core.checkpoint import check_writable

    check_writable(path)


def _run_training(trainer: Trainer[Any, Any, Any, Any], run_dir: RunDir) -> int:
    from astra_core.trainer import TrainingInterrupted

    try:
        trainer.train()
    except TrainingInterrupted as stop:
        name = signal.Signals(stop.signum).name
        where = f"checkpoint written to {stop.checkpoint}" if stop.checkpoint else "no checkpoint written"
        if stop.abandoned:
            last = f"last checkpoint {stop.checkpoint}" if stop.checkpoint else "no checkpoint yet"
            where = f"the step in flight was abandoned ({last}; a resume repeats the steps after it)"
        print(f"{name}: stopped after step {trainer.global_step} of {trainer.config.training_steps}; {where}")
        print(f"resume with: {PROG} train --resume {run_dir.path}", flush=True)
        return 0 if stop.signum == signal.SIGINT else 128 + stop.signum
    except Stopped as stop:
        stop.run_dir = run_dir.path
        raise
    except OSError as error:
        # A disk that fills up (or turns read-only) mid-run, under metrics.jsonl, eval/ or tester/:
        # one line, not a traceback. A failed checkpoint is already a CheckpointWriteError.
        if isinstance(error, AstraError) or not is_disk_error(error):
            raise
        where = f" ({error.filename})" if error.filename else ""
        raise AstraError(
            f"{run_dir.path}: training stopped at step {trainer.global_step}: {describe_os_error(error)}{where}; "
            f"free space or make it writable, then: {PROG} train --resume {run_dir.path}"
        ) from None
    print(f"run directory: {run_dir.path}")
    print(reward_summary(run_dir.read_metrics()), flush=True)
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
