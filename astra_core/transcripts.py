"""What red-teamers read: evaluation transcripts and training samples, as JSON lines.

- ``eval/transcripts.jsonl``: one object per evaluation attempt (an evaluator's per-rollout
  detail), with ``tester`` ("base" or "trained") and ``step`` added. Every evaluation appends.
- ``samples.jsonl``: every ``training.samples_every`` steps, the first
  ``training.samples_per_step`` rollouts of the step's experience, each as ``step``, ``prompt``
  and its ``turns`` (depth, parent turn index, probe, response, reward, scores).

Kept in one small module so the run-directory owner can absorb it whole; the CLI and the
Trainer write through these functions only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from astra_core.graph import Graph, Node
from astra_core.types import JSON, json_safe

TRANSCRIPTS = "transcripts.jsonl"
"""The transcripts file's name inside an evaluation directory (a run's ``eval/``)."""
SAMPLES = Path("samples.jsonl")


def append_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Append one strict-JSON line per record to `path` (creating its directory); return the count."""
    lines = [json.dumps(json_safe(record), allow_nan=False, ensure_ascii=False) for record in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
    return len(lines)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; a missing file is empty, a malformed line is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(record, dict):
            records.append(record)
    return records


def transcript_records(details: JSON, tester: str, step: int | None) -> list[dict[str, Any]]:
    """One transcript record per attempt of an evaluation report's `details` (a list of objects)."""
    if not isinstance(details, list):
        return []
    return [{"tester": tester, "step": step, **d} for d in details if isinstance(d, dict)]


def write_transcripts(eval_dir: Path, details: JSON, tester: str, step: int | None) -> int:
    """Append an evaluation's attempts to `eval_dir`/transcripts.jsonl; return how many."""
    return append_jsonl(eval_dir / TRANSCRIPTS, transcript_records(details, tester, step))


def sample_record(graph: Graph[Any, Any], step: int) -> dict[str, Any]:
    """A rollout tree as text: its prompt and every turn, parents before children."""
    turns: list[dict[str, Any]] = []
    index: dict[int, int] = {}

    def visit(node: Node[Any, Any], depth: int, parent: int | None) -> None:
        index[id(node)] = len(turns)
        turns.append(
            {
                "depth": depth,
                "parent": parent,
                "probe": str(node.probe),
                "response": str(node.response),
                "reward": node.reward,
                "scores": dict(node.scores),
            }
        )
        for child in node.children:
            visit(child, depth + 1, index[id(node)])

    for child in graph.children:
        visit(child, 1, None)
    return {"step": step, "prompt": str(graph.context), "turns": turns}


def write_samples(run_dir: Path, graphs: Sequence[Graph[Any, Any]], step: int, count: int) -> int:
    """Append the first `count` rollouts of a step to `run_dir`/samples.jsonl; return how many."""
    return append_jsonl(run_dir / SAMPLES, [sample_record(graph, step) for graph in graphs[:count]])
