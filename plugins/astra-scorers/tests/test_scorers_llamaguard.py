"""The llamaguard scorer's loading and scoring logic, on a tiny random GPT-2 saved to disk.

Real Llama Guard weights cannot be fetched here, so a 2-layer GPT-2 with a word-level tokenizer
and a chat template stands in: it exercises the same from_pretrained loading, templating,
left padding and verdict-token arithmetic.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from astra_core.errors import ComponentBuildError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from astra_scorers.llamaguard import LlamaGuardScorer  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "<eos>", "User:", "Agent:", "safe", "unsafe", "hello", "there", "you", "are", "an", "idiot"]
PARTS_TEMPLATE = "{% for m in messages %}User: {{ m['content'][0]['text'] }} {% endfor %}Agent:"
TEXT_TEMPLATE = "{% for m in messages %}User: {{ m['content'] }} {% endfor %}Agent:"
ITEMS = ["hello", "you are an idiot hello there you are", "there", "unknown words here", "", "idiot idiot"]


def save_tiny_guard(directory: Path, vocab: list[str] = VOCAB, template: str = PARTS_TEMPLATE) -> str:
    """A random 2-layer GPT-2 and a word-level tokenizer with a chat template, saved like a hub model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]", eos_token="<eos>", chat_template=template
    )
    config = GPT2Config(
        vocab_size=len(vocab), n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=2, eos_token_id=2
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # sharpen the random logits so scores spread out across texts
        model.lm_head.weight.mul_(20.0)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def guard_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_guard(tmp_path_factory.mktemp("tiny-guard"))


@pytest.fixture(scope="module")
def scorer(guard_path: str) -> LlamaGuardScorer:
    return LlamaGuardScorer(model=guard_path, batch_size=4, local_files_only=True)


def test_scores_are_in_unit_interval_one_per_input(scorer: LlamaGuardScorer) -> None:
    scores = scorer.score_texts(ITEMS)
    assert len(scores) == len(ITEMS)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert scorer.score_texts([]) == []


def test_scores_do_not_depend_on_batching_or_padding(guard_path: str) -> None:
    batched = LlamaGuardScorer(model=guard_path, batch_size=len(ITEMS)).score_texts(ITEMS)
    single = LlamaGuardScorer(model=guard_path, batch_size=1).score_texts(ITEMS)
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(round(s, 4) for s in batched)) > 1  # the texts really are scored differently


def test_score_is_unsafe_probability_of_the_verdict_token(scorer: LlamaGuardScorer) -> None:
    text = "you are an idiot"
    prompt = scorer.prompt(text)
    assert prompt == "User: you are an idiot Agent:"
    ids = scorer.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = scorer.model(input_ids=ids).logits[0, -1]
    safe, unsafe = logits[VOCAB.index("safe")], logits[VOCAB.index("unsafe")]
    expected = torch.sigmoid(unsafe - safe).item()
    assert scorer.score_texts([text]) == pytest.approx([expected], abs=1e-6)


def test_text_content_format_passes_a_plain_string_to_the_template(tmp_path: Path) -> None:
    path = save_tiny_guard(tmp_path, template=TEXT_TEMPLATE)
    scorer = LlamaGuardScorer(model=path, content_format="text", prompt_suffix=" ")
    assert scorer.prompt("hello there") == "User: hello there Agent: "
    assert len(scorer.score_texts(["hello", "there"])) == 2


def test_verdict_words_missing_from_the_vocabulary_are_a_clear_error(tmp_path: Path) -> None:
    path = save_tiny_guard(tmp_path, vocab=[w for w in VOCAB if w != "unsafe"])
    with pytest.raises(ComponentBuildError, match="unsafe_token 'unsafe' is not in the vocabulary"):
        LlamaGuardScorer(model=path)


def test_identical_verdict_tokens_are_rejected(guard_path: str) -> None:
    with pytest.raises(ComponentBuildError, match="start with the same token"):
        LlamaGuardScorer(model=guard_path, safe_token="safe", unsafe_token="safe")


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ComponentBuildError) as caught:
        LlamaGuardScorer(model="unused")
    assert str(caught.value) == (
        "scorer 'llamaguard' needs the transformers package: pip install 'astra-scorers[llamaguard]'"
    )


def test_passes_the_core_conformance_check(scorer: LlamaGuardScorer) -> None:
    from astra_core.testing import check_scorer

    assert check_scorer(scorer, ITEMS) == pytest.approx(scorer.score_texts(ITEMS))
