"""The step benchmark's correctness parts: calls, pairs and token positions it reports (no timing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import step_benchmark  # noqa: E402
from bench.per_node import per_node_calls  # noqa: E402
from bench.recorder import CATEGORIES, POSITION_KINDS, Recorder  # noqa: E402
from bench.reference import preference_groups, reference_positions  # noqa: E402

EPISODES, WIDTH, DEPTH = 2, 2, 2
TINY_RUN = [
    "--episodes", str(EPISODES), "--width", str(WIDTH), "--depth", str(DEPTH), "--steps", "1",
    "--probe-tokens", "3", "--response-tokens", "3", "--batch-size", "4", "--mode", "both",
]  # fmt: skip


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """One tiny run of the benchmark in both modes, printed line parsed back."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert step_benchmark.main(TINY_RUN) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, "the benchmark prints exactly one line"
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


@pytest.fixture(scope="module")
def system() -> Any:
    from astra_transformers.system import TransformersSystem

    torch.manual_seed(0)
    return TransformersSystem(probe_tokens=3, response_tokens=3)


def test_batched_mode_makes_two_generate_calls_per_level(report: dict[str, Any]) -> None:
    assert report["modes"]["batched"]["generate_calls_per_step"] == 2 * DEPTH


def test_per_node_mode_makes_two_generate_calls_per_parent_context(report: dict[str, Any]) -> None:
    expected = per_node_calls(EPISODES, WIDTH, DEPTH)
    assert expected == 2 * EPISODES * (1 + WIDTH)
    assert report["modes"]["per-node"]["generate_calls_per_step"] == expected


def test_per_node_calls_match_the_reference_toolbox_default() -> None:
    assert per_node_calls(8, 2, 3) == 112


