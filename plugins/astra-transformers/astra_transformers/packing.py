"""Packed tree passes: token rows that share prefixes run as one sequence, each shared token once.

The rows a log-prob pass scores (context + continuation, as token ids) come from rollout trees:
siblings share their whole context, turns deeper in a tree share its opener and earlier turns.
`pack` puts the rows into a token trie, so a prefix common to several rows is one run of trie
nodes, and lays each tree of the trie out as one sequence (several small trees may share a
sequence, placed first-fit). Each token attends to its ancestors and itself only, through a 4-D
attention mask: siblings never see each other, and a token's position id is its depth in the
trie, so it follows its own branch. A causal LM's output at a trie node depends only on the
tokens on its path, which are exactly the row's prefix: the log-probs read off the packed pass
equal the per-row ones, and their gradients too, because a shared prefix is one computation
whose gradient sums the contributions of every row below it (as separate rows' would).

`packed_logprobs` runs a Hugging Face causal LM over a `Packing` (sdpa or eager attention, which
take a custom 4-D mask as given) and returns each row's summed continuation log-prob.
`packing_is_exact` checks on a few tokens that a given model honours the mask and position ids
(models that ignore position ids, or attention kernels without custom masks, do not).

>>> packing = pack([[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 1]], [3, 3, 2], pad_id=0)
>>> packing.positions, packing.position_ids.tolist()   # 5, 6, 7 once; then 8, 9 and 1
(6, [[0, 1, 2, 3, 3, 2]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

MASKED_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take a custom 4-D mask as given (transformers' masking utils
return a 4-D mask as-is; sdpa reads a boolean one, eager adds a float one)."""


