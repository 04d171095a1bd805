"""A corpus of bad inputs to the `astra` command line and its run files.

Every case must end the same way: exit code 2, exactly one line on stderr (``astra: error: ...``)
that names what is at fault and what would be valid, no traceback, and the working directory
exactly as it was (no run directory left behind, nothing existing touched).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from astra_core.cli import main


def _support() -> Any:
    path = Path(__file__).with_name("test_cli.py")
    spec = importlib.util.spec_from_file_location("astra_cli_test_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


support = _support()
GOOD: str = support.TOY_RUN


def _replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


def _training(line: str) -> str:
    return GOOD.replace("[training]\n", f"[training]\n{line}\n")


@dataclass
class Case:
    """One bad input: files to write (str or bytes), the argv, and what the error must mention."""

    id: str
    argv: list[str]
    expect: tuple[str, ...]
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: Callable[[Path, Path], None] | None = None  # (tmp dir, a finished toy run's dir)


def _existing_output(tmp: Path, run: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("keep me", encoding="utf-8")


def _copy_run(tmp: Path, run: Path) -> None:
    shutil.copytree(run, tmp / "run")


def _corrupt_checkpoints(tmp: Path, run: Path) -> None:
    _copy_run(tmp, run)
    for weights in (tmp / "run" / "checkpoints").glob("step-*/weights.safetensors"):
        with weights.open("ab") as handle:
            handle.write(b"garbage")


def _corrupt_manifest(tmp: Path, run: Path) -> None:
    _copy_run(tmp, run)
    for manifest in (tmp / "run" / "checkpoints").glob("step-*/manifest.json"):
        manifest.write_text("{not json", encoding="utf-8")


def _no_checkpoints(tmp: Path, run: Path) -> None:
    _copy_run(tmp, run)
    shutil.rmtree(tmp / "run" / "checkpoints")


def _run_file_dir(tmp: Path, run: Path) -> None:
    (tmp / "dir.toml").mkdir()


def _output_is_file(tmp: Path, run: Path) -> None:
    (tmp / "out").write_text("a file", encoding="utf-8")


RUN = "run.toml"
CASES = [
    # --- TOML syntax
    Case("toml-unclosed-table", ["train", RUN], ("run.toml: invalid TOML", "line 1"), {RUN: "[training\n"}),
    Case("toml-missing-value", ["validate", RUN], ("run.toml: invalid TOML", "line 2"), {RUN: "[training]\nlr =\n"}),
    Case("toml-duplicate-key", ["train", RUN], ("invalid TOML",), {RUN: "[training]\nlr = 1\nlr = 2\n"}),
    Case("toml-bare-string", ["validate", RUN], ("invalid TOML",), {RUN: "algorithm = dpo\n"}),
    # --- unknown keys and kinds
    Case(
        "unknown-top-level-key",
        ["train", RUN],
        ("run.toml", "'algoritm'", "did you mean 'algorithm'", "valid top-level keys: training, scorer"),
        {RUN: GOOD.replace('algorithm = "test-pg"', 'algoritm = "test-pg"')},
    ),
    Case(
        "unknown-component-kind",
        ["validate", RUN],
        ("run.toml", "'critic'", "valid top-level keys"),
        {RUN: GOOD + '\n[critic]\nname = "x"\n'},
    ),
    Case(
        "unknown-training-key",
        ["train", RUN],
        ("run.toml", "[training] key 'learning_rate'", "valid [training] keys: lr, batch_size"),
        {RUN: _training("learning_rate = 0.1")},
    ),
    Case(
        "training-key-typo",
        ["train", RUN],
        ("'training_step'", "did you mean 'training_steps'"),
        {RUN: _replace("training_steps = 6", "training_step = 6")},
    ),
    Case("training-not-a-table", ["validate", RUN], ("run.toml", "training"), {RUN: "training = 5\n"}),
    Case(
        "training-parallelism-unknown",
        ["train", RUN],
        ("run.toml", "parallelism", "'ddp' or 'fsdp'"),
        {RUN: _training('parallelism = "zero3"')},
    ),
    # --- unknown component names, never import paths
    Case(
        "unknown-algorithm-typo",
        ["train", RUN],
        ("run.toml", "unknown algorithm 'test-pgg'", "did you mean 'test-pg'", "astra plugins"),
        {RUN: _replace('"test-pg"', '"test-pgg"')},
    ),
    Case(
        "unknown-system-typo",
        ["train", RUN],
        ("unknown system 'toyy'", "did you mean 'toy'"),
        {RUN: _replace('system = "toy"', 'system = "toyy"')},
    ),
    Case(
        "import-path-algorithm",
        ["train", RUN],
        ("unknown algorithm 'os:system'", "available algorithms:"),
        {RUN: _replace('"test-pg"', '"os:system"')},
    ),
    Case(
        "dotted-path-scorer",
        ["train", RUN],
        ("unknown scorer 'subprocess.run'", "available scorers:"),
        {RUN: _replace('scorer = "toy"', 'scorer = "subprocess.run"')},
    ),
    Case(
        "expression-sampler",
        ["validate", RUN],
        ("unknown sampler \"__import__('os')\"", "available samplers:"),
        {RUN: _replace('sampler = "toy"', "sampler = \"__import__('os')\"")},
    ),
    Case(
        "unknown-optimizer",
        ["train", RUN],
        ("unknown optimizer 'adamx'", "did you mean", "'adam'"),
        {RUN: _training('optimizer = "adamx"')},
    ),
    Case(
        "unknown-scheduler",
        ["train", RUN],
        ("unknown scheduler 'cosin'", "did you mean 'cosine'"),
        {RUN: _training('lr_scheduler = "cosin"')},
    ),
    Case(
        "unknown-callback",
        ["train", RUN],
        ("unknown callback 'tensorbord'", "did you mean 'tensorboard'"),
        {RUN: GOOD + '\n[[callbacks]]\nname = "tensorbord"\n'},
    ),
    Case(
        "component-table-without-name",
        ["train", RUN],
        ("run.toml", "algorithm", "needs a 'name' key"),
        {RUN: _replace('algorithm = "test-pg"\n', "") + "\n[algorithm]\nbeta = 0.1\n"},
    ),
    Case(
        "component-name-not-a-string",
        ["train", RUN],
        ("run.toml", "'name' must be a string"),
        {RUN: _replace('algorithm = "test-pg"\n', "") + "\n[algorithm]\nname = 5\n"},
    ),
    Case(
        "callbacks-not-a-list",
        ["train", RUN],
        ("run.toml", "callbacks must be a list"),
        {RUN: 'callbacks = "progress"\n' + GOOD},
    ),
    # --- option names, types and ranges
    Case(
        "unknown-component-option",
        ["train", RUN],
        ("bad options for sampler 'toy'", "unknown option 'tree_widht'", "valid options: tree_width, tree_depth"),
        {RUN: _replace('sampler = "toy"\n', "") + '\n[sampler]\nname = "toy"\ntree_widht = 2\n'},
    ),
    Case(
        "option-wrong-type",
        ["train", RUN],
        ("bad options for sampler 'toy'", "tree_width", "valid integer"),
        {RUN: _replace('sampler = "toy"\n', "") + '\n[sampler]\nname = "toy"\ntree_width = "two"\n'},
    ),
    Case(
        "option-zero",
        ["train", RUN],
        ("sampler 'toy'", "tree_depth", "greater than or equal to 1"),
        {RUN: _replace('sampler = "toy"\n', "") + '\n[sampler]\nname = "toy"\ntree_depth = 0\n'},
    ),
    Case(
        "option-too-large",
        ["train", RUN],
        ("system 'toy'", "probe_length", "less than or equal to 16"),
        {RUN: _replace('system = "toy"\n', "") + '\n[system]\nname = "toy"\nprobe_length = 100\n'},
    ),
    Case(
        "optimizer-option-negative",
        ["train", RUN],
        ("optimizer 'adamw'", "weight_decay", "greater than or equal to 0"),
        {RUN: _training('optimizer = { name = "adamw", weight_decay = -1 }')},
    ),
    Case(
        "accumulation-larger-than-an-experience",
        ["train", RUN],
        ("gradient_accumulation_steps (1000)", "lower it to at most"),
        {RUN: _training("gradient_accumulation_steps = 1000")},
    ),
    Case(
        "lr-wrong-type",
        ["train", RUN],
        ("run.toml", "training.lr", "valid number"),
        {RUN: _replace("lr = 0.05", 'lr = "fast"')},
    ),
    Case("lr-negative", ["train", RUN], ("training.lr", "greater than 0"), {RUN: _replace("lr = 0.05", "lr = -1")}),
    Case("lr-zero", ["train", RUN], ("training.lr", "greater than 0"), {RUN: _replace("lr = 0.05", "lr = 0")}),
    Case("lr-nan", ["train", RUN], ("training.lr", "finite"), {RUN: _replace("lr = 0.05", "lr = nan")}),
    Case(
        "batch-size-zero",
        ["train", RUN],
        ("training.batch_size", "greater than or equal to 1"),
        {RUN: _replace("batch_size = 8", "batch_size = 0")},
    ),
    Case(
        "training-steps-negative",
        ["train", RUN],
        ("training.training_steps", "greater than or equal to 1"),
        {RUN: _replace("training_steps = 6", "training_steps = -5")},
    ),
    Case(
        "episodes-zero",
        ["train", RUN],
        ("training.num_episodes_per_experience", "greater than or equal to 1"),
        {RUN: _replace("num_episodes_per_experience = 4", "num_episodes_per_experience = 0")},
    ),
    Case(
        "seed-negative", ["train", RUN], ("training.seed", "greater than or equal to 0"), {RUN: _training("seed = -1")}
    ),
    Case(
        "checkpoint-every-zero",
        ["train", RUN],
        ("training.checkpoint_every", "greater than or equal to 1"),
        {RUN: _replace("checkpoint_every = 2", "checkpoint_every = 0")},
    ),
    Case("shuffle-not-bool", ["train", RUN], ("training.shuffle", "boolean"), {RUN: _training("shuffle = [1]")}),
    Case(
        "shuffle-by-unknown",
        ["train", RUN],
        ("training.shuffle_by", "'example' or 'episode'"),
        {RUN: _training('shuffle_by = "tree"')},
    ),
    Case(
        "eval-every-without-evaluator",
        ["train", RUN],
        ("run.toml", "eval_every", 'evaluator = "none"'),
        {
            RUN: _replace('evaluator = "test-eval"', 'evaluator = "none"').replace(
                "lr = 0.05", "lr = 0.05\neval_every = 2"
            )
        },
    ),
    # --- the run file itself
    Case("missing-run-file", ["train", "nope.toml"], ("nope.toml: no such run file", ".toml")),
    Case("missing-run-file-validate", ["validate", "nope.toml"], ("nope.toml: no such run file",)),
    Case("run-file-is-a-directory", ["train", "dir.toml"], ("dir.toml: not a file",), setup=_run_file_dir),
    Case("run-file-not-utf8", ["train", RUN], ("run.toml: not UTF-8",), {RUN: b'system = "\xff\xfe"\n'}),
    Case("run-file-too-large", ["validate", RUN], ("run.toml: larger than",), {RUN: "# " + "x" * (1 << 20) + "\n"}),
    # --- output and resume
    Case(
        "existing-non-empty-output",
        ["train", RUN, "--output", "out"],
        ("out: output directory exists and is not empty", "not an astra run", "--output DIR"),
        {RUN: GOOD},
        _existing_output,
    ),
    Case(
        "existing-run-without-overwrite",
        ["train", RUN, "--output", "run"],
        ("run: output directory exists and is not empty", "--resume run", "--overwrite"),
        {RUN: GOOD},
        _copy_run,
    ),
    Case(
        "overwrite-non-run-dir",
        ["train", RUN, "--output", "out", "--overwrite"],
        ("out: output directory exists", "not an astra run", "never writes into or deletes"),
        {RUN: GOOD},
        _existing_output,
    ),
    Case(
        "output-is-a-file",
        ["train", RUN, "--output", "out"],
        ("out: exists and is not a directory",),
        {RUN: GOOD},
        _output_is_file,
    ),
    Case(
        "resume-not-a-run",
        ["train", "--resume", "out"],
        ("out: not an astra run directory (no run.toml)",),
        setup=_existing_output,
    ),
    Case("resume-missing-dir", ["train", "--resume", "gone"], ("gone: no such run directory",)),
    Case(
        "resume-corrupted-checkpoint",
        ["train", "--resume", "run"],
        ("run: cannot resume", "corrupted", "weights.safetensors", "--overwrite"),
        setup=_corrupt_checkpoints,
    ),
    Case(
        "resume-unreadable-manifest",
        ["train", "--resume", "run"],
        ("run: cannot resume", "manifest"),
        setup=_corrupt_manifest,
    ),
    Case(
        "resume-and-run-file",
        ["train", RUN, "--resume", "run"],
        ("either RUN.toml or --resume",),
        {RUN: GOOD},
        _copy_run,
    ),
    Case("resume-and-overwrite", ["train", "--resume", "run", "--overwrite"], ("contradict",), setup=_copy_run),
    # --- the command line
    Case("unknown-flag", ["train", RUN, "--stpes", "5"], ("unrecognized arguments: --stpes",), {RUN: GOOD}),
    Case("steps-zero", ["train", RUN, "--steps", "0"], ("--steps", "0 is too small", ">= 1"), {RUN: GOOD}),
    Case("steps-not-a-number", ["train", "--steps", "ten"], ("--steps", "'ten' is not a whole number")),
    Case("unknown-command", ["trian"], ("invalid choice: 'trian'", "'train'")),
    Case("no-command", [], ("required: COMMAND",)),
    Case("validate-without-file", ["validate"], ("astra validate", "RUN.toml")),
    Case("plugins-extra-argument", ["plugins", "all"], ("unrecognized arguments: all",)),
    # --- evaluate and report
    Case("evaluate-missing-target", ["evaluate", "gone"], ("gone: no such run directory or run file",)),
    Case(
        "evaluate-corrupted-checkpoint",
        ["evaluate", "run", "--checkpoint", "run/checkpoints/step-00000002"],
        ("step-00000002", "checksum"),
        setup=_corrupt_checkpoints,
    ),
    Case(
        "evaluate-run-without-checkpoint",
        ["evaluate", "run"],
        ("run: no complete checkpoint", "--base"),
        setup=_no_checkpoints,
    ),
    Case(
        "evaluate-bad-prompts",
        ["evaluate", "run", "--prompts", "nope"],
        ("evaluator 'test-eval'", "prompts"),
        setup=_copy_run,
    ),
    Case("evaluate-num-prompts-zero", ["evaluate", "run", "--num-prompts", "0"], ("--num-prompts", ">= 1")),
    Case(
        "evaluate-base-and-compare", ["evaluate", "run", "--base", "--compare-base"], ("contradict",), setup=_copy_run
    ),
    # --- values train trips on, refused by validate and train alike (before any directory is made)
    *[
        Case(f"{command}-{case_id}", [command, RUN, *extra], expect, {RUN: text})
        for command, extra in (("validate", []), ("train", ["--output", "out"]))
        for case_id, expect, text in (
            ("lr-nan", ("training.lr", "finite"), _replace("lr = 0.05", "lr = nan")),
            ("lr-inf", ("training.lr", "finite"), _replace("lr = 0.05", "lr = inf")),
            ("max-grad-norm-nan", ("training.max_grad_norm", "finite"), _training("max_grad_norm = nan")),
            ("lr-bool", ("training.lr", "boolean"), _replace("lr = 0.05", "lr = true")),
            ("seed-past-64-bits", ("training.seed", "18446744073709551615"), _training("seed = 18446744073709551616")),
            (
                "batch-size-bool",
                ("training.batch_size", "valid integer"),
                _replace("batch_size = 8", "batch_size = true"),
            ),
            (
                "steps-float",
                ("training.training_steps", "valid integer"),
                _replace("training_steps = 6", "training_steps = 1e3"),
            ),
            (
                "batch-past-memory",
                ("training.batch_size", "of memory", "more than this machine's"),
                _replace("batch_size = 8", "batch_size = 1000000000000000"),
            ),
            (
                "episodes-past-memory",
                ("training.num_episodes_per_experience", "of memory"),
                _replace("num_episodes_per_experience = 4", "num_episodes_per_experience = 1000000000000000"),
            ),
            (
                "tree-past-memory",
                ("sampler.tree_width/tree_depth", "of memory", "turns per experience"),
                _replace('sampler = "toy"', 'sampler = { name = "toy", tree_width = 1000, tree_depth = 9 }'),
            ),
            ("deep-nesting", ("nested", "deep"), "x = " + "[" * 5000 + "]" * 5000 + "\n" + GOOD),
            ("empty-output-dir", ("training.output_dir", "is empty"), _training('output_dir = ""')),
            (
                "metrics-file-outside-run",
                ("callback 'jsonl'", "filename", "'../victim.txt' is not a path inside the run directory"),
                GOOD + '\n[[callbacks]]\nname = "jsonl"\nfilename = "../victim.txt"\n',
            ),
            (
                "metrics-file-absolute",
                ("callback 'jsonl'", "filename", "is not a path inside the run directory"),
                GOOD + '\n[[callbacks]]\nname = "jsonl"\nfilename = "/tmp/victim.txt"\n',
            ),
            (
                "tensorboard-dir-outside-run",
                ("callback 'tensorboard'", "log_dir", "not a path inside the run directory"),
                GOOD + '\n[[callbacks]]\nname = "tensorboard"\nlog_dir = "../elsewhere"\n',
            ),
        )
    ],
    *[
        Case(
            f"{command}-prompts-file-missing",
            [command, RUN],
            ("sampler 'ast'", "prompts", "'missing.jsonl' does not exist"),
            {RUN: _replace('sampler = "toy"', 'sampler = { name = "ast", prompts = "missing.jsonl" }')},
        )
        for command in ("validate", "train")
    ],
    Case("output-empty", ["train", RUN, "--output", ""], ("--output is empty",), {RUN: GOOD}),
    Case("steps-past-sane", ["train", RUN, "--steps", "10000000000"], ("--steps", "past any sane run"), {RUN: GOOD}),
    Case("report-not-a-run", ["report", "out"], ("out: no metrics.jsonl",), setup=_existing_output),
    Case("report-missing-dir", ["report", "gone"], ("gone: no such run directory",)),
]


def test_the_corpus_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A two-step toy run with one checkpoint, to copy and damage."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_file = run_dir.parent / "run.toml"
    run_file.write_text(GOOD.replace("training_steps = 6", "training_steps = 2"), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        support.install_test_plugin(patch.setattr)
        assert main(["train", str(run_file), "--output", str(run_dir)]) == 0
    yield run_dir


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    case: Case,
    tmp_path: Path,
    finished_run: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    support.install_test_plugin(monkeypatch.setattr)
    monkeypatch.chdir(tmp_path)
    for name, content in case.files.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            (tmp_path / name).write_text(content, encoding="utf-8")
    if case.setup is not None:
        case.setup(tmp_path, finished_run)
    capsys.readouterr()
    before = _snapshot(tmp_path)

    code = main(case.argv)

    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("astra: error: ")
    for fragment in case.expect:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in captured.out + captured.err
    assert _snapshot(tmp_path) == before, "the working directory changed"


def test_config_errors_from_astra_core_config_are_one_line(tmp_path: Path) -> None:
    from astra_core.config import load_run_file
    from astra_core.errors import ConfigError

    path = tmp_path / "run.toml"
    bad = "[training]\nlr = -1\nbatch_size = 0\ntraining_steps = 'x'\ncheckpoint_every = 2\nbogus = 1\n"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_run_file(path)
    message = str(caught.value)
    assert "\n" not in message
    assert all(key in message for key in ("training.lr", "training.batch_size", "training.training_steps"))