@pytest.mark.parametrize("mode", ["batched", "per-node"])
def test_pairs_per_step_are_the_branching_nodes_with_distinct_rewards(report: dict[str, Any], mode: str) -> None:
    record = report["modes"][mode]
    branching = EPISODES * (1 + WIDTH)  # the root and each first-level node of every episode
    assert record["dpo_pairs_per_step"] == record["train_examples_per_step"]
    assert 0 < record["dpo_pairs_per_step"] <= branching
    assert record["optimizer_updates_per_step"] == -(-record["train_examples_per_step"] // 4)  # batch size 4


def test_the_json_line_has_every_field(report: dict[str, Any]) -> None:
    for key in ("date", "machine", "model", "parameters", "modes", "batched_over_per_node"):
        assert key in report
    for record in report["modes"].values():
        for key in (
            "seconds_per_step",
            "episodes_per_second",
            "generated_tokens_per_second",
            "breakdown_seconds",
            "peak_rss_mib",
            "generate_calls_per_step",
            "model_forwards_per_step",
            "token_positions_per_step",
            "reference_token_positions_per_step",
            "token_positions_vs_reference",
            "dpo_pairs_per_step",
            "shuffle_by",
            "opener_tokens",
        ):
            assert key in record, key
        assert set(record["breakdown_seconds"]) == {*CATEGORIES, "other"}
        assert record["peak_rss_mib"] > 0
        for kinds in record["token_positions_per_step"].values():
            assert set(kinds) == {*POSITION_KINDS, "total"}
    assert set(report["batched_over_per_node"]) >= {"seconds_per_step", "speedup", "token_positions"}


def test_both_modes_count_the_same_kinds_of_work(report: dict[str, Any]) -> None:
    for record in report["modes"].values():
        positions = record["token_positions_per_step"]
        tester = positions["tester"]
        assert tester["prefill"] > 0 and tester["decode"] > 0 and tester["train_forward"] > 0
        assert tester["backward"] == tester["train_forward"]  # every training forward is backpropagated
        # Frozen models never take a backward (how many frozen forwards they run is the system's business).
        assert all(kinds["backward"] == 0 for name, kinds in positions.items() if name != "tester")


def test_recorder_counts_positions_of_a_known_forward_by_phase(system: Any) -> None:
    model = system.tester
    ids = torch.ones((3, 5), dtype=torch.long)
    with Recorder() as recorder:
        recorder.watch_model(model, "tester")
        loss = model(input_ids=ids).logits.sum()  # under autograd: a training forward
        recorder.watch_backward()
        torch.autograd.backward(loss)
        with torch.inference_mode():
            model.base_model(input_ids=ids)  # the base model alone counts once, as frozen
            with recorder.phase("rollout_tester"):
                model(input_ids=ids)
                model(input_ids=ids[:, :1])
        counts = recorder.snapshot()
    model.zero_grad(set_to_none=True)
    assert counts.positions["tester"] == {
        "train_forward": 15,
        "backward": 15,
        "frozen_forward": 15,
        "prefill": 15,
        "decode": 3,
    }
    assert counts.forwards["tester"] == 4


def test_recorder_counts_one_tester_logprobs_call(system: Any) -> None:
    contexts, continuations = ["Hello there, how are you?", "Hi."], [" Fine, thanks.", " Good"]
    lengths = [
        len(system.tokenizer(c, add_special_tokens=False)["input_ids"])
        + len(system.tokenizer(k, add_special_tokens=False)["input_ids"])
        for c, k in zip(contexts, continuations, strict=True)
    ]
    with Recorder() as recorder:
        recorder.watch_system(system)
        system.tester_logprobs(contexts, continuations)
        counts = recorder.snapshot()
    tester = counts.positions["tester"]
    # Every real token is processed once; padding may add up to a full rectangle.
    assert sum(lengths) <= tester["train_forward"] <= len(lengths) * max(lengths)
    assert tester["prefill"] == tester["decode"] == tester["frozen_forward"] == 0
    assert counts.calls["tester_logprobs"] == 1
    assert counts.seconds["logprob_forwards"] > 0


def test_recorder_restores_what_it_wrapped(system: Any) -> None:
    before = (system.tester_logprobs, torch.autograd.backward, type(system.tokenizer).__call__)
    with Recorder() as recorder:
        recorder.watch_system(system)
        recorder.watch_backward()
        assert system.tester_logprobs != before[0]
    assert (system.tester_logprobs, torch.autograd.backward, type(system.tokenizer).__call__) == before


def test_reference_work_counts_each_node_and_pair() -> None:
    from astra_core.graph import Graph, Node

    def words(texts: Any) -> list[int]:
        return [len(text.split()) for text in texts]

    graph = Graph("a b c", [Node("a b c", "p q", "r", 0.9), Node("a b c", "s", "t u v", 0.1)])
    work = reference_positions([graph], words, words)
    assert len(preference_groups(graph)) == 1
    assert work["tester"] == {"prefill": 6, "decode": 1, "train_forward": 9, "frozen_forward": 0, "backward": 9}
    assert work["target"] == {"prefill": 9, "decode": 2, "train_forward": 0, "frozen_forward": 9, "backward": 0}
    assert work["baseline"] == {"prefill": 0, "decode": 0, "train_forward": 0, "frozen_forward": 9, "backward": 9}


_VOCABULARY: dict[str, int] = {}


def _word_ids(texts: Any) -> list[list[int]]:
    return [[_VOCABULARY.setdefault(word, len(_VOCABULARY)) for word in text.split()] for text in texts]


def test_the_floor_counts_each_unique_token_once_per_model_and_pass() -> None:
    from astra_core.graph import Graph, Node
    from bench.floor import floor_positions

    # Opener "a b c"; two siblings; the first has two children after "a b c p q r".
    first = Node("a b c", " p q", " r", 0.9)
    first.children = [Node("a b c p q r", " x", " y", 0.2), Node("a b c p q r", " z w", " y", 0.7)]
    graph = Graph("a b c", [first, Node("a b c", " s", " t u v", 0.1)])
    floor = floor_positions([graph], _word_ids, _word_ids)
    # Tester rows: abc+pq, abc+s, abcpqr+x, abcpqr+zw -> a b c p q | s | r x | z w = 10 trie nodes.
    assert floor["tester"] == {"generation": 10, "train_forward": 10, "backward": 10}
    # Target rows: abcpq+r, abcs+tuv, abcpqrx+y, abcpqrzw+y -> a b c p q r | s t u v | x y | z w y = 15.
    assert floor["target"] == {"generation": 15}
    assert floor["baseline"] == {"frozen_forward": 10}
    # A context budget cuts the oldest tokens: the second turn's rows ("p q r" + x, + z w) no longer
    # share the opener's trie path.
    assert floor_positions([graph], _word_ids, _word_ids, tester_budget=3)["tester"]["generation"] == 12


def test_the_report_has_the_floor_and_the_cost_per_position(report: dict[str, Any]) -> None:
    for record in report["modes"].values():
        floor = record["floor_token_positions_total_per_step"]
        assert 0 < floor < record["reference_token_positions_total_per_step"]
        assert record["floor_vs_reference"] == pytest.approx(floor / record["reference_token_positions_total_per_step"])
        assert record["microseconds_per_position"] > 0


def test_file_prompts_longer_than_the_limit_are_left_out(tmp_path: Path) -> None:
    source = tmp_path / "prompts.json"
    source.write_text(json.dumps(["Hi there.", "word " * 50, "How are you?"]), encoding="utf-8")
    path, counts = step_benchmark.filter_prompts(str(source), "tiny", 10, tmp_path)
    assert counts == {"kept": 2, "left_out": 1}
    assert json.loads(Path(path).read_text(encoding="utf-8")) == ["Hi there.", "How are you?"]


def test_a_missing_prompt_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        step_benchmark.parse_args(["--prompts", "no/such/prompts.json"])
    assert raised.value.code == 2
    assert "no such file" in capsys.readouterr().err


REDDIT = ROOT.parent / "shared" / "bench-data" / "reddit_prompts_train.json"


@pytest.mark.skipif(not REDDIT.is_file(), reason="the reference's prompts are not beside this checkout (../shared)")
def test_the_headline_prompts_load_and_keep_most_openers(tmp_path: Path) -> None:
    _, counts = step_benchmark.filter_prompts(str(REDDIT), "tiny", step_benchmark.MAX_PROMPT_TOKENS, tmp_path)
    assert counts["kept"] > 0.9 * (counts["kept"] + counts["left_out"])


def test_the_batching_and_opener_flags_reach_the_run() -> None:
    args = step_benchmark.parse_args(["--shuffle-by", "example", "--opener-tokens", "64"])
    settings = step_benchmark.Settings(shuffle_by=args.shuffle_by, opener_tokens=args.opener_tokens)
    config = step_benchmark.run_config(settings)
    assert config.training.shuffle_by == "example"
    assert config.system.options["opener_tokens"] == 64
    default = step_benchmark.run_config(step_benchmark.Settings())
    assert default.training.shuffle_by == "episode" and "opener_tokens" not in default.system.options


def test_batches_of_whole_episodes_are_noisier_when_an_episodes_examples_agree() -> None:
    from bench.batch_variance import batch_variance

    generator = torch.Generator().manual_seed(0)
    # Four episodes of four examples; each episode's gradients sit around its own direction.
    centres = torch.randn(4, 1, 32, generator=generator)
    gradients = (centres + 0.1 * torch.randn(4, 4, 32, generator=generator)).reshape(16, 32) + 1.0
    by_example = batch_variance(gradients, [4, 4, 4, 4], 4, "example", 50)
    by_episode = batch_variance(gradients, [4, 4, 4, 4], 4, "episode", 50)
    assert by_episode > 2 * by_example > 0
    # Independent examples: the two ways of batching cost about the same.
    independent = torch.randn(16, 32, generator=generator) + 1.0
    ratio = batch_variance(independent, [4] * 4, 4, "episode", 200) / batch_variance(
        independent, [4] * 4, 4, "example", 200
    )
    assert 0.5 < ratio < 2.0


def test_the_scaling_table_reports_time_and_work_per_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_benchmark, "SCALING_EPISODES", (1, 2))
    settings = step_benchmark.Settings(
        width=2, depth=1, batch_size=4, steps=1, warmup=0, probe_tokens=3, response_tokens=3
    )
    rows = step_benchmark.scaling(settings)
    assert [row["episodes"] for row in rows] == [1.0, 2.0]
    for row in rows:
        assert row["seconds_per_episode"] == pytest.approx(row["seconds_per_step"] / row["episodes"])
        assert row["token_positions_per_episode"] > 0 and row["microseconds_per_position"] > 0
        assert row["floor_vs_reference"] > 0 and row["token_positions_vs_reference"] > 0


