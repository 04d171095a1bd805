"""The detoxify scorer without its extra: a one-line error naming what to install."""

from __future__ import annotations

import sys

import pytest

from astra_core.errors import ComponentBuildError
from astra_core.plugins import discover
from astra_scorers.detoxify_scorer import DetoxifyScorer


def test_missing_detoxify_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "detoxify", None)  # makes `import detoxify` fail even where installed
    with pytest.raises(ComponentBuildError) as caught:
        DetoxifyScorer(allow_pickle_weights=True)
    assert str(caught.value) == "scorer 'detoxify' needs the detoxify package: pip install 'astra-scorers[detoxify]'"


def test_building_through_the_registry_keeps_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "detoxify", None)
    info = discover().registries.get("scorer", "detoxify")
    with pytest.raises(ComponentBuildError, match=r"pip install 'astra-scorers\[detoxify\]'"):
        info.build(options={"checkpoint": "/nowhere/model.ckpt", "allow_pickle_weights": True})


def test_detoxify_refuses_its_pickle_checkpoints_without_the_opt_in() -> None:
    from astra_core.errors import ConfigError

    with pytest.raises(ConfigError, match="set allow_pickle_weights = true only for a checkpoint you trust"):
        DetoxifyScorer(checkpoint="/nowhere/model.ckpt")


CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "you", "are", "an", "idiot", "have", "a", "nice", "day"]


@pytest.fixture(scope="module")
def offline_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A randomly initialised tiny BERT classifier saved as Detoxify saves its checkpoints, and a
    base-model directory (config.json, vocab.txt) like bert-base-uncased's, built here."""
    pytest.importorskip("detoxify")
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    root = tmp_path_factory.mktemp("detoxify")
    base = root / "bert-base-uncased"
    base.mkdir()
    (base / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    config = BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    config.save_pretrained(base)
    BertTokenizer(str(base / "vocab.txt")).save_pretrained(base)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**{**config.to_dict(), "num_labels": len(CLASSES)}))
    checkpoint = root / "toxic_tiny.ckpt"
    arch: dict[str, object] = {"model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification"}
    arch |= {"tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}
    torch.save(
        {
            "config": {"arch": {"args": arch}, "dataset": {"args": {"classes": CLASSES}}},
            "state_dict": model.state_dict(),
        },
        checkpoint,
    )
    return str(checkpoint), str(base)


def test_the_offline_recipe_loads_with_the_hub_off_and_scores_batches_of_one(
    offline_checkpoint: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint, base = offline_checkpoint
    scorer = DetoxifyScorer(
        checkpoint=checkpoint, huggingface_config_path=base, label="insult", batch_size=2, allow_pickle_weights=True
    )
    texts = ["you are an idiot", "have a nice day", "idiot"]
    scores = scorer.score_texts(texts)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert scorer.score_texts(texts[:1]) == pytest.approx(scores[:1], abs=1e-6)  # a batch of one is a list of one
    assert scorer.score_texts([]) == []
    # By hand: the classifier's sigmoid output for the label's column, each text alone.
    inputs = scorer.tokenizer(texts[1], return_tensors="pt")
    with torch.no_grad():
        expected = torch.sigmoid(scorer.model(**inputs).logits[0, CLASSES.index("insult")]).item()
    assert scores[1] == pytest.approx(expected, abs=1e-5)


def test_the_offline_recipe_standardises_labels_and_rejects_unknown_ones(offline_checkpoint: tuple[str, str]) -> None:
    from astra_core.errors import ConfigError

    checkpoint, base = offline_checkpoint
    scorer = DetoxifyScorer(checkpoint=checkpoint, huggingface_config_path=base, allow_pickle_weights=True)
    assert scorer.class_names[0] == "toxicity"
    with pytest.raises(ConfigError, match="no output 'rudeness'"):
        DetoxifyScorer(checkpoint=checkpoint, huggingface_config_path=base, label="rudeness", allow_pickle_weights=True)
