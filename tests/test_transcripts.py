"""Transcripts and samples: what a red-teamer reads of a run, as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from astra_core.graph import Graph, Node
from astra_core.protocols import EvaluationReport
from astra_core.rundir import TRANSCRIPTS, read_jsonl, sample_record, transcript_records, write_transcripts
from astra_core.types import JSON


class DetailEvaluator:
    """Reports one detail object per call, numbered, with a NaN score (strict JSON makes it null)."""

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self) -> EvaluationReport:
        self.calls += 1
        detail: dict[str, JSON] = {
            "prompt": f"p{self.calls}",
            "turns": [{"probe": "a", "response": "b", "score": float("nan")}],
        }
        return EvaluationReport(metrics={"x": 1.0}, details=[detail])


def test_training_writes_samples_every_n_steps_and_can_be_off(kit: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = kit.config(output_dir=str(run), training_steps=4, samples_every=2, samples_per_step=3)
    kit.trainer(config, kit.parts()).train()
    samples = read_jsonl(run / "samples.jsonl")
    assert [s["step"] for s in samples] == [2, 2, 2, 4, 4, 4]
    first = samples[0]
    assert first["turns"][0]["depth"] == 1 and first["turns"][0]["parent"] is None
    assert all(t["parent"] is None or t["parent"] < i for i, t in enumerate(first["turns"]))
    assert all(isinstance(t["probe"], str) and isinstance(t["reward"], float) for t in first["turns"])

    off = tmp_path / "off"
    kit.trainer(kit.config(output_dir=str(off), training_steps=2, samples_every=None), kit.parts()).train()
    assert not (off / "samples.jsonl").exists()


def test_every_periodic_evaluation_appends_its_attempts(kit: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = kit.config(output_dir=str(run), training_steps=4, eval_every=2, samples_every=None)
    kit.trainer(config, kit.parts(), evaluator=DetailEvaluator()).train()
    lines = (run / "eval" / "transcripts.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # strict JSON: NaN became null
    assert [(r["tester"], r["step"], r["prompt"]) for r in records] == [("trained", 2, "p1"), ("trained", 4, "p2")]
    assert records[0]["turns"][0]["score"] is None


def test_sample_record_lists_parents_before_children() -> None:
    graph: Graph[str, str] = Graph("hello")
    root: Node[str, str] = Node("hello", "p1", "r1", 0.5, scores={"s": 1.0})
    root.children.append(Node("hello p1 r1", "p2", "r2", 0.25))
    graph.children.append(root)
    record = sample_record(graph, 7)
    assert record == {
        "step": 7,
        "prompt": "hello",
        "turns": [
            {"depth": 1, "parent": None, "probe": "p1", "response": "r1", "reward": 0.5, "scores": {"s": 1.0}},
            {"depth": 2, "parent": 0, "probe": "p2", "response": "r2", "reward": 0.25, "scores": {}},
        ],
    }


def test_transcripts_are_added_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / TRANSCRIPTS
    write_transcripts(path, transcript_records([{"prompt": "a"}, "not an object"], "base", 0))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"prompt": "cut\n')
    assert transcript_records(None, "trained", 3) == []
    assert read_jsonl(path) == [{"tester": "base", "step": 0, "prompt": "a"}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_a_tester_evaluated_again_at_a_step_replaces_its_records_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / TRANSCRIPTS
    write_transcripts(path, transcript_records([{"prompt": "a"}, {"prompt": "b"}], "base", 0))
    write_transcripts(path, transcript_records([{"prompt": "a"}, {"prompt": "b"}], "trained", 40))
    write_transcripts(path, transcript_records([{"prompt": "c"}], "trained", 20))
    # `astra evaluate --compare-base` again: the same testers at the same steps, new attempts.
    again = transcript_records([{"prompt": "a2"}], "base", 0) + transcript_records([{"prompt": "a3"}], "trained", 40)
    write_transcripts(path, again)
    records = [(r["tester"], r["step"], r["prompt"]) for r in read_jsonl(path)]
    assert records == [("trained", 20, "c"), ("base", 0, "a2"), ("trained", 40, "a3")]


def test_evaluating_a_step_again_does_not_repeat_its_transcripts(kit: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = kit.config(output_dir=str(run), training_steps=2, eval_every=2, samples_every=None)
    trainer = kit.trainer(config, kit.parts(), evaluator=DetailEvaluator())
    trainer.train()
    trainer.evaluate()  # the step-2 tester evaluated a second time
    records = read_jsonl(run / "eval" / TRANSCRIPTS)
    assert [(r["tester"], r["step"], r["prompt"]) for r in records] == [("trained", 2, "p2")]