def test_the_batching_mode_compares_both_shuffles_on_the_same_trees() -> None:
    import contextlib
    import io

    out = io.StringIO()
    run = [*TINY_RUN[: TINY_RUN.index("--mode")], "--mode", "batching"]
    with contextlib.redirect_stdout(out):
        assert step_benchmark.main(run) == 0
    report = json.loads(out.getvalue())
    batched, mixed = report["modes"]["batched"], report["modes"]["by-example"]
    assert (batched["shuffle_by"], mixed["shuffle_by"]) == ("episode", "example")
    for kind in ("prefill", "decode"):  # the same trees: generation did the same work
        assert batched["token_positions_per_step"]["tester"][kind] == mixed["token_positions_per_step"]["tester"][kind]
    assert set(report["batched_over_by_example"]) == {"speedup", "update_speedup", "token_positions"}


def test_a_chat_run_is_benchmarked_in_both_modes_without_text_estimates(tmp_path: Path) -> None:
    import contextlib
    import io

    from astra_transformers.testing import build_tiny_llama

    llama = build_tiny_llama(tmp_path / "llama")
    run = tmp_path / "chat.toml"
    run.write_text(
        f'algorithm = "dpo"\nscorer = "profanity"\n'
        f'[system]\nname = "transformers"\nmodel = "{llama.as_posix()}"\ntarget_chat = true\n'
        f'system_prompt = "Be kind."\nprobe_tokens = 3\nresponse_tokens = 3\n'
        f'[sampler]\nname = "ast"\ntree_width = 2\ntree_depth = 1\n'
        f"[training]\nnum_episodes_per_experience = 2\nbatch_size = 4\n",
        encoding="utf-8",
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert step_benchmark.main(["--config", str(run), "--steps", "1", "--warmup", "0", "--mode", "both"]) == 0
    report = json.loads(out.getvalue())
    assert report["models"] == {"tester": str(llama.as_posix()), "target": str(llama.as_posix())}
    assert report["modes"]["batched"]["generate_calls_per_step"] == 2
    assert report["modes"]["per-node"]["generate_calls_per_step"] == per_node_calls(2, 2, 1)
    for record in report["modes"].values():
        assert record["token_positions_total_per_step"] > 0
        assert record["reference_token_positions_per_step"] is None  # conversations are not text
        assert record["floor_token_positions_total_per_step"] is None
        assert record["token_positions_vs_reference"] is None


@pytest.mark.parametrize(("shape", "width", "layers"), [("gpt2-1m", 128, 4), ("gpt2-21m", 512, 6)])
def test_a_shape_is_a_random_gpt2_with_the_embedded_tokenizer_and_1024_positions(
    tmp_path: Path, shape: str, width: int, layers: int
) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from astra_transformers import TINY_MODEL_DIR

    directory = step_benchmark.build_shape(shape, tmp_path / shape)
    config = AutoConfig.from_pretrained(directory)
    assert (config.n_positions, config.n_embd, config.n_layer) == (1024, width, layers)
    assert config.vocab_size == AutoConfig.from_pretrained(TINY_MODEL_DIR).vocab_size
    assert (
        AutoTokenizer.from_pretrained(directory)("Hi there")["input_ids"]
        == (AutoTokenizer.from_pretrained(TINY_MODEL_DIR)("Hi there")["input_ids"])
    )
    with pytest.raises(ValueError, match="known shapes: gpt2-21m, gpt2-1m"):
        step_benchmark.build_shape("gpt2-7b", tmp_path / "nope")
