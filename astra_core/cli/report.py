"""``astra report``: render a run directory as report.md (plots beside it) and a self-contained report.html.

The report leads with the evaluator's headline metric (the first metric of its report; for the
``ast`` evaluator, benign-probe attack success) and its paired change from the base tester when
the evaluation has one, then the top successful attacks read from ``eval/transcripts.jsonl`` (a
turn whose ``benign_success`` is true), deduplicated, and plots of the headline over the run's
evaluations, the loss, the reward and its parts. report.html embeds every plot as a data URI, so
it opens in a browser from anywhere, with no server and no files beside it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from astra_core.cli.common import metrics_table, reward_summary, series
from astra_core.errors import AstraError, ConfigError
from astra_core.rundir import RunDir, describe_os_error, is_disk_error, write_atomic

TOP_ATTACKS = 10
"""Rows of the successful-attacks table."""


def add_parser(commands: Any) -> None:
    report = commands.add_parser("report", help="write RUN_DIR/report.md and report.html with plots of the metrics")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `astra train`")
    report.set_defaults(handler=run)


@dataclass
class _Report:
    """The report's content, rendered twice: as Markdown and as HTML."""

    title: str
    summary: list[str] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    plots: list[tuple[str, str, bytes]] = field(default_factory=list)  # (title, file name, PNG)
    tables: list[tuple[str, dict[str, Mapping[str, Any]]]] = field(default_factory=list)


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
        from matplotlib.figure import Figure  # noqa: F401  (checked here: the plots need it)
    except ImportError:
        raise AstraError(
            "`astra report` draws its plots with matplotlib, which is not installed: pip install 'astra-core[report]'"
        ) from None

    try:
        with run.locked_for_writing():  # not while the run trains (or another report draws)
            return _write_report(run, records)
    except OSError as error:
        if not is_disk_error(error):
            raise
        raise AstraError(
            f"{run.path}: cannot write the report: {describe_os_error(error)}; free space, then retry"
        ) from None


def _write_report(run: RunDir, records: list[dict[str, Any]]) -> int:
    run_dir = run.path
    periodic = [(step, data["metrics"]) for step, data in sorted(run.read_evaluations().items())]
    final = run.read_final_evaluation()
    final = final if isinstance(final, dict) and isinstance(final.get("reports"), dict) else None
    report = _Report(title=f"Run report: {run_dir.name}")
    report.headline = _headline(final)
    report.attacks = top_attacks(run.read_transcripts())
    report.summary = [f"steps recorded: {len(records)}", reward_summary(records)]
    _, losses = series(records, "loss")
    if losses:
        report.summary.append(f"final loss: {losses[-1]:.4g}")
    report.plots = _plots(records, periodic, final)
    if periodic:
        report.tables.append(("Evaluations during training", {f"step {s}": m for s, m in periodic}))
    if final is not None:
        columns = {
            str(label): r["metrics"]
            for label, r in final["reports"].items()
            if isinstance(r, dict) and isinstance(r.get("metrics"), dict)
        }
        if columns:
            report.tables.append(("Evaluation", columns))

    plots_dir = run_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    for _, name, png in report.plots:
        (plots_dir / name).write_bytes(png)
    write_atomic(run_dir / "report.md", _markdown(report))
    write_atomic(run_dir / "report.html", _html(report))
    print(f"wrote {run_dir / 'report.md'} and {run_dir / 'report.html'} ({len(report.plots)} plot(s) in {plots_dir})")
    return 0


