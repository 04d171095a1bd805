"""``astra report``: render a run directory's metrics and evaluations as report.md with plots."""

from __future__ import annotations

import argparse
from typing import Any

from astra_core.cli.common import metrics_table, reward_summary, series
from astra_core.errors import AstraError, ConfigError
from astra_core.rundir import RunDir, write_atomic


def add_parser(commands: Any) -> None:
    report = commands.add_parser("report", help="write RUN_DIR/report.md with plots of the metrics")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `astra train`")
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    run = RunDir(args.run_dir)
    run_dir, metrics_path = run.path, run.metrics_path
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory (give a directory written by `astra train`)")
    if not metrics_path.is_file():
        raise ConfigError(f"{run_dir}: no {metrics_path.name}; give a directory written by `astra train`")
    records = run.read_metrics()
    if not records:
        raise ConfigError(f"{metrics_path}: no training steps recorded yet; train first, then report")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise AstraError(
            "`astra report` draws its plots with matplotlib, which is not installed: pip install 'astra-core[report]'"
        ) from None

    with run.locked_for_writing():  # not while the run trains (or another report draws)
        return _write_report(run, records, Figure)


def _write_report(run: RunDir, records: list[dict[str, Any]], Figure: Any) -> int:
    run_dir = run.path
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
    for filename, title, plotted in figures:
        drawn = [(key, *series(records, key)) for key in plotted]
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
    lines.append(f"- {reward_summary(records)}")
    _, losses = series(records, "loss")
    if losses:
        lines.append(f"- final loss: {losses[-1]:.4g}")
    lines.append("")
    for title, path in images:
        lines += [f"## {title.capitalize()}", "", f"![{title}]({path})", ""]
    lines += _evaluation_section(run)
    report_path = run_dir / "report.md"
    write_atomic(report_path, "\n".join(lines).rstrip() + "\n")
    print(f"wrote {report_path} ({len(images)} plot(s) in {plots_dir})")
    return 0


def _evaluation_section(run: RunDir) -> list[str]:
    lines: list[str] = []
    periodic = {f"step {step}": data["metrics"] for step, data in run.read_evaluations().items()}
    if periodic:
        lines += ["## Evaluations during training", "", metrics_table(periodic), ""]
    final = run.read_final_evaluation()
    if isinstance(final, dict) and isinstance(final.get("reports"), dict):
        columns = {
            str(label): r["metrics"]
            for label, r in final["reports"].items()
            if isinstance(r, dict) and isinstance(r.get("metrics"), dict)
        }
        if columns:
            lines += ["## Evaluation", "", metrics_table(columns), ""]
    return lines
