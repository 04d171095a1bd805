"""A lean sampling loop for causal LMs: one prefill per distinct context, then one token per step.

`model.generate` spends most of a tiny model's decode step in per-token bookkeeping (processor
lists, stopping criteria, input preparation). This loop does only what the system needs:
left-padded prefill with a KV cache, the sampling warpers `generate` would apply (in its order:
min-new-tokens, temperature, top-k, top-p), multinomial sampling from torch's global generator,
and stop tokens (eos, a chat template's end of turn: a finished row leaves the batch and its KV
cache; its output is padded).
Rows with identical token ids are prefilled once and their cache is expanded to every copy:
tree siblings share their context. A row may also start from an earlier call's cache (`Prefix`,
kept in a `PrefixStore`): a turn then prefills only what the last turn added.

On one context without padding it draws the same tokens as ``generate(do_sample=True, ...)``
under the same seed; greedy (``top_k=1``) it gives the same tokens whatever the batch.
"""

from __future__ import annotations

import importlib
import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from astra_transformers.logprobs import length_buckets


@dataclass(frozen=True)
class Sampling:
    """How each next token is drawn: temperature, then top-k (0: off), then top-p (1.0: off)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class Decoded:
    """What a sampling call returns: the new token ids per row (padded after eos, cut at the
    last step taken), and, when asked for, the log-probs of each distinct row's last prompt tokens."""

    new_ids: list[list[int]]
    prompt_tails: list[torch.Tensor] | None
    """Per input row: log p(token_i | tokens before it) for its last ``min(tail, len - 1)`` prompt tokens."""
    caches: list[Prefix | None] | None = None
    """Per input row, with ``keep_caches``: its final KV cache, for a later call to start from."""


def process_scores(
    scores: torch.Tensor, sampling: Sampling, stop_ids: torch.Tensor | None, first: bool
) -> torch.Tensor:
    """Next-token scores after the warpers `generate` applies for sampling, in its order.

    The first token may not be a stop token (``min_new_tokens=1``); temperature 1, top-k 0 and
    top-p 1 are skipped, as `generate` skips them.
    """
    if first and stop_ids is not None:
        scores = scores.clone()
        scores[:, stop_ids] = -float("inf")
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, scores.size(-1))
        kth = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if sampling.top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - sampling.top_p)
        remove_sorted[..., -1:] = False  # keep at least the likeliest token
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        scores = scores.masked_fill(remove, -float("inf"))
    return scores


class Decoder:
    """Drives one causal LM for `sample`: its forward with a KV cache and logits where needed.

    `head` is the model's LM head when logits are exactly ``head(base_model(...))``; then the
    head runs only on the positions whose logits are used. Otherwise the full forward runs.
    """

    def __init__(self, module: PreTrainedModel, head: nn.Module | None, pad_id: int) -> None:
        self.module = module
        self.head = head
        self.pad_id = pad_id
        runner: Any = module.base_model if head is not None else module
        # transformers 5 renamed past_key_values to cache (the old name is deprecated).
        names = inspect.signature(runner.forward).parameters
        self._cache_name = "cache" if "cache" in names else "past_key_values"
        self._runner = runner

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Any,
        keep: int,
    ) -> tuple[torch.Tensor, Any]:
        """Float32 logits of the last `keep` positions, (B, keep, V), and the updated cache."""
        features, new_cache = self.run(input_ids, attention_mask, position_ids, cache)
        logits = self.logits(features[:, -keep:])
        return logits.float(), new_cache

    def run(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor, cache: Any
    ) -> tuple[torch.Tensor, Any]:
        """Every position's features (hidden states when `head` is set, else logits) and the cache."""
        kwargs: dict[str, Any] = {self._cache_name: cache}
        out = self._runner(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **kwargs
        )
        new_cache = out.get("cache") if "cache" in out else out.get("past_key_values")
        features: torch.Tensor = out[0] if self.head is not None else out.logits
        return features, new_cache

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from `run`'s features (the head applied where `run` stopped before it)."""
        if self.head is None:
            return features
        logits: torch.Tensor = self.head(features)
        return logits


