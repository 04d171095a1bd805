"""The ``transformers`` system: tester, target and baseline as Hugging Face causal language models.

Two modes, chosen by the options (`transformers_system` builds the right one):

- `TransformersSystem`, plain text (the default, for base LMs): states and actions are strings,
  the target continues the text it is given, so ``join(c, p) == c + p`` and
  ``advance(c, p, r) == c + p + r``. Contexts and continuations are tokenised separately (no
  special tokens) and concatenated by ids.
- `ChatTransformersSystem`, chat mode (``target_chat`` and/or ``tester_chat``): states are
  `Conversation` messages; the target reads them through its chat template (after an optional
  ``system_prompt``) and answers as the assistant; the tester writes the user's next message,
  as a base LM continuing a transcript or as an instruct model following ``tester_instruction``
  (`astra_transformers.views`).

Generated continuations are cut from the generated ids by token position, then decoded.

>>> system = TransformersSystem(probe_tokens=8)   # the embedded tiny GPT-2
>>> len(system.rollout_tester(["Hi there.", "How was the movie?"]))
2
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import torch
from pydantic import ValidationError
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as _hf_logging

from astra_core.chat import Conversation
from astra_core.errors import ComponentBuildError, ConfigError, OptionsError
from astra_core.protocols import Reduction
from astra_transformers import TINY_MODEL_DIR
from astra_transformers.decoding import fast_sample
from astra_transformers.generation import Decoded, Decoder, PrefixStore, Sampling, sample
from astra_transformers.large import (
    Loading,
    checkpointing,
    enable_gradient_checkpointing,
    input_device,
    prepare_for_qlora,
    role_dtype,
    spans_devices,
)
from astra_transformers.logprobs import LogprobMemo, length_buckets
from astra_transformers.lora import ADAPTER_CONFIG, LoraTester, adapter_base, adapter_directory
from astra_transformers.options import TransformersOptions
from astra_transformers.packing import pack, packed_logprobs, packing_is_exact
from astra_transformers.precision import autocast, check_autocast, placement_guard
from astra_transformers.smollm2 import SMOLLM2_NAME
from astra_transformers.views import (
    ChatTemplate,
    ChatView,
    InstructView,
    Rows,
    TextView,
    TranscriptView,
    View,
    checked_conversation,
    eos_ids,
    newline_ids,
)

if TYPE_CHECKING:
    from astra_core.protocols import FeatureSystem, System, TurnTextSystem
    from astra_transformers.vllm_backend import VllmTarget

hf_logging: Any = _hf_logging  # its progress-bar switches are untyped
S = TypeVar("S")
_TAIL_SLACK = 8
"""Extra prompt tokens whose log-probs the target's prefill keeps beyond twice the probe budget: a
probe decoded and tokenised again may take more tokens than were generated (a random-weight
model's 32 tokens came back as up to 47)."""


@dataclass
class LoadedModel:
    """A causal LM with what the system needs to drive it: its tokenizer, device and limits."""

    source: str
    module: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    n_positions: int
    pad_id: int
    eos_id: int | None
    start_id: int
    stop_ids: set[int]
    """End-of-sequence ids: the tokenizer's and the generation config's (a list for Llama 3)."""
    sliced_head: bool
    """Whether logits are exactly ``lm_head(base_model(...))``, so they can be computed only where needed."""
    packs: bool = False
    """Whether the model honours a tree attention mask and position ids (`astra_transformers.packing`),
    so log-prob passes run rows that share prefixes as one packed sequence."""


def resolve_source(source: str) -> str:
    """Where `source` loads from: the embedded model's directory for ``"tiny"``, the converted
    SmolLM2 for ``"smollm2-135m-instruct"`` (`astra_transformers.smollm2`), an existing local
    directory, or the string itself as a hub id. A path-like string that does not exist is a
    `ConfigError` naming it."""
    if source == "tiny":
        return str(TINY_MODEL_DIR)
    if source == SMOLLM2_NAME:
        from astra_transformers.smollm2 import model_directory

        return str(model_directory())
    path = Path(source).expanduser()
    if path.exists():
        if (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file():
            raise ConfigError(
                f"{source!r} is a LoRA adapter directory, which only `tester` may name; give a model "
                f"directory, a hub id or 'tiny' here"
            )
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model path {source!r} has no config.json; give a directory written by save_pretrained, "
                f"a hub id, or 'tiny' for the embedded model"
            )
        return str(path.resolve())
    looks_like_path = source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
    if looks_like_path:
        raise ConfigError(
            f"model path {source!r} does not exist; give an existing model directory, a hub id, "
            f"or 'tiny' for the embedded model"
        )
    return source


def tune_threads(parameters: int, wanted: int | None = None) -> int:
    """Set torch's intra-op threads; returns the count in use.

    `wanted` (the ``num_threads`` option) sets the count outright; else an explicit
    ``ASTRA_NUM_THREADS`` (or ``OMP_NUM_THREADS``, which torch reads itself) is respected; else
    torch's default, one thread per core. Measured on an idle 2-core machine, two threads ran the
    default step 1.24x faster than one; on a machine already busy with other processes one thread
    can win by far (oversubscription), which is what ``num_threads = 1`` is for. `parameters` is
    kept for callers that want to log the model size next to the choice.
    """
    if wanted is not None:
        torch.set_num_threads(wanted)
        return torch.get_num_threads()
    variable = os.environ.get("ASTRA_NUM_THREADS")
    if variable is not None and variable.isdigit() and int(variable) > 0:
        torch.set_num_threads(int(variable))
    return torch.get_num_threads()


def _device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"invalid torch device {name!r} ({error}); use e.g. 'cpu' or 'cuda:0'") from None


@contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """The CLI draws its own progress; no "Loading weights" or "Writing model shards" bars."""
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def load_model(
    source: str,
    dtype: torch.dtype,
    device: torch.device,
    allow_pickle_weights: bool = False,
    loading: Loading | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer through `from_pretrained`, the same way for the
    embedded model, a hub id or a local directory; failures become a `ComponentBuildError`.
    `loading` quantises it, places it with accelerate or picks its attention (`astra_transformers.large`).

    Never runs code from the model directory (``trust_remote_code=False``, so transformers never
    asks on the terminal either) and reads safetensors weights only, unless
    `allow_pickle_weights` admits ``.bin`` pickles (which can run code when loaded)."""
    location = resolve_source(source)
    loading = loading or Loading()
    try:
        with _no_hf_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
            module = AutoModelForCausalLM.from_pretrained(
                location,
                trust_remote_code=False,
                use_safetensors=None if allow_pickle_weights else True,
                **loading.from_pretrained_kwargs(dtype, device),
            )
    except Exception as error:  # any loading failure is reported with the source that caused it
        raise ComponentBuildError(
            f"cannot load model {source!r} (from {location!r}): {type(error).__name__}: {error}; "
            f"give a local model directory, a hub id that is cached (runs are offline), or 'tiny'"
            + ("" if allow_pickle_weights else "; weights must be safetensors unless allow_pickle_weights = true")
        ) from error
    if loading.places_itself:
        _as_torch(module).eval()
        device = input_device(module)
    else:
        _as_torch(module).to(device).eval()
    config = module.config
    n_positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not isinstance(n_positions, int) or n_positions < 2:
        n_positions = 1024
    eos_id = tokenizer.eos_token_id
    eos = eos_id if isinstance(eos_id, int) else None
    pad_id = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else eos
    if pad_id is None:
        raise ComponentBuildError(f"model {source!r}: its tokenizer has neither a pad nor an eos token to pad with")
    bos_id = tokenizer.bos_token_id
    start_id = bos_id if isinstance(bos_id, int) else pad_id
    stops = eos_ids(tokenizer, getattr(module, "generation_config", None))
    loaded = LoadedModel(source, module, tokenizer, device, n_positions, pad_id, eos, start_id, stops, False)
    # A model spread over devices takes the full forward, whose outputs accelerate brings back.
    loaded.sliced_head = not spans_devices(module) and _head_is_linear_readout(loaded)
    loaded.packs = packing_is_exact(module, output_head(module) if loaded.sliced_head else None, start_id)
    return loaded


def _head_is_linear_readout(model: LoadedModel) -> bool:
    # Models that post-process logits (scaling, soft-capping) must take the full forward path.
    head = output_head(model.module)
    if head is None:
        return False
    ids = torch.tensor([[model.start_id, model.pad_id, model.start_id]], device=model.device)
    with torch.inference_mode():
        mask = torch.ones_like(ids)
        full = model.module(input_ids=ids, attention_mask=mask, use_cache=False).logits
        hidden = model.module.base_model(input_ids=ids, attention_mask=mask, use_cache=False)[0]
        sliced = head(hidden)
    return bool(sliced.shape == full.shape and torch.allclose(sliced.float(), full.float(), atol=1e-4, rtol=1e-4))


def _as_torch(module: PreTrainedModel) -> nn.Module:
    # transformers leaves eval/train untyped; the nn.Module signatures are the same and typed.
    return module


def output_head(module: PreTrainedModel) -> nn.Module | None:
    """The model's LM head (its output embeddings), or None for a model without one."""
    head = cast(Any, module).get_output_embeddings()
    return head if isinstance(head, nn.Module) else None


def _freeze(module: PreTrainedModel) -> PreTrainedModel:
    _as_torch(module).requires_grad_(False).eval()
    return module


def _validated(options: dict[str, Any]) -> TransformersOptions:
    try:
        return TransformersOptions.model_validate(options)
    except ValidationError as error:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()]
        raise OptionsError("system", "transformers", problems) from None


def transformers_system(**options: Any) -> TransformersSystem | ChatTransformersSystem:
    """The registered factory: `ChatTransformersSystem` when ``target_chat`` or ``tester_chat``
    is set, else the plain-text `TransformersSystem`."""
    opts = _validated(options)
    if opts.target_chat or opts.tester_chat:
        return ChatTransformersSystem(**options)
    return TransformersSystem(**options)


