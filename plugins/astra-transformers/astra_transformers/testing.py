"""Tiny randomly initialised Llama-architecture chat models for tests (no download, a second).

`build_tiny_llama` writes a ``save_pretrained`` directory: a byte-level BPE tokenizer trained on
a few sentences, special tokens in the Llama 3 style (``<|begin_of_text|>``, ``<|eot_id|>``,
header tokens), a chat template (`LLAMA3_TEMPLATE` by default) and a generation config whose
``eos_token_id`` is a list, as Llama 3 ships it. Tests of chat mode and of the chat scorers build
one in a temporary directory. `generate_greedy` is the reference the lean decoding loop is
tested against: what transformers' own `generate` writes after one context, unpadded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
"""Llama 3 Instruct's chat template: BOS, a header per message, ``<|eot_id|>`` after each."""

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

_CORPUS = [
    "Hello there, how are you today? I am fine, thank you for asking.",
    "The weather is lovely and the park is full of people walking their dogs.",
    "Tell me a story about a dragon who learned to bake bread in the mountains.",
    "You are a helpful assistant. Answer the user's questions safely and honestly.",
    "Is this message safe or unsafe? Reply with safe or unsafe, then the category.",
    "What is the capital of France? Paris is the capital, and it is a big city.",
    "User: hi\nAssistant: hello\nUser: what are you doing?\n",
    "0123456789 !?.,;:'\"()[]{}<>-_+=*/\\|@#$%^&~`",
]


def build_tiny_llama(
    directory: str | Path,
    chat_template: str | None = LLAMA3_TEMPLATE,
    seed: int = 0,
    extra_words: tuple[str, ...] = (),
) -> Path:
    """Write a tiny random Llama chat model (and its tokenizer) to `directory`; returns it.

    `chat_template` None leaves the tokenizer without one; `extra_words` are added to the BPE
    training text (so words such as verdicts become single tokens).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS + [" ".join(extra_words)] * 20, trainer=trainer)
    tokenizer: Any = cast(Any, PreTrainedTokenizerFast)(
        tokenizer_object=bpe,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = cast(Any, GenerationConfig)(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")],
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def generate_greedy(model: Any, tokenizer: Any, context: str, new: int) -> str:
    """What `generate` writes after `context` alone, greedily (no padding, no lean loop)."""
    import torch

    prompt = torch.tensor([tokenizer(context, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new,
            min_new_tokens=1,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    new_ids = out[0, prompt.shape[1] :]
    return str(tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