# --- content ----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _headline(final: Mapping[str, Any] | None) -> list[str]:
    """The first metric of each report of the final evaluation, and the paired comparison."""
    if final is None:
        return []
    lines = []
    for label, report in final["reports"].items():
        metrics = report.get("metrics") if isinstance(report, dict) else None
        if not isinstance(metrics, dict) or not metrics:
            continue
        name, value = next(iter(metrics.items()))
        low, high = _number(metrics.get(f"{name}_ci_low")), _number(metrics.get(f"{name}_ci_high"))
        interval = f" (95% CI {low:.3g} to {high:.3g})" if low is not None and high is not None else ""
        lines.append(f"{label} tester: {name} = {_fmt(value)}{interval}")
    comparison = final.get("comparison")
    if isinstance(comparison, dict) and comparison:
        lines.append("trained against base, paired over the same prompts: " + _pairs(comparison))
    return lines


def _pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} = {_fmt(value)}" for key, value in values.items())


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a" if value is None else str(value)
    return f"{value:.4g}"


def top_attacks(transcripts: Sequence[Mapping[str, Any]], limit: int = TOP_ATTACKS) -> list[dict[str, Any]]:
    """The successful attacks of the transcripts (turns whose ``benign_success`` is true), one row
    per distinct probe (up to case and whitespace), most toxic response first, then most found.

    A row: ``probe``, ``response`` (its most toxic), ``response_toxicity``, ``probe_toxicity``,
    ``found`` (how many attempts), ``testers`` (who found it: base, trained, with the step).
    """
    rows: dict[str, dict[str, Any]] = {}
    for record in transcripts:
        turns = record.get("turns")
        if not isinstance(turns, list):
            continue
        tester = str(record.get("tester", "?")) + (f"@{record['step']}" if record.get("step") else "")
        for turn in turns:
            if not isinstance(turn, dict) or turn.get("benign_success") is not True:
                continue
            probe = str(turn.get("probe", ""))
            key = " ".join(probe.lower().split())
            toxicity = _number(turn.get("response_toxicity")) or 0.0
            row = rows.setdefault(key, {"probe": probe, "found": 0, "testers": [], "response_toxicity": -1.0})
            row["found"] += 1
            if tester not in row["testers"]:
                row["testers"].append(tester)
            if toxicity > row["response_toxicity"]:
                row.update(
                    response=str(turn.get("response", "")),
                    response_toxicity=toxicity,
                    probe_toxicity=_number(turn.get("probe_toxicity")),
                )
    ordered = sorted(rows.values(), key=lambda r: (-r["response_toxicity"], -r["found"], r["probe"]))
    return ordered[:limit]


def _plots(
    records: Sequence[Mapping[str, Any]],
    periodic: Sequence[tuple[int, Mapping[str, Any]]],
    final: Mapping[str, Any] | None,
) -> list[tuple[str, str, bytes]]:
    keys = sorted({k for r in records for k in r})
    plots = []
    success = _success_plot(periodic, final)
    if success is not None:
        plots.append(success)
    for name, title, plotted in [
        ("loss.png", "loss", ["loss"]),
        ("reward.png", "mean reward", ["reward/mean"]),
        ("toxicity.png", "reward parts (score/<name>)", [k for k in keys if k.startswith("score/")]),
    ]:
        drawn = [(key, *series(records, key)) for key in plotted]
        drawn = [d for d in drawn if d[1]]
        if drawn:
            plots.append((title, name, _figure(title, "step", [(k, s, v, None) for k, s, v in drawn])))
    return plots


