"""``astra evaluate``: evaluate a trained tester (or the untrained base); write evaluation.json/.md and transcripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astra_core.cli.common import (
    UsageError,
    about,
    build,
    file_output_dir,
    metrics_table,
    positive_int,
    resolve,
    run_config,
    run_file_of,
    timestamped,
)
from astra_core.errors import CheckpointError, ConfigError
from astra_core.rundir import (
    TRANSCRIPTS,
    RunDir,
    describe_os_error,
    transcript_records,
    write_atomic,
    write_transcripts,
)
from astra_core.types import json_safe

if TYPE_CHECKING:
    from astra_core.build import BuiltRun
    from astra_core.protocols import EvaluationReport


def add_parser(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate a trained tester (or the base model)")
    evaluate.add_argument("target", metavar="TARGET", help="a run directory, or a run file for the untrained base")
    evaluate.add_argument("--checkpoint", metavar="STEP_DIR", help="checkpoint to load (default: the newest)")
    evaluate.add_argument("--base", action="store_true", help="evaluate the untrained base tester only")
    evaluate.add_argument("--compare-base", action="store_true", help="evaluate base and trained tester together")
    evaluate.add_argument("--prompts", metavar="SPEC", help="override the evaluator's prompts option")
    evaluate.add_argument("--num-prompts", metavar="N", type=positive_int, help="override its num_prompts option")
    evaluate.add_argument("--output", metavar="DIR", help="where evaluation.json/.md go (default: RUN_DIR/eval)")
    evaluate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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
    run_file = run_file_of(target, "evaluate") if is_run else target
    source = str(run_file)
    data = read_run_file(run_file)
    placeholder = {} if file_output_dir(data) else {"output_dir": str(target if is_run else "runs/<timestamp>")}
    config = run_config(data, source, placeholder)
    if config.evaluator is None:
        raise ConfigError(f'{source}: evaluator = "none"; name an evaluator (for example evaluator = "ast")')
    evaluator_options = dict(config.evaluator.options)
    if args.prompts is not None:
        evaluator_options["prompts"] = args.prompts
    if args.num_prompts is not None:
        evaluator_options["num_prompts"] = args.num_prompts
    evaluator = ComponentRef(name=config.evaluator.name, options=evaluator_options)
    config = config.model_copy(update={"evaluator": evaluator})
    resolved = resolve(config, source, for_training=False)

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
    output = Path(args.output) if args.output else target / "eval" if is_run else timestamped(Path("runs"), "eval-")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output}: exists and is not a directory; pass --output DIR with a directory path")

    run = RunDir(target) if is_run and output.resolve().is_relative_to(target.resolve()) else None
    if run is not None:
        run.check_unlocked()  # a run still training: refused now, not after the evaluation
    built = build(resolved, source, with_evaluator=True)
    reports: dict[str, EvaluationReport] = {}
    if not trained or args.compare_base:
        reports["base"] = _evaluate_once(built, resolved.config.training.seed, source)
    step = None
    if checkpoint is not None:
        step = _load_tester(built, checkpoint)
        reports["trained"] = _evaluate_once(built, resolved.config.training.seed, source)
    markdown = _evaluation_markdown(reports, target, checkpoint, built.evaluator)
    payload: dict[str, Any] = {
        "target": str(target),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "step": step,
        "reports": {label: {"metrics": r.metrics, "details": r.details} for label, r in reports.items()},
    }
    # An evaluator that can pair two testers over the same prompts (ast's `paired`) adds that comparison.
    paired = getattr(built.evaluator, "paired", None)
    if callable(paired) and "base" in reports and "trained" in reports:
        payload["comparison"] = paired(reports["base"], reports["trained"])
    try:
        if run is not None:
            run.acquire()  # writing into a run: not while it trains
        output.mkdir(parents=True, exist_ok=True)
        write_atomic(output / "evaluation.json", json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n")
        write_atomic(output / "evaluation.md", markdown)
        records = [  # the base tester is the step-0 tester
            record
            for label, report in reports.items()
            for record in transcript_records(report.details, label, step if label == "trained" else 0)
        ]
        write_transcripts(output / TRANSCRIPTS, records)
    except OSError as error:
        raise ConfigError(f"{output}: cannot write the evaluation: {describe_os_error(error)}") from None
    finally:
        if run is not None:
            run.release()
    print(markdown)
    print(f"wrote {output / 'evaluation.json'}, {output / 'evaluation.md'} and {output / TRANSCRIPTS}")
    return 0


def _evaluate_once(built: BuiltRun, seed: int, source: str) -> EvaluationReport:
    from astra_core.assembly import seed_everything

    seed_everything(seed)  # the same sampling noise for the base and the trained tester
    if built.evaluator is None:  # build() skips it only when asked to
        raise ConfigError(f"{source}: no evaluator was built")
    from astra_core import contracts

    with about(source):
        # Held to its contract, and its sampler, system and scorer with it (astra_core.contracts).
        report: EvaluationReport = contracts.guard("evaluator", built.evaluator).evaluate()
    return report


def _load_tester(built: BuiltRun, checkpoint: Path) -> int:
    """Copy a checkpoint's tester weights into the system (by parameter name); return its step."""
    from astra_core import checkpoint as ckpt
    from astra_core.assembly import trainable_parameters

    return ckpt.load_tester(checkpoint, built.system, lambda: trainable_parameters(built.algorithm.parameters()))


def _evaluation_markdown(
    reports: Mapping[str, EvaluationReport], target: Path, checkpoint: Path | None, evaluator: object
) -> str:
    header = f"# Evaluation of {target}\n\n" + (f"Trained tester: `{checkpoint}`\n\n" if checkpoint else "")
    if len(reports) == 1:
        (report,) = reports.values()
        body = report.markdown or metrics_table({label: r.metrics for label, r in reports.items()})
        return header + body.rstrip() + "\n"
    from astra_core.protocols import ComparingEvaluator

    if isinstance(evaluator, ComparingEvaluator):
        try:
            return header + str(evaluator.compare(reports)).rstrip() + "\n"
        except Exception as error:  # a plugin's renderer failing must not lose the evaluation
            name = type(evaluator).__name__
            print(f"warning: {name}.compare failed ({error}); writing a plain table", file=sys.stderr)
    return header + metrics_table({label: r.metrics for label, r in reports.items()}) + "\n"