class _ModelsSystem(Generic[S]):
    """Tester (trainable), target and baseline (frozen) as Hugging Face causal LMs, over states `S`.

    Built with the fields of `TransformersOptions`.
    The baseline defaults to a frozen copy of the tester's starting weights; when target and
    baseline come from the same source (and device and dtype) they are one object. With
    ``lora`` the tester is a LoRA adapter (`astra_transformers.lora`) and the baseline is the
    tester's own model with the adapter off: no copy. Each role has its own dtype and device;
    ``autocast="bf16"`` runs the tester's forwards under bfloat16 autocast, and a device mix-up
    in a forward is a `DevicePlacementError` naming the role (`astra_transformers.precision`).
    Contexts longer than a model's budget (``max_context_tokens``, by default its
    ``n_positions`` minus the tokens it may add) lose their oldest tokens. Sampling uses torch's
    global generator, so a seeded run repeats.

    Speed: generation is a lean decode loop (`astra_transformers.generation`) that prefills each
    distinct context once; the target's prefill also records log p_target(probe | context) in a
    memo that serves `target_logprobs` (and `baseline_logprobs` when the baseline is the target)
    without another forward; log-prob batches are bucketed by length. Building a system sets
    torch's thread count for the models' size (see `tune_threads`).
    """

    def __init__(self, **options: Any) -> None:
        self.options = _validated(options)
        opts = self.options
        self.generate_calls = 0
        self.generated_tokens = 0  # new tokens decoded by every role (bench/gpu_check.py's tokens/s)
        tester_device = _device(opts.tester_device or opts.device)
        target_device = _device(opts.target_device or opts.device)
        baseline_device = _device(opts.baseline_device) if opts.baseline_device else tester_device
        tester_dtype = role_dtype(opts.tester_dtype or opts.dtype, tester_device)
        target_dtype = role_dtype(opts.target_dtype or opts.dtype, target_device)
        baseline_dtype = role_dtype(opts.baseline_dtype or opts.tester_dtype or opts.dtype, baseline_device)
        # Large-model loading (astra_transformers.large); the options were checked against this machine.
        tester_loading = Loading(opts.quantization, attn_implementation=opts.attn_implementation)
        target_loading = Loading(opts.target_quantization, opts.target_device_map, opts.attn_implementation)
        baseline_loading = Loading(attn_implementation=opts.attn_implementation)
        check_autocast(opts.autocast, tester_device)
        tester_source = opts.tester or opts.model
        adapter = adapter_directory(tester_source)
        if adapter is not None and opts.lora is not None:
            raise ConfigError(
                f"tester {tester_source!r} is a saved LoRA adapter, which carries its own r, alpha and targets; "
                f"remove the lora options, or set tester to a model to start a new adapter"
            )
        base_source = adapter_base(adapter) if adapter is not None else tester_source
        target_source = opts.target or opts.model
        baseline_source = opts.baseline or base_source

        self._tester = load_model(base_source, tester_dtype, tester_device, opts.allow_pickle_weights, tester_loading)
        _as_torch(self._tester.module).train(False)  # no dropout: log-probs must match what was sampled
        if opts.quantization is not None:
            prepare_for_qlora(self._tester.module, opts.gradient_checkpointing)
        self._lora: LoraTester | None = None
        if adapter is not None:
            self._lora = LoraTester.load(self._tester.module, adapter, base_source, opts.allow_pickle_weights)
        elif opts.lora is not None:
            self._lora = LoraTester.attach(self._tester.module, opts.lora, base_source)
        beside_tester = baseline_device == tester_device and baseline_dtype == tester_dtype
        base_is_baseline = opts.baseline is None or resolve_source(opts.baseline) == resolve_source(base_source)
        if self._lora is not None and base_is_baseline and beside_tester:
            # The tester's own weights with the adapter off (see _running): the base model, no copy.
            self._baseline = replace(self._tester)
            baseline_loading = tester_loading
        elif opts.baseline is None and self._lora is None:
            starting = _freeze(copy.deepcopy(self._tester.module))
            _as_torch(starting).to(device=baseline_device, dtype=baseline_dtype)
            self._baseline = replace(self._tester, module=starting, device=baseline_device)
        else:
            self._baseline = load_model(
                baseline_source, baseline_dtype, baseline_device, opts.allow_pickle_weights, baseline_loading
            )
            _freeze(self._baseline.module)
        if (
            resolve_source(target_source) == resolve_source(baseline_source)
            and target_device == baseline_device
            and target_dtype == baseline_dtype
            and target_loading == baseline_loading
        ):
            self._target = self._baseline  # one frozen copy serves both roles
        else:
            self._target = load_model(
                target_source, target_dtype, target_device, opts.allow_pickle_weights, target_loading
            )
            _freeze(self._target.module)
        if opts.gradient_checkpointing:
            enable_gradient_checkpointing(self._tester.module)

        largest = max(sum(p.numel() for p in m.module.parameters()) for m in (self._tester, self._target))
        self.num_threads = tune_threads(largest, opts.num_threads)
        self._sampling = Sampling(opts.temperature, opts.top_k, opts.top_p)
        self._vllm: VllmTarget | None = None
        if opts.target_backend == "vllm":
            from astra_transformers.vllm_backend import VllmTarget

            self._vllm = VllmTarget(resolve_source(target_source), target_dtype, self._sampling)
        self._decoders: dict[int, Decoder] = {}
        # Frozen weights never change, so the target's prompt log-probs stay exact (see rollout_target).
        self._memos: dict[int, LogprobMemo] = {id(self._target): LogprobMemo()}
        # KV caches carried across turns: a turn's context starts with the last turn's text.
        self._prefix_stores: dict[int, PrefixStore] = {id(m): PrefixStore() for m in (self._tester, self._target)}
        self._bucket_logprobs = True
        self._pack_logprobs = True
        self.tester_context_tokens = self._budget(self._tester, opts.probe_tokens, "tester", "probe_tokens")
        self.target_context_tokens = self._budget(self._target, opts.response_tokens, "target", "response_tokens")
        self._tester_view, self._target_view = self._views()

    def _views(self) -> tuple[View[S], View[S]]:
        """How the tester (and the baseline, its reference) and the target read states."""
        raise NotImplementedError

    def _text_view(self, model: LoadedModel) -> TextView:
        return TextView(model.tokenizer, model.n_positions, model.start_id, model.stop_ids)

    def _budget(self, model: LoadedModel, new_tokens: int, role: str, option: str) -> int:
        room = model.n_positions - new_tokens
        if room < 1:
            raise ConfigError(
                f"{option}={new_tokens} leaves no room for a context in the {role} {model.source!r} "
                f"(n_positions={model.n_positions}); lower {option}"
            )
        wanted = self.options.max_context_tokens
        if wanted is None:
            return room
        if wanted > room:
            raise ConfigError(
                f"max_context_tokens={wanted} plus {option}={new_tokens} exceeds the {role} {model.source!r}'s "
                f"n_positions={model.n_positions}; lower max_context_tokens to at most {room}"
            )
        return wanted

    def _cut_opener(self, prompt: str) -> str:
        """`prompt`'s last `opener_tokens` tokens (of the tester's and the target's tokenizer), cut
        at a token boundary of the original text; the whole prompt when the option is unset.

        Cut once per episode, the opener is a prefix of every context in its tree: with
        ``opener_tokens <= n_positions - tree_depth * (probe_tokens + response_tokens)`` no later
        context is cut, so each turn's tokens extend its parent's and packed passes share them.
        """
        keep = self.options.opener_tokens
        if keep is None:
            return prompt
        tester, target = self._tester.tokenizer, self._target.tokenizer
        text = prompt

        # verbose=False: an opener longer than the model is expected here (it is being cut).
        def token_count(tokenizer: PreTrainedTokenizerBase) -> int:
            return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

        while True:
            count = token_count(tester)
            if max(count, count if target is tester else token_count(target)) <= keep:
                return text
            # Character offsets keep the original text (decoding ids could alter spacing);
            # re-tokenised, the cut text can differ at its first token, hence the loop.
            text = text[max(_offset_of(tester, text, max(count - keep, 1)), 1) :]

    # -- the models ------------------------------------------------------------------------

    @property
    def tester(self) -> PreTrainedModel:
        """The trainable tester model."""
        return self._tester.module

    @property
    def target(self) -> PreTrainedModel:
        """The frozen target model (the same object as `baseline` when both share a source)."""
        return self._target.module

    @property
    def baseline(self) -> PreTrainedModel:
        """The frozen baseline model: by default a copy of the tester's starting weights. With a
        LoRA tester it is the tester's own model object, which computes the base model only with
        the adapter off (``with system.lora.adapter_off():``), as `baseline_logprobs` runs it."""
        return self._baseline.module

    @property
    def lora(self) -> LoraTester | None:
        """The tester's LoRA adapter (`LoraTester`), or None when the whole tester trains."""
        return self._lora

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tester's tokenizer (also the baseline's)."""
        return self._tester.tokenizer

    @property
    def target_tokenizer(self) -> PreTrainedTokenizerBase:
        """The target's tokenizer."""
        return self._target.tokenizer

    def parameters(self) -> Iterator[nn.Parameter]:
        """The tester's trainable parameters, in a stable order: all of its weights, or with
        `lora` only the adapter's (the base model's weights are frozen)."""
        return (p for p in self._tester.module.parameters() if p.requires_grad)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """`parameters` by name (``tester.`` + the model's own names), so a checkpoint stores
        the tester's weights by name and loads them into a system built alone."""
        return ((name, p) for name, p in self._tester.module.named_parameters(prefix="tester") if p.requires_grad)

    def save_pretrained(
        self, directory: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write the tester and its tokenizer so ``AutoModelForCausalLM.from_pretrained(directory)``
        (and this system's ``model=directory``) load it. A LoRA tester writes only its adapter
        (``adapter_config.json``, ``adapter_model.safetensors``), which ``tester=directory`` and
        ``peft.PeftModel.from_pretrained(base_model, directory)`` load. `state_dict`: the tester's
        full weights, when its module holds only FSDP shards (``training.parallelism = "fsdp"``)."""
        with _no_hf_progress_bars():
            if self._lora is not None:
                self._lora.save(directory)
            else:
                full = dict(state_dict) if state_dict is not None else None
                self._tester.module.save_pretrained(directory, state_dict=full)
            self._tester.tokenizer.save_pretrained(directory)

    @contextmanager
    def _running(self, model: LoadedModel) -> Iterator[None]:
        """The context of every forward of `model`: device mix-ups named with the role, bf16
        autocast (and adapter dropout when training) for the tester, the adapter off for a
        frozen role that shares the LoRA tester's weights."""
        if model is self._tester:
            role, option = "tester", "tester_device"
        elif model is self._target:
            role = "target (also the baseline)" if model is self._baseline else "target"
            option = "target_device"
        else:
            role, option = "baseline", "baseline_device"
        with ExitStack() as stack:
            stack.enter_context(placement_guard(role, model.device, model.module, option))
            if model is self._tester:
                stack.enter_context(autocast(self.options.autocast, model.device))
                if self._lora is not None:
                    stack.enter_context(self._lora.training_dropout())
            elif self._lora is not None and model.module is self._tester.module:
                stack.enter_context(self._lora.adapter_off())
            yield

    # -- log-probs -------------------------------------------------------------------------

    @staticmethod
    def _forward_logprobs(
        model: LoadedModel, rows: Sequence[list[int]], starts: Sequence[int], tails: Sequence[int]
    ) -> torch.Tensor:
        """Summed log-probs of each row's span ``[start, len(row) - tail)`` (right-padded rows,
        one forward): (B,)."""
        device = model.device
        batch, width = len(rows), max(len(row) for row in rows)
        input_ids = torch.full((batch, width), model.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        row_index: list[int] = []
        predict_at: list[int] = []  # the position whose output predicts each continuation token
        for i, (row, start, tail) in enumerate(zip(rows, starts, tails, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
            row_index.extend([i] * (len(row) - tail - start))
            predict_at.extend(range(start - 1, len(row) - tail - 1))
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        # Right padding: every real token sits at its own position, pads come after and are masked.
        position_ids = torch.arange(width, device=device).expand(batch, width)
        rows_t = torch.tensor(row_index, dtype=torch.long, device=device)
        at_t = torch.tensor(predict_at, dtype=torch.long, device=device)
        targets = input_ids[rows_t, at_t + 1]
        if model.sliced_head:
            # Only continuation positions go through the LM head (its vocab-wide matmul dominates).
            hidden: torch.Tensor = model.module.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )[0]
            head = cast(nn.Module, output_head(model.module))
            logits = head(hidden[rows_t, at_t])
        else:
            out = model.module(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
            logits = out.logits[rows_t, at_t]
        token_logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return torch.zeros(batch, dtype=token_logprobs.dtype, device=device).index_add(0, rows_t, token_logprobs)

    def _logprobs(
        self,
        model: LoadedModel,
        view: View[S],
        budget: int,
        contexts: Sequence[S],
        continuations: Sequence[str],
        reduction: Reduction,
        memo: LogprobMemo | None = None,
    ) -> torch.Tensor:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        rows = view.pairs(contexts, continuations, budget)
        device = model.device
        if not rows.ids:
            return torch.zeros(0, device=device)
        with self._running(model):
            return self._memo_or_forward(model, rows, reduction, memo)

    def _memo_or_forward(
        self, model: LoadedModel, rows: Rows, reduction: Reduction, memo: LogprobMemo | None
    ) -> torch.Tensor:
        device = model.device
        counts = [len(row) - start - tail for row, start, tail in zip(rows.ids, rows.starts, rows.tails, strict=True)]
        known: dict[int, float] = {}
        if memo is not None:
            for i, key in enumerate(rows.keys):
                value = memo.lookup(key, rows.ids[i], counts[i], skip=rows.tails[i])
                if value is not None:
                    known[i] = value
        missing = [i for i in range(len(rows.ids)) if i not in known]
        if not known:
            totals = self._bucketed_logprobs(model, rows.ids, rows.starts, rows.tails)
        else:
            totals = torch.tensor([known.get(i, 0.0) for i in range(len(rows.ids))], dtype=torch.float32, device=device)
            if missing:
                fresh = self._bucketed_logprobs(
                    model,
                    [rows.ids[i] for i in missing],
                    [rows.starts[i] for i in missing],
                    [rows.tails[i] for i in missing],
                )
                totals = totals.index_copy(0, torch.tensor(missing, dtype=torch.long, device=device), fresh)
        if reduction == "mean":
            totals = totals / torch.tensor(counts, device=device).clamp(min=1)
        return totals

    def _packs(self, model: LoadedModel) -> bool:
        return self._pack_logprobs and model.packs

    def _bucketed_logprobs(
        self, model: LoadedModel, rows: Sequence[list[int]], starts: Sequence[int], tails: Sequence[int]
    ) -> torch.Tensor:
        """Summed continuation log-probs of `rows` (each continuation ends `tails` tokens before its
        row's end): one packed pass where the model allows it (each shared prefix runs once, nothing
        padded but the last sequence's tail), else `_forward_logprobs` over batches of similar
        length (padding is expensive on CPU)."""
        if self._packs(model):
            head = output_head(model.module) if model.sliced_head else None
            # A causal model's continuation log-probs do not depend on the tokens after it.
            cut = [row[: len(row) - tail] for row, tail in zip(rows, tails, strict=True)]
            return packed_logprobs(model.module, head, pack(cut, starts, model.pad_id))
        if not self._bucket_logprobs:
            return self._forward_logprobs(model, rows, starts, tails)
        buckets = length_buckets([len(row) for row in rows])
        if len(buckets) == 1:
            return self._forward_logprobs(model, rows, starts, tails)
        parts = [
            self._forward_logprobs(model, [rows[i] for i in b], [starts[i] for i in b], [tails[i] for i in b])
            for b in buckets
        ]
        order = torch.tensor([i for b in buckets for i in b], dtype=torch.long, device=model.device)
        values = torch.cat(parts)
        return torch.empty_like(values).index_copy(0, order, values)

    def _frozen_logprobs(
        self,
        model: LoadedModel,
        view: View[S],
        budget: int,
        contexts: Sequence[S],
        continuations: Sequence[str],
        reduction: Reduction,
    ) -> torch.Tensor:
        with torch.inference_mode():
            memo = self._memos.get(id(model))
            values = self._logprobs(model, view, budget, contexts, continuations, reduction, memo)
        # A normal tensor (not an inference tensor), so losses may save it for backward.
        return values.to(self._tester.device).clone()

    def tester_logprobs(
        self, contexts: Sequence[S], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        """Log-probs of the tester writing each continuation after its context, with gradients:
        summed over the continuation's tokens, or averaged with ``reduction="mean"``."""
        view = self._tester_view
        return self._logprobs(self._tester, view, self.tester_context_tokens, contexts, continuations, reduction)

    def tester_pair_logprobs(
        self,
        contexts: Sequence[S],
        chosen: Sequence[str],
        rejected: Sequence[str],
        reduction: Reduction = "sum",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tester's log-probs of `chosen` and of `rejected` after each context, with gradients:
        the same values as two `tester_logprobs` calls, but each context runs once. With a model
        that packs (`astra_transformers.packing`) all rows run as one packed pass, so contexts
        shared across pairs (a tree's opener and earlier turns) run once too; otherwise both
        continuations run on the context's KV cache, and pairs whose context would be truncated
        differently for the two continuations take the plain path."""
        if not len(contexts) == len(chosen) == len(rejected):
            raise ValueError(f"{len(contexts)} contexts, {len(chosen)} chosen and {len(rejected)} rejected")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        model = self._tester
        n = len(contexts)
        if n == 0:
            empty = torch.zeros(0, device=model.device)
            return empty, empty
        pairs_w = self._tester_view.pairs(contexts, chosen, self.tester_context_tokens)
        pairs_l = self._tester_view.pairs(contexts, rejected, self.tester_context_tokens)
        # The tester's views end every row with its continuation (no tails).
        rows_w, starts_w, rows_l, starts_l = pairs_w.ids, pairs_w.starts, pairs_l.ids, pairs_l.starts
        shared = [
            sw == sl and rw[:sw] == rl[:sl] for rw, sw, rl, sl in zip(rows_w, starts_w, rows_l, starts_l, strict=True)
        ]
        if self._packs(model):
            with self._running(model):
                both = self._bucketed_logprobs(
                    model, rows_w + rows_l, starts_w + starts_l, [0] * (len(rows_w) + len(rows_l))
                )
            totals_w, totals_l = both[:n], both[n:]
        # Checkpointed blocks keep no KV cache in a gradient forward: the pair path needs one.
        elif not all(shared) or checkpointing(model.module):
            both = self.tester_logprobs(list(contexts) * 2, list(chosen) + list(rejected), reduction)
            return both[:n], both[n:]
        else:
            totals_w, totals_l = self._context_once(model, rows_w, starts_w, rows_l, starts_l)
        if reduction == "mean":
            count_w = torch.tensor([len(r) - s for r, s in zip(rows_w, starts_w, strict=True)], device=model.device)
            count_l = torch.tensor([len(r) - s for r, s in zip(rows_l, starts_l, strict=True)], device=model.device)
            totals_w = totals_w / count_w.clamp(min=1)
            totals_l = totals_l / count_l.clamp(min=1)
        return totals_w, totals_l

    def _context_once(
        self,
        model: LoadedModel,
        rows_w: list[list[int]],
        starts_w: list[int],
        rows_l: list[list[int]],
        starts_l: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed (chosen, rejected) log-probs: each context runs once, both continuations on its cache."""
        n = len(rows_w)
        with self._running(model):
            parts: list[torch.Tensor] = []
            order: list[int] = []
            # Bucketed by context length: the contexts are what gets padded to a common width.
            buckets = length_buckets(starts_w, 0.05, 2) if self._bucket_logprobs else [list(range(n))]
            for bucket in buckets:
                parts.append(
                    _pair_forward(
                        self._decoder(model),
                        model,
                        [rows_w[i][: starts_w[i]] for i in bucket],
                        [rows_w[i][starts_w[i] :] for i in bucket] + [rows_l[i][starts_l[i] :] for i in bucket],
                    )
                )
                order.extend(bucket)
            # Each bucket's part holds its chosen values, then its rejected ones.
            chosen_part = torch.cat([p[: len(p) // 2] for p in parts])
            rejected_part = torch.cat([p[len(p) // 2 :] for p in parts])
            index = torch.tensor(order, dtype=torch.long, device=model.device)
            totals_w = torch.empty_like(chosen_part).index_copy(0, index, chosen_part)
            totals_l = torch.empty_like(rejected_part).index_copy(0, index, rejected_part)
        return totals_w, totals_l

    def baseline_logprobs(
        self, contexts: Sequence[S], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        """Log-probs under the frozen baseline (no gradients), read as the tester reads them (it
        is the tester's reference). When the baseline is the target and both read alike, turns
        the target has answered come from its memo."""
        budget = self.tester_context_tokens
        return self._frozen_logprobs(self._baseline, self._tester_view, budget, contexts, continuations, reduction)

    def target_logprobs(
        self, contexts: Sequence[S], continuations: Sequence[str], reduction: Reduction = "sum"
    ) -> torch.Tensor:
        """Log-probs under the frozen target (no gradients), of each continuation as the target
        reads it after its context. A pair the target has answered comes from the memo its
        prefill filled, without another forward."""
        budget = self.target_context_tokens
        return self._frozen_logprobs(self._target, self._target_view, budget, contexts, continuations, reduction)

    # -- generation ------------------------------------------------------------------------

    def _decoder(self, model: LoadedModel) -> Decoder:
        decoder = self._decoders.get(id(model))
        if decoder is None:
            head = output_head(model.module) if model.sliced_head else None
            decoder = Decoder(model.module, head, model.pad_id)
            self._decoders[id(model)] = decoder
        return decoder

    def _generate(
        self,
        model: LoadedModel,
        view: View[S],
        budget: int,
        contexts: Sequence[S],
        new_tokens: int,
        memo: LogprobMemo | None,
    ) -> list[str]:
        self.generate_calls += 1
        if not contexts:
            return []
        keys, rows = view.contexts(contexts, budget)
        # The memo serves log-probs of continuations up to this many tokens near a prompt's end
        # (a chat template writes a few tokens after the probe).
        tail = 2 * self.options.probe_tokens + _TAIL_SLACK + view.suffix_tokens if memo is not None else 0
        decoding = self.options.decoding
        # Fixed-shape decoding (astra_transformers.decoding) keeps no caches across turns.
        store = self._prefix_store(model) if decoding == "loop" else None
        prefixes = [store.find(key) for key in keys] if store is not None else None
        stops = sorted(view.stop_ids)
        with torch.inference_mode(), self._running(model):
            if model is self._target and self._vllm is not None:
                decoded = Decoded(self._vllm.generate(rows, new_tokens, stops), None, None)
            elif decoding != "loop":
                compile_step = self.options.compile_decoding and model.device.type == "cuda"
                decoded = fast_sample(
                    decoding,
                    self._decoder(model),
                    rows,
                    new_tokens,
                    self._sampling,
                    model.device,
                    tail=tail,
                    compile=compile_step,
                    stop_ids=stops,
                )
            else:
                decoded = sample(
                    self._decoder(model),
                    rows,
                    new_tokens,
                    self._sampling,
                    model.device,
                    tail=tail,
                    prefixes=prefixes,
                    keep_caches=store is not None,
                    stop_ids=stops,
                )
        self.generated_tokens += sum(len(ids) for ids in decoded.new_ids)
        if memo is not None and decoded.prompt_tails is not None:
            for key, row, logprobs in zip(keys, rows, decoded.prompt_tails, strict=True):
                memo.record(key, row, logprobs)
        # Cut by token position, never by characters.
        texts = [
            str(model.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
            for ids in decoded.new_ids
        ]
        if store is not None and decoded.caches is not None:
            # The next turn's context starts with what this one read and wrote.
            for key, text, prefix in zip(keys, texts, decoded.caches, strict=True):
                if prefix is not None:
                    store.put(key + text, prefix)
        return texts

    def _prefix_store(self, model: LoadedModel) -> PrefixStore | None:
        """`model`'s store of KV caches carried across turns. Every store is cleared when the
        tester's weights changed (in-place updates bump the tensors' versions): the tester's
        caches are stale then, and a training step means a new experience has begun, whose
        turns share nothing with the last one's (the target's entries would only hold memory)."""
        store = self._prefix_stores.get(id(model))
        if store is None:
            return None
        fingerprint = tuple(p._version for p in self._tester.module.parameters())
        if fingerprint != store.fingerprint:
            store.clear()
            store.fingerprint = fingerprint
        return store

    def rollout_tester(self, contexts: Sequence[S]) -> list[str]:
        """Sample one probe per context from the tester, in one batched generation call."""
        budget, tokens = self.tester_context_tokens, self.options.probe_tokens
        return self._generate(self._tester, self._tester_view, budget, contexts, tokens, None)

    def rollout_target(self, contexts: Sequence[S]) -> list[str]:
        """Sample one response per context (each already ending with its probe) from the target,
        in one batched generation call; its prefill also fills the target's log-prob memo."""
        memo = self._memos.get(id(self._target))
        budget, tokens = self.target_context_tokens, self.options.response_tokens
        return self._generate(self._target, self._target_view, budget, contexts, tokens, memo)

    # -- features --------------------------------------------------------------------------

    def state_features(self, contexts: Sequence[S]) -> torch.Tensor:
        """The tester's last-layer hidden state at each context's last token, detached: (B, H)."""
        model = self._tester
        if not contexts:
            return torch.zeros((0, int(model.module.config.hidden_size)), device=model.device)
        _, rows = self._tester_view.contexts(contexts, self.tester_context_tokens)
        batch, width = len(rows), max(len(row) for row in rows)
        input_ids = torch.full((batch, width), model.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        position_ids = torch.arange(width).expand(batch, width)
        last = torch.tensor([len(row) - 1 for row in rows])
        with torch.no_grad(), self._running(model):
            hidden: torch.Tensor = model.module.base_model(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                position_ids=position_ids.to(model.device),
                use_cache=False,
            )[0]
        return hidden[torch.arange(batch, device=model.device), last.to(model.device)].float().detach()


class TransformersSystem(_ModelsSystem[str]):
    """The plain-text mode: states are strings that each model continues as they are.

    >>> system = TransformersSystem(probe_tokens=8)   # the embedded tiny GPT-2
    >>> len(system.rollout_tester(["Hi there.", "How was the movie?"]))
    2
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)

    def _views(self) -> tuple[View[str], View[str]]:
        if self.options.target_chat or self.options.tester_chat:
            raise ConfigError("target_chat and tester_chat make conversation states: build ChatTransformersSystem")
        return self._text_view(self._tester), self._text_view(self._target)

    def opening(self, prompt: str) -> str:
        """The state an episode opens with: the prompt's text (its last `opener_tokens` tokens)."""
        return self._cut_opener(prompt)

    def join(self, context: str, probe: str) -> str:
        """The text the target continues: the context, then the probe, as they are."""
        return context + probe

    def advance(self, context: str, probe: str, response: str) -> str:
        """The context of the next turn: context, probe and response, concatenated."""
        return context + probe + response

    def turn_text(self, probe: str, response: str) -> str:
        """The probe and the response as one text, concatenated as `advance` joins them."""
        return probe + response


class ChatTransformersSystem(_ModelsSystem[Conversation]):
    """Chat mode: states are `Conversation` messages; each role reads them its own way.

    The target (``target_chat = true``) reads ``apply_chat_template(messages,
    add_generation_prompt=True)``, after ``system_prompt`` when set, and answers as the assistant,
    stopping at its end-of-turn token or any eos id of its generation config. The tester writes
    the user's next message: with ``tester_chat = true`` an instruct model given
    ``tester_instruction`` and the transcript through its chat template; otherwise a base LM
    continuing a ``User: / Assistant:`` transcript (stopping at the end of its line). Too long
    a conversation loses its oldest whole turns; a system prompt always stays.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)

    def _views(self) -> tuple[View[Conversation], View[Conversation]]:
        opts = self.options
        tester, target = self._tester, self._target
        tester_view: View[Conversation]
        if opts.tester_chat:
            template = ChatTemplate(tester.tokenizer, tester.source, "tester")
            tester_view = InstructView(template, opts.tester_instruction, tester.stop_ids, tester.n_positions)
        else:
            tester_view = TranscriptView(self._text_view(tester), newline_ids(tester.tokenizer))
        target_view: View[Conversation]
        if opts.target_chat:
            template = ChatTemplate(target.tokenizer, target.source, "target")
            target_view = ChatView(template, opts.system_prompt, target.stop_ids, opts.probe_tokens)
        else:
            target_view = TranscriptView(self._text_view(target), newline_ids(target.tokenizer), "Assistant")
        return tester_view, target_view

    def opening(self, prompt: str) -> Conversation:
        """The state an episode opens with: a conversation the user opened with `prompt` (its
        last `opener_tokens` tokens)."""
        return Conversation.opening(self._cut_opener(prompt))

    def join(self, context: Conversation, probe: str) -> Conversation:
        """The conversation the target answers: the context, then the probe as the user's message."""
        return checked_conversation(context).then("user", probe)

    def advance(self, context: Conversation, probe: str, response: str) -> Conversation:
        """The conversation after a turn: the probe as the user's message, the response as the assistant's."""
        return checked_conversation(context).then("user", probe).then("assistant", response)

    def turn_text(self, probe: str, response: str) -> str:
        """The probe and the response as one text: two messages, one per line."""
        return f"{probe}\n{response}"


def _offset_of(tokenizer: PreTrainedTokenizerBase, text: str, index: int) -> int:
    """The character offset in `text` where its token `index` starts."""
    try:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"
        ]
        return int(offsets[index][0])
    except NotImplementedError:  # a slow tokenizer has no offsets: measure the decoded head instead
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return len(tokenizer.decode(ids[:index]))


def _pair_forward(
    decoder: Decoder, model: LoadedModel, contexts: Sequence[list[int]], continuations: Sequence[list[int]]
) -> torch.Tensor:
    """Summed log-probs of ``continuations`` (B chosen, then B rejected) after their shared
    ``contexts`` (B rows): the right-padded contexts run once, their KV cache is repeated to the
    2B continuation rows, and the continuations run on it. (2B,), differentiable."""
    device = model.device
    batch = len(contexts)
    rows = 2 * batch
    context_width = max(len(row) for row in contexts)
    cont_width = max(len(row) for row in continuations)
    context_ids = torch.full((batch, context_width), model.pad_id, dtype=torch.long)
    context_mask = torch.zeros((batch, context_width), dtype=torch.long)
    for i, row in enumerate(contexts):
        context_ids[i, : len(row)] = torch.tensor(row)
        context_mask[i, : len(row)] = 1
    context_ids, context_mask = context_ids.to(device), context_mask.to(device)
    positions = torch.arange(context_width, device=device).expand(batch, context_width)
    context_features, cache = decoder.run(context_ids, context_mask, positions, None)
    lengths = [len(row) for row in contexts] * 2
    # Each continuation's first token is predicted by its context's last real token.
    pair = torch.tensor([i % batch for i in range(rows)], dtype=torch.long, device=device)
    last = context_features[pair, torch.tensor(lengths, device=device) - 1]  # (2B, F)
    picked = [last]
    row_index: list[int] = list(range(rows))
    targets: list[int] = [row[0] if row else model.pad_id for row in continuations]
    first_valid = [bool(row) for row in continuations]
    valid: list[bool] = list(first_valid)
    if cont_width > 1:
        cont_ids = torch.full((rows, cont_width), model.pad_id, dtype=torch.long)
        cont_mask = torch.zeros((rows, cont_width), dtype=torch.long)
        for i, row in enumerate(continuations):
            cont_ids[i, : len(row)] = torch.tensor(row)
            cont_mask[i, : len(row)] = 1
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        cache.batch_select_indices(pair)
        mask = torch.cat([context_mask[pair], cont_mask], dim=1)
        cont_positions = torch.tensor(lengths, device=device)[:, None] + torch.arange(cont_width, device=device)
        cont_features, _ = decoder.run(cont_ids[:, :-1], mask[:, :-1], cont_positions[:, :-1], cache)
        at_rows: list[int] = []
        at_cols: list[int] = []
        for i, row in enumerate(continuations):
            at_rows.extend([i] * max(0, len(row) - 1))
            at_cols.extend(range(len(row) - 1))
            targets.extend(row[1:])
        valid.extend([True] * len(at_rows))
        row_index.extend(at_rows)
        rows_t = torch.tensor(at_rows, dtype=torch.long, device=device)
        picked.append(cont_features[rows_t, torch.tensor(at_cols, dtype=torch.long, device=device)])
    features = torch.cat(picked)
    logits = decoder.logits(features)
    target_t = torch.tensor(targets, dtype=torch.long, device=device)
    token_logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, target_t.unsqueeze(-1)).squeeze(-1)
    token_logprobs = token_logprobs * torch.tensor(valid, dtype=token_logprobs.dtype, device=device)
    index = torch.tensor(row_index, dtype=torch.long, device=device)
    return torch.zeros(rows, dtype=token_logprobs.dtype, device=device).index_add(0, index, token_logprobs)


if TYPE_CHECKING:

    def _conforms(system: TransformersSystem) -> tuple[System[str, str], FeatureSystem[str], TurnTextSystem]:
        return system, system, system

    def _chat_conforms(
        system: ChatTransformersSystem,
    ) -> tuple[System[Conversation, str], FeatureSystem[Conversation], TurnTextSystem]:
        return system, system, system
