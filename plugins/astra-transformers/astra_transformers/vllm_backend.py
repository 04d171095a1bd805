"""vLLM as the frozen target's sampler (``target_backend = "vllm"``, the ``vllm`` extra, CUDA).

The target's responses are most of a step's decoding, and the target never trains, so its
weights can live in an inference engine with paged attention and continuous batching. vLLM
samples the responses from the same token ids the HF path would continue; everything else about
the target (its log-probs, the reference for tests) stays on the HF model, which is why the HF
target is still loaded beside it. Seeds come from torch's global generator, so a seeded run
repeats; the draws differ from the HF path's (another sampler), the distribution does not.

vLLM is imported only when this backend is built; without it (or without CUDA) the option fails
validation with one line (`astra_transformers.large_options`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch

from astra_core.errors import ConfigError
from astra_transformers.generation import Sampling


class VllmTarget:
    """A vLLM engine over the target's weights that continues token ids."""

    def __init__(self, location: str, dtype: torch.dtype, sampling: Sampling, memory_fraction: float = 0.5) -> None:
        try:
            self._vllm: Any = importlib.import_module("vllm")
        except ImportError:
            raise ConfigError("target_backend='vllm' needs vllm; pip install 'astra-transformers[vllm]'") from None
        self.sampling = sampling
        # The tester, baseline and HF target share the GPU: vLLM takes only part of it.
        self.engine: Any = self._vllm.LLM(
            model=location,
            dtype=str(dtype).removeprefix("torch."),
            gpu_memory_utilization=memory_fraction,
            enforce_eager=False,
        )

    def generate(self, rows: Sequence[Sequence[int]], new_tokens: int, stop_ids: Sequence[int]) -> list[list[int]]:
        """Up to `new_tokens` new token ids after each row (at least one; a stop token ends a row)."""
        if not rows:
            return []
        seed = int(torch.randint(2**31 - 1, ()).item())
        params = self._vllm.SamplingParams(
            n=1,
            temperature=self.sampling.temperature,
            top_k=self.sampling.top_k or -1,
            top_p=self.sampling.top_p,
            max_tokens=new_tokens,
            min_tokens=1,
            seed=seed,
            stop_token_ids=list(stop_ids) or None,
        )
        prompts = [{"prompt_token_ids": list(row)} for row in rows]
        outputs = self.engine.generate(prompts, params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]