@dataclass(frozen=True)
class Packing:
    """Rows packed into sequences of trie nodes, ready for one forward.

    `input_ids`, `position_ids`: (S, L); `allowed`: (S, L, L) booleans, query attends to key;
    `predict_seq`, `predict_at`: where the output that predicts each continuation token sits;
    `targets`: that token; `row_of`: its row (all (T,)). `positions` counts the real tokens
    (trie nodes), `rows` the rows packed.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    allowed: torch.Tensor
    predict_seq: torch.Tensor
    predict_at: torch.Tensor
    targets: torch.Tensor
    row_of: torch.Tensor
    rows: int
    positions: int

    def to(self, device: torch.device) -> Packing:
        """The same packing with every tensor on `device`."""
        moved = {name: getattr(self, name).to(device) for name in _TENSORS}
        return Packing(**moved, rows=self.rows, positions=self.positions)


_TENSORS = ("input_ids", "position_ids", "allowed", "predict_seq", "predict_at", "targets", "row_of")


def pack(rows: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int) -> Packing:
    """Pack token `rows` (each a context then a continuation starting at ``starts[i]``) into trie
    sequences. Every row needs a non-empty context (``starts[i] >= 1``): its first continuation
    token is predicted from the context's last token."""
    if len(rows) != len(starts):
        raise ValueError(f"{len(rows)} rows but {len(starts)} starts")
    children: dict[tuple[int, int], int] = {}
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    roots: list[int] = []  # each node's root (its tree)
    paths: list[list[int]] = []
    for row, start in zip(rows, starts, strict=True):
        if not 1 <= start <= len(row):
            raise ValueError(f"a row of {len(row)} tokens cannot start its continuation at {start}")
        parent = -1
        path = []
        for depth, token in enumerate(row):
            node = children.get((parent, token))
            if node is None:
                node = len(tokens)
                children[(parent, token)] = node
                tokens.append(token)
                parents.append(parent)
                depths.append(depth)
                roots.append(node if parent < 0 else roots[parent])
            path.append(node)
            parent = node
        paths.append(path)
    # One tree per root; trees go into sequences first-fit, largest first, so the sequences are
    # about as long as the largest tree and little is padded.
    members: dict[int, list[int]] = {}
    for node, root in enumerate(roots):
        members.setdefault(root, []).append(node)  # creation order: a parent before its children
    trees = sorted(members.values(), key=len, reverse=True)
    width = len(trees[0]) if trees else 0
    sequences: list[list[int]] = []
    for tree in trees:
        for sequence in sequences:
            if len(sequence) + len(tree) <= width:
                sequence.extend(tree)
                break
        else:
            sequences.append(list(tree))
    where: dict[int, tuple[int, int]] = {}
    for s, sequence in enumerate(sequences):
        for column, node in enumerate(sequence):
            where[node] = (s, column)
    count = len(sequences)
    input_ids = torch.full((count, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((count, width), dtype=torch.long)
    allowed = torch.zeros((count, width, width), dtype=torch.bool)
    for s, sequence in enumerate(sequences):
        input_ids[s, : len(sequence)] = torch.tensor([tokens[n] for n in sequence])
        position_ids[s, : len(sequence)] = torch.tensor([depths[n] for n in sequence])
        block = allowed[s]
        for column, node in enumerate(sequence):
            parent = parents[node]
            if parent >= 0:
                block[column] = block[where[parent][1]]  # a node sees what its parent sees ...
            block[column, column] = True  # ... and itself
        for column in range(len(sequence), width):
            block[column, column] = True  # padding sees itself only (no empty softmax rows)
    predict_seq: list[int] = []
    predict_at: list[int] = []
    targets: list[int] = []
    row_of: list[int] = []
    for index, (row, start, path) in enumerate(zip(rows, starts, paths, strict=True)):
        for j in range(start, len(row)):
            s, column = where[path[j - 1]]
            predict_seq.append(s)
            predict_at.append(column)
            targets.append(row[j])
            row_of.append(index)
    return Packing(
        input_ids=input_ids,
        position_ids=position_ids,
        allowed=allowed,
        predict_seq=torch.tensor(predict_seq, dtype=torch.long),
        predict_at=torch.tensor(predict_at, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        row_of=torch.tensor(row_of, dtype=torch.long),
        rows=len(rows),
        positions=len(tokens),
    )


def attention_mask(packing: Packing, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The (S, 1, L, L) mask `implementation` reads: booleans for sdpa, 0 / -inf-like floats
    in `dtype` for eager (which adds the mask to its scores)."""
    allowed = packing.allowed[:, None]
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        blocked = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
        return blocked.masked_fill(allowed, 0.0)
    raise ValueError(f"packed passes need sdpa or eager attention, not {implementation!r}")


def attention_implementation(module: nn.Module) -> str:
    """The attention implementation a Hugging Face model runs with (``"sdpa"``, ``"eager"``, ...)."""
    config: Any = getattr(module, "config", None)
    return str(getattr(config, "_attn_implementation", None))


Head = Callable[[torch.Tensor], torch.Tensor]


def packed_logprobs(module: nn.Module, head: Head | None, packing: Packing) -> torch.Tensor:
    """Each row's summed continuation log-prob from one forward of `module` over `packing`: (rows,).

    With `head` (the LM head, when logits are exactly ``head(base_model(...))``) only the
    continuation positions go through it; else the full model's logits are read. Differentiable
    when gradients are on.
    """
    device = next(module.parameters()).device
    packing = packing.to(device)
    dtype = next(module.parameters()).dtype
    mask = attention_mask(packing, attention_implementation(module), dtype)
    inputs = {
        "input_ids": packing.input_ids,
        "attention_mask": mask,
        "position_ids": packing.position_ids,
        "use_cache": False,
    }
    if head is not None:
        base: nn.Module = cast(Any, module).base_model
        hidden: torch.Tensor = base(**inputs)[0]
        logits = head(hidden[packing.predict_seq, packing.predict_at])
    else:
        logits = module(**inputs).logits[packing.predict_seq, packing.predict_at]
    # At least float32 for the softmax (half-precision logits lose the small probabilities).
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, packing.targets.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(packing.rows, dtype=token_logprobs.dtype, device=device).index_add(
        0, packing.row_of, token_logprobs
    )


def packing_is_exact(module: nn.Module, head: Head | None, start_id: int, tolerance: float = 1e-4) -> bool:
    """Whether `module`'s packed log-probs equal its per-row ones on a small tree (a few
    forwards): False for attention kernels without custom masks and for models that ignore
    position ids or the mask."""
    if attention_implementation(module) not in MASKED_ATTENTION:
        return False
    vocab = int(getattr(getattr(module, "config", None), "vocab_size", 0) or 0)
    if vocab < 4:
        return False
    a, b, c = (start_id + 1) % vocab, (start_id + 2) % vocab, (start_id + 3) % vocab
    rows = [[start_id, a, b, c], [start_id, a, c, b, a], [start_id, b]]
    starts = [2, 2, 1]
    try:
        with torch.inference_mode():
            packed = packed_logprobs(module, head, pack(rows, starts, start_id))
            single = torch.stack([_plain_logprob(module, row, start) for row, start in zip(rows, starts, strict=True)])
    except (RuntimeError, TypeError, ValueError):
        return False
    return bool(torch.allclose(packed.float(), single.float(), atol=tolerance, rtol=tolerance))


def _plain_logprob(module: nn.Module, row: list[int], start: int) -> torch.Tensor:
    device = next(module.parameters()).device
    logits = module(input_ids=torch.tensor([row], device=device), use_cache=False).logits[0].float()
    logprobs = torch.log_softmax(logits[start - 1 : len(row) - 1], dim=-1)
    return logprobs.gather(-1, torch.tensor(row[start:], device=device).unsqueeze(-1)).sum()
