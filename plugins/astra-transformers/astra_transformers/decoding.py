"""Decoding without a host sync per token: a static KV cache, fixed shapes, finished rows kept.

The lean loop of `astra_transformers.generation` drops a row from the batch (and its cache) as
soon as it writes eos. That is the fastest thing on a CPU, but each drop decision reads a GPU
value on the host: one synchronisation per token, which idles a GPU between its small decode
kernels. The loops here never ask the host anything while decoding:

- ``"static"`` (`sample_static`): after the same prefill as the lean loop (each distinct context
  once, expanded to its copies), the cache is copied into a transformers ``StaticCache`` sized
  for the whole generation. Every step then feeds one token per row with the same shapes: a
  finished row keeps decoding pad tokens whose outputs are discarded, and the attention mask is
  a preallocated tensor written in place. Fixed shapes and addresses are what
  ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) needs; `compile` turns it on.
- ``"generate"`` (`sample_generate`): transformers' own ``generate`` with
  ``cache_implementation="static"``, for comparison (it checks its stopping criteria on the host).

Both apply the lean loop's sampling rules (`process_scores`: no eos as the first token, then
temperature, top-k, top-p) and draw with ``torch.multinomial`` from torch's global generator.
Greedy (``top_k=1``) they give the lean loop's tokens exactly; sampled, they draw the same
tokens until the first row finishes (the lean loop's batch shrinks then, these keep theirs).
They keep no caches across turns (`PrefixStore`): a fixed-shape cache per call is the point.

>>> Sampling(top_k=1)
Sampling(temperature=1.0, top_k=1, top_p=1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from astra_transformers.generation import Decoded, Decoder, Sampling, process_scores


def _prefill(
    decoder: Decoder, rows: Sequence[Sequence[int]], device: torch.device, tail: int
) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """Prefill each distinct row once (left-padded, dynamic cache), expanded to every row:
    (last logits (B, V), cache, mask (B, width), next positions (B, 1), prompt tails)."""
    slot: dict[tuple[int, ...], int] = {}
    distinct: list[Sequence[int]] = []
    expand: list[int] = []
    for row in rows:
        index = slot.setdefault(tuple(row), len(distinct))
        if index == len(distinct):
            distinct.append(row)
        expand.append(index)
    width = max(len(row) for row in distinct)
    input_ids = torch.full((len(distinct), width), decoder.pad_id, dtype=torch.long)
    mask = torch.zeros((len(distinct), width), dtype=torch.long)
    for i, row in enumerate(distinct):
        input_ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    keep = min(tail, width - 1) + 1
    # The static steps always pass a mask, so the prefill does too (padded or not).
    logits, cache = decoder.forward(input_ids, mask, positions, None, keep)
    tails: list[torch.Tensor] | None = None
    if tail:
        targets = input_ids[:, width - keep + 1 :]
        token_logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        per_row = [token_logprobs[i, max(0, keep - len(row)) :].cpu() for i, row in enumerate(distinct)]
        tails = [per_row[i] for i in expand]
    last = logits[:, -1]
    next_position = positions[:, -1:] + 1
    if len(distinct) < len(rows):
        copies = torch.tensor(expand, dtype=torch.long, device=device)
        last, mask, next_position = last[copies], mask[copies], next_position[copies]
        cache.batch_select_indices(copies)
    return last, cache, mask, next_position, tails


def static_cache(config: Any, dynamic: Any, max_len: int) -> Any:
    """A transformers ``StaticCache`` of `max_len` columns holding `dynamic`'s keys and values
    in its first columns (its length advanced past them)."""
    from transformers import StaticCache

    cache: Any = StaticCache(config=config, max_cache_len=max_len)
    for index, layer in enumerate(dynamic.layers):
        cache.update(layer.keys, layer.values, index)
    return cache


StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _step_function(decoder: Decoder) -> StepFn:
    def step(tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        logits, _ = decoder.forward(tokens, mask, positions, cache, 1)
        return logits[:, -1]

    return step


_COMPILED: dict[int, StepFn] = {}


def compiled_step(decoder: Decoder) -> StepFn:
    """The decode step of `decoder` compiled for CUDA graphs (once per decoder)."""
    step = _COMPILED.get(id(decoder))
    if step is None:
        step = torch.compile(_step_function(decoder), mode="reduce-overhead", fullgraph=False)
        _COMPILED[id(decoder)] = step
    return step


def sample_static(
    decoder: Decoder,
    rows: Sequence[Sequence[int]],
    new_tokens: int,
    sampling: Sampling,
    device: torch.device,
    *,
    tail: int = 0,
    compile: bool = False,
    stop_ids: Sequence[int] = (),
) -> Decoded:
    """Sample up to `new_tokens` tokens after each row, with no host sync until the end.

    The result has `sample`'s shape and meaning (new ids cut at the step the last row finished,
    pad after a row's stop token; prompt tails with ``tail > 0``); `Decoded.caches` is None.
    Call under `torch.inference_mode`.
    """
    if not rows:
        return Decoded([], [] if tail else None, None)
    last, dynamic, mask, next_position, tails = _prefill(decoder, rows, device, tail)
    batch, width = mask.shape
    cache = static_cache(decoder.module.config, dynamic, width + new_tokens)
    full_mask = torch.zeros((batch, width + new_tokens), dtype=mask.dtype, device=device)
    full_mask[:, :width] = mask
    produced = torch.full((batch, new_tokens), decoder.pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    all_done = torch.zeros(new_tokens, dtype=torch.bool, device=device)
    pad = torch.tensor(decoder.pad_id, dtype=torch.long, device=device)
    step_fn = compiled_step(decoder) if compile else _step_function(decoder)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device) if stop_ids else None
    for step in range(new_tokens):
        scores = process_scores(last, sampling, stops, first=step == 0)
        tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        # A finished row writes pad (as the lean loop pads it); its stop token is the last real one.
        produced[:, step] = torch.where(finished, pad, tokens)
        if stops is not None:
            finished = finished | torch.isin(tokens, stops)
        all_done[step] = finished.all()
        if step == new_tokens - 1:
            break
        full_mask[:, width + step] = 1
        last = step_fn(torch.where(finished, pad, tokens)[:, None], full_mask, next_position, cache)
        next_position = next_position + 1
    # One sync, at the end: the lean loop stops at the step where every row had finished.
    done_at = all_done.nonzero()
    taken = int(done_at[0, 0]) + 1 if done_at.numel() else new_tokens
    return Decoded(produced[:, :taken].tolist(), tails, None)


def sample_generate(
    module: Any,
    rows: Sequence[Sequence[int]],
    new_tokens: int,
    sampling: Sampling,
    device: torch.device,
    pad_id: int,
    stop_ids: Sequence[int] = (),
) -> Decoded:
    """`sample`'s contract through transformers' ``generate`` with a static cache (no prompt
    tails: the target's log-prob memo then stays empty and its log-probs take a forward)."""
    if not rows:
        return Decoded([], None, None)
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    out = module.generate(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=new_tokens,
        min_new_tokens=1,
        do_sample=True,
        temperature=sampling.temperature,
        top_k=sampling.top_k or None,
        top_p=sampling.top_p,
        pad_token_id=pad_id,
        eos_token_id=list(stop_ids) or None,
        cache_implementation="static",
    )
    new = out[:, width:]
    if stop_ids:
        # generate pads after a stop token already; make sure rows end as the lean loop's do.
        stopped = torch.isin(new, torch.tensor(list(stop_ids), dtype=new.dtype, device=new.device)).long()
        new = new.masked_fill((stopped.cumsum(-1) - stopped) > 0, pad_id)
    return Decoded(new.tolist(), None, None)


def fast_sample(
    mode: str,
    decoder: Decoder,
    rows: Sequence[Sequence[int]],
    new_tokens: int,
    sampling: Sampling,
    device: torch.device,
    *,
    tail: int = 0,
    compile: bool = False,
    stop_ids: Sequence[int] = (),
) -> Decoded:
    """`sample_static` (``mode="static"``) or `sample_generate` (``"generate"``) for the system."""
    if mode == "static":
        return sample_static(decoder, rows, new_tokens, sampling, device, tail=tail, compile=compile, stop_ids=stop_ids)
    if mode == "generate":
        return sample_generate(decoder.module, rows, new_tokens, sampling, device, decoder.pad_id, stop_ids)
    raise ValueError(f"unknown decoding {mode!r}; use 'loop', 'static' or 'generate'")