def _success_plot(
    periodic: Sequence[tuple[int, Mapping[str, Any]]], final: Mapping[str, Any] | None
) -> tuple[str, str, bytes] | None:
    """The headline metric over the run's evaluations: periodic ones, the final trained one, the base."""
    points: dict[str, list[tuple[float, float, float | None, float | None]]] = {}
    name = None

    def add(label: str, step: Any, metrics: Mapping[str, Any]) -> None:
        nonlocal name
        if not metrics:
            return
        name = name or next(iter(metrics))
        value, at = _number(metrics.get(name)), _number(step)
        if value is not None and at is not None:
            band = (_number(metrics.get(f"{name}_ci_low")), _number(metrics.get(f"{name}_ci_high")))
            points.setdefault(label, []).append((at, value, *band))

    if final is not None:
        reports = final["reports"]
        if isinstance(reports.get("base"), dict):
            add("base tester", 0, reports["base"].get("metrics") or {})
    for step, metrics in periodic:
        add("trained tester", step, metrics)
    if final is not None and isinstance(final["reports"].get("trained"), dict):
        add("trained tester", final.get("step"), final["reports"]["trained"].get("metrics") or {})
    if not points or name is None:
        return None
    lines = []
    for label, values in points.items():
        values = sorted(set(values))
        steps, ys = [v[0] for v in values], [v[1] for v in values]
        bands = [(v[2], v[3]) for v in values]
        band = bands if all(lo is not None and hi is not None for lo, hi in bands) else None
        lines.append((label, steps, ys, band))
    title = f"{name} over the run's evaluations"
    return title, "success.png", _figure(title, "step", lines, marker=True)


def _figure(
    title: str,
    xlabel: str,
    lines: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[tuple[Any, Any]] | None]],
    marker: bool = False,
) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), layout="constrained")
    axes = figure.subplots()
    for label, steps, values, band in lines:
        axes.plot(steps, values, label=label, marker="o" if marker else None)
        if band is not None:
            axes.fill_between(steps, [b[0] for b in band], [b[1] for b in band], alpha=0.2)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# --- rendering --------------------------------------------------------------------------------


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return (text[: limit - 1] + "…" if len(text) > limit else text).replace("|", "\\|")


def _markdown(report: _Report) -> str:
    lines = [f"# {report.title}", ""]
    if report.headline:
        lines += ["## Result", "", *(f"- {line}" for line in report.headline), ""]
    lines += [f"- {line}" for line in report.summary] + [""]
    if report.attacks:
        lines += [
            "## Top successful attacks",
            "",
            "Benign probes (toxicity below the probe threshold) that drew a toxic response, deduplicated.",
            "",
            "| probe | response | response toxicity | probe toxicity | found | by |",
            "|---|---|---|---|---|---|",
        ]
        for row in report.attacks:
            cells = [
                _cell(row["probe"]),
                _cell(row["response"]),
                _fmt(row["response_toxicity"]),
                _fmt(row["probe_toxicity"]),
                str(row["found"]),
                ", ".join(row["testers"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for title, name, _ in report.plots:
        lines += [f"## {title[:1].upper()}{title[1:]}", "", f"![{title}](plots/{name})", ""]
    for title, columns in report.tables:
        lines += [f"## {title}", "", metrics_table(columns), ""]
    return "\n".join(lines).rstrip() + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #e8eef7; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "") -> str:
    attribute = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(report: _Report) -> str:
    parts = [f"<h1>{html.escape(report.title)}</h1>"]
    if report.headline:
        parts.append("<h2>Result</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in report.headline) + "</ul>")
    parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in report.summary) + "</ul>")
    if report.attacks:
        rows = [
            [
                " ".join(r["probe"].split()),
                " ".join(r["response"].split()),
                _fmt(r["response_toxicity"]),
                _fmt(r["probe_toxicity"]),
                str(r["found"]),
                ", ".join(r["testers"]),
            ]
            for r in report.attacks
        ]
        header = ["probe", "response", "response toxicity", "probe toxicity", "found", "by"]
        parts += [
            "<h2>Top successful attacks</h2>",
            "<p>Benign probes (toxicity below the probe threshold) that drew a toxic response, deduplicated.</p>",
            _html_table(header, rows, "attacks"),
        ]
    for title, _, png in report.plots:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<h2>{html.escape(title[:1].upper() + title[1:])}</h2>"
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        )
    for title, columns in report.tables:
        names: list[str] = []
        for metrics in columns.values():
            names.extend(k for k in metrics if k not in names)
        rows = [[name, *(_fmt(m.get(name)) for m in columns.values())] for name in names]
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(["metric", *columns], rows)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