@dataclass
class Prefix:
    """The KV cache of a row's first ``len(ids)`` tokens: per layer a (key, value) pair of
    (heads, len(ids), head_dim) tensors, computed from position 0 without padding."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        """Memory the tensors hold."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


class PrefixStore:
    """A bounded LRU of `Prefix` caches, keyed by the text their ids came from.

    A row may reuse an entry whose key its text starts with; `sample` then checks the ids
    themselves (the common prefix of ids is what is reused), so a tokenisation that differs at
    the boundary costs only the positions after it, never exactness.
    """

    def __init__(self, capacity_bytes: int = 512 * 2**20) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[str, Prefix] = OrderedDict()
        self._bytes = 0
        self.fingerprint: object = None
        """What the cached weights were (see the system): a change clears the store."""

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._bytes = 0

    def put(self, key: str, prefix: Prefix) -> None:
        """Remember `prefix` under `key`, evicting the least recently used beyond the capacity."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._entries[key] = prefix
        self._bytes += prefix.nbytes
        while self._bytes > self.capacity_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes

    def find(self, text: str) -> Prefix | None:
        """The entry with the longest key that `text` starts with, or None."""
        best: str | None = None
        for key in self._entries:
            if text.startswith(key) and (best is None or len(key) > len(best)):
                best = key
        if best is None:
            return None
        self._entries.move_to_end(best)
        return self._entries[best]


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# transformers before per-layer caches has no DynamicLayer: its caches grow by concatenation.
_PlainLayer: Any = getattr(importlib.import_module("transformers.cache_utils"), "DynamicLayer", None)
_DynamicLayer: Any = _PlainLayer or object  # its constructor and hooks are untyped


class _RoomyLayer(_DynamicLayer):  # type: ignore[misc]
    """A `DynamicLayer` whose keys and values are the first columns of buffers with room to grow:
    a decode step writes its column in place instead of concatenating (a copy of the whole cache
    per step and layer, which on long contexts costs as much as the attention). Any other
    reshaping gives the room up and behaves as a `DynamicLayer`."""

    def __init__(self, layer: Any, room: int) -> None:
        super().__init__()
        keys, values = cast(torch.Tensor, layer.keys), cast(torch.Tensor, layer.values)
        self.device, self.is_initialized = keys.device, True
        self._columns = keys.shape[-2]
        self._roomy = True
        self._key_buffer = keys.new_empty((*keys.shape[:-2], self._columns + room, keys.shape[-1]))
        self._value_buffer = values.new_empty((*values.shape[:-2], self._columns + room, values.shape[-1]))
        self._key_buffer[..., : self._columns, :] = keys
        self._value_buffer[..., : self._columns, :] = values
        self._view()

    def _view(self) -> None:
        self.keys = self._key_buffer[..., : self._columns, :]
        self.values = self._value_buffer[..., : self._columns, :]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        if not self._roomy or self._columns + new > self._key_buffer.shape[-2]:
            self._roomy = False
            return cast(tuple[torch.Tensor, torch.Tensor], super().update(key_states, value_states, *args, **kwargs))
        self._key_buffer[..., self._columns : self._columns + new, :] = key_states
        self._value_buffer[..., self._columns : self._columns + new, :] = value_states
        self._columns += new
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self._roomy:
            super().batch_select_indices(indices)
            return
        self._key_buffer, self._value_buffer = self._key_buffer[indices, ...], self._value_buffer[indices, ...]
        self._view()

    # Reshapes nobody asks of a sampling cache: done on the plain tensors, without the room.
    def crop(self, tokens_to_remove: int) -> None:
        self._roomy = False
        super().crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._roomy = False
        super().batch_repeat_interleave(repeats)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._roomy = False
        super().reorder_cache(beam_idx)

    def reset(self) -> None:
        self._roomy = False
        super().reset()


def make_room(cache: Any, room: int) -> None:
    """Give each layer of `cache` (a transformers `DynamicCache` after a prefill) room for `room`
    more columns, written in place by later forwards. Only outside autograd: an in-place write
    into a buffer whose earlier columns a graph saved would break its backward. A cache of other
    layer kinds (sliding windows, quantised, offloaded) is left as it is."""
    layers = getattr(cache, "layers", None)
    if room <= 0 or torch.is_grad_enabled() or not layers or _PlainLayer is None:
        return
    if not all(type(layer) is _PlainLayer and layer.is_initialized for layer in layers):
        return
    layers[:] = [_RoomyLayer(layer, room) for layer in layers]


def sample(
    decoder: Decoder,
    rows: Sequence[Sequence[int]],
    new_tokens: int,
    sampling: Sampling,
    device: torch.device,
    *,
    tail: int = 0,
    prefixes: Sequence[Prefix | None] | None = None,
    keep_caches: bool = False,
    stop_ids: Sequence[int] = (),
) -> Decoded:
    """Sample up to `new_tokens` tokens after each row of prompt ids (at least one each), a row
    ending at the first of `stop_ids` it draws (that token kept, padding after it).

    Identical rows are prefilled once. With ``tail > 0`` the prefill's logits at the last `tail`
    prompt positions also give each row's prompt-token log-probs (see `Decoded.prompt_tails`).
    `prefixes` (one per row, or None) are caches of earlier calls: the tokens a row shares with
    its prefix's ids are not prefilled again (the new tokens after them, and one before, always
    are, so the prompt tails cover the text added since the prefix).
    With `keep_caches`, `Decoded.caches` holds each row's final cache (prompt and the generated
    tokens fed back) for a later call's `prefixes`.
    Call under `torch.inference_mode`; the model's cache must offer ``batch_select_indices``
    (transformers' `Cache` classes do), which expands shared prefills and drops finished rows.
    """
    if not rows:
        return Decoded([], [] if tail else None, [] if keep_caches else None)
    slot: dict[tuple[int, ...], int] = {}
    distinct: list[Sequence[int]] = []
    distinct_prefix: list[Prefix | None] = []
    expand: list[int] = []
    for r, row in enumerate(rows):
        key = tuple(row)
        index = slot.setdefault(key, len(distinct))
        if index == len(distinct):
            distinct.append(row)
            distinct_prefix.append(prefixes[r] if prefixes is not None else None)
        expand.append(index)
    count = len(distinct)
    # How many leading tokens of each row come from its prefix's cache.
    reused = [0] * count
    for i, (row, prefix) in enumerate(zip(distinct, distinct_prefix, strict=True)):
        if prefix is not None:
            common = _common_length(row, prefix.ids)
            # The prompt log-probs asked for are those of the new text after the prefix (a probe
            # after the last turn), so the run covers it and one token more, within `tail`.
            must_run = min(tail, len(row) - 1, len(row) - common + 1) + 1
            reused[i] = max(0, min(common, len(row) - must_run))
    # Prefill in batches of similar new-token counts: padding a batch of mixed lengths to its
    # longest row computes positions nobody needs (on long, mixed contexts most of a batch).
    buckets = length_buckets([len(row) - k for row, k in zip(distinct, reused, strict=True)])
    last, mask, next_position, cache, tails = _prefill(
        decoder, distinct, reused, distinct_prefix, tail, device, buckets
    )
    padded = bool((mask == 0).any())
    prompt_tails = [tails[i] for i in expand] if tail else None
    if count < len(rows):
        copies = torch.tensor(expand, dtype=torch.long, device=device)
        last, mask, next_position = last[copies], mask[copies], next_position[copies]
        cache.batch_select_indices(copies)
    make_room(cache, new_tokens - 1)
    batch = len(rows)
    produced = torch.full((batch, new_tokens), decoder.pad_id, dtype=torch.long, device=device)
    caches: list[Prefix | None] = [None] * batch
    lengths = [len(row) for row in rows]

    def capture(local: torch.Tensor, fed: int) -> None:
        # A row's real cache columns are where its mask is 1 (padding sits left of its reused
        # prefix and between that prefix and its input): prompt + fed tokens, in order.
        if not keep_caches:
            return
        layers = getattr(cache, "layers", None)
        if layers is None:
            return
        columns = int(layers[0].keys.shape[-2])
        for j, r in zip(local.tolist(), active[local].tolist(), strict=True):
            real = full_mask[j, :columns].nonzero().squeeze(1)
            if real.numel() != lengths[r] + fed:
                continue  # not the layout assumed here: keep no cache rather than a wrong one
            kv = [(layer.keys[j, :, real].clone(), layer.values[j, :, real].clone()) for layer in layers]
            caches[r] = Prefix(list(rows[r]) + produced[r, :fed].tolist(), kv)

    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device) if stop_ids else None
    # Rows still decoding, by their index in `rows`; a finished row leaves the batch and its cache.
    active = torch.arange(batch, device=device)
    # The mask grows by one column per step: preallocated, then sliced, instead of a cat per step.
    full_mask = torch.ones((batch, mask.size(1) + new_tokens), dtype=mask.dtype, device=device)
    full_mask[:, : mask.size(1)] = mask
    width_now = mask.size(1)
    taken = 0
    for step in range(new_tokens):
        scores = process_scores(last, sampling, stops, first=step == 0)
        tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        produced[active, step] = tokens
        taken = step + 1
        if step == new_tokens - 1:
            capture(torch.arange(len(active), device=device), step)
            break
        if stops is not None:
            running = ~torch.isin(tokens, stops)
            if not bool(running.all()):
                capture((~running).nonzero().squeeze(1), step)
                if not bool(running.any()):
                    break
                keep_rows = running.nonzero().squeeze(1)
                active, tokens = active[keep_rows], tokens[keep_rows]
                full_mask, next_position = full_mask[keep_rows], next_position[keep_rows]
                cache.batch_select_indices(keep_rows)
        width_now += 1
        logits, cache = decoder.forward(
            tokens[:, None], full_mask[:, :width_now] if padded else None, next_position, cache, 1
        )
        last = logits[:, -1]
        next_position = next_position + 1
    new_ids = produced[:, :taken].tolist()
    return Decoded(new_ids, prompt_tails, caches if keep_caches else None)


Prefilled = tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, list[torch.Tensor]]
"""A prefill's last logits (B, V), attention mask (B, columns), next positions (B, 1), KV cache,
and per row the log-probs of its last prompt tokens."""


def _prefill_batch(
    decoder: Decoder,
    distinct: Sequence[Sequence[int]],
    reused: Sequence[int],
    distinct_prefix: Sequence[Prefix | None],
    tail: int,
    device: torch.device,
) -> Prefilled:
    count = len(distinct)
    cached = max(reused)
    width = max(len(row) - k for row, k in zip(distinct, reused, strict=True))
    # Left padding: every row's next token sits in the same column; a row's reused tokens sit in
    # the cache columns just before its input.
    input_ids = torch.full((count, width), decoder.pad_id, dtype=torch.long)
    mask = torch.zeros((count, cached + width), dtype=torch.long)
    for i, (row, k) in enumerate(zip(distinct, reused, strict=True)):
        run = list(row[k:])
        input_ids[i, width - len(run) :] = torch.tensor(run, dtype=torch.long)
        mask[i, cached + width - len(run) :] = 1
        mask[i, cached - k : cached] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    input_mask = mask[:, cached:]
    offsets = torch.tensor(reused, dtype=torch.long, device=device)[:, None]
    positions = (input_mask.cumsum(-1) - 1 + offsets).masked_fill(input_mask == 0, 0)
    padded = bool((mask == 0).any())
    keep = min(tail, width - 1) + 1
    start_cache = _stacked(distinct_prefix, reused, cached, device) if cached else None
    logits, cache = decoder.forward(input_ids, mask if padded else None, positions, start_cache, keep)
    tails: list[torch.Tensor] = []
    if tail:
        # Column c predicts the token in column c + 1: log-probs of the last keep - 1 prompt tokens.
        targets = input_ids[:, width - keep + 1 :]
        token_logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        tails = [
            token_logprobs[i, max(0, keep - (len(row) - k)) :].cpu()
            for i, (row, k) in enumerate(zip(distinct, reused, strict=True))
        ]
    return logits[:, -1], mask, positions[:, -1:] + 1, cache, tails


def _prefill(
    decoder: Decoder,
    distinct: Sequence[Sequence[int]],
    reused: Sequence[int],
    distinct_prefix: Sequence[Prefix | None],
    tail: int,
    device: torch.device,
    buckets: Sequence[Sequence[int]],
) -> Prefilled:
    """`_prefill_batch` per bucket of rows, merged into one batch in row order: each bucket's
    cache and mask columns right-aligned (the columns left of them are padding the mask hides)."""
    if len(buckets) == 1:
        return _prefill_batch(decoder, distinct, reused, distinct_prefix, tail, device)
    parts = [
        _prefill_batch(
            decoder,
            [distinct[i] for i in bucket],
            [reused[i] for i in bucket],
            [distinct_prefix[i] for i in bucket],
            tail,
            device,
        )
        for bucket in buckets
    ]
    from transformers import DynamicCache

    count = len(distinct)
    columns = max(part[1].shape[1] for part in parts)
    first_last, first_mask, first_next, first_cache, _ = parts[0]
    last = first_last.new_empty((count, first_last.shape[1]))
    mask = first_mask.new_zeros((count, columns))
    next_position = first_next.new_empty((count, 1))
    tails: list[torch.Tensor] = [torch.empty(0)] * count
    merged: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in first_cache.layers:
        heads, dim = layer.keys.shape[1], layer.keys.shape[3]
        value_heads, value_dim = layer.values.shape[1], layer.values.shape[3]
        merged.append(
            (
                layer.keys.new_zeros((count, heads, columns, dim)),
                layer.values.new_zeros((count, value_heads, columns, value_dim)),
            )
        )
    for bucket, (part_last, part_mask, part_next, part_cache, part_tails) in zip(buckets, parts, strict=True):
        index = torch.tensor(bucket, dtype=torch.long, device=device)
        width = part_mask.shape[1]
        last[index] = part_last
        mask[index, columns - width :] = part_mask
        next_position[index] = part_next
        for (keys, values), layer in zip(merged, part_cache.layers, strict=True):
            keys[index, :, columns - width :] = layer.keys
            values[index, :, columns - width :] = layer.values
        for i, row_tail in zip(bucket, part_tails, strict=False):  # no tails unless asked for
            tails[i] = row_tail
    return last, mask, next_position, DynamicCache(ddp_cache_data=merged), tails


def _stacked(prefixes: Sequence[Prefix | None], reused: Sequence[int], width: int, device: torch.device) -> Any:
    """A batch cache of `width` columns holding each row's first ``reused[i]`` prefix positions,
    right-aligned (the columns before them are padding the mask hides)."""
    from transformers import DynamicCache

    template = next(p for p, k in zip(prefixes, reused, strict=True) if p is not None and k > 0)
    layers = []
    for index, (key, value) in enumerate(template.layers):
        heads, _, dim = key.shape
        keys = key.new_zeros((len(prefixes), heads, width, dim), device=device)
        values = value.new_zeros((len(prefixes), value.shape[0], width, value.shape[2]), device=device)
        for i, (prefix, k) in enumerate(zip(prefixes, reused, strict=True)):
            if prefix is not None and k > 0:
                keys[i, :, width - k :] = prefix.layers[index][0][:, :k]
                values[i, :, width - k :] = prefix.layers[index][1][:, :k]
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers)
