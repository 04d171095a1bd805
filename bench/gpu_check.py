"""The GPU check: one command that tries every GPU path on one machine and prints one JSON line.

    python bench/gpu_check.py              # on a machine with a CUDA GPU: about 1-3 minutes
    python bench/gpu_check.py --cpu        # the same checks on the CPU: a slow dry run of this script

It needs a CUDA build of torch and the first-party plugins (astra-transformers, astra-ast,
astra-algorithms, astra-scorers) and downloads nothing. On a machine without a CUDA device it
prints one line saying so and exits with status 2. Each check trains or decodes a little and
passes, fails (with the reason) or is skipped (with the reason: a package or a second GPU
missing):

- ``default_bf16``: the default run (``astra_core/default_run.toml``: tiny model, AST sampler,
  DPO) on ``cuda`` with the default dtype, which is bfloat16 there; 3 training steps. Its step
  time, generated tokens per second and the peak GPU memory are the line's headline numbers.
- ``lora``: the same with a LoRA tester: only the adapter trains, and it moves.
- ``gradient_checkpointing``: the tester's loss and gradients with and without checkpointing.
- ``static_decoding`` / ``static_compiled_decoding`` / ``generate_decoding``: greedy tokens of
  the fixed-shape decoders (the static one also under ``torch.compile``) equal the lean loop's on
  CUDA in float32 (more than 5 % differing rows fail; fewer are reported); their tokens per
  second are reported beside the loop's.
- ``smollm2_chat``: a training step against the SmolLM2-135M-Instruct chat target (skipped when
  its package is not installed).
- ``qlora_4bit``: a 4-bit QLoRA tester trains a step (skipped without bitsandbytes).
- ``target_device_map``: the target placed by accelerate (``target_device_map = "auto"``)
  gives the same log-probs as the target on one device.
- ``ddp_2``: two processes under torchrun (NCCL), one per GPU, end a step with identical
  weights (skipped with fewer than two GPUs).
- ``fsdp_1``: ``training.parallelism = "fsdp"`` in a single torchrun rank, which one GPU can
  run: the tester's parameters are DTensor shards (of one), the optimizer is built over them, two
  steps train and the gathered full weights moved and are finite.
- ``fsdp_2``: the same as ``ddp_2`` with ``training.parallelism = "fsdp"``: the tester's blocks sharded by
  FSDP2 over the two GPUs (its parameters are DTensor shards), two steps train, and the full
  weights gathered for a checkpoint moved and are finite (skipped with fewer than two GPUs).

The JSON line: ``{"device", "torch", "step_time_s", "tokens_per_s", "peak_memory_gib",
"decode_tokens_per_s": {loop, static, generate}, "checks": {name: "pass" | "fail: ..." |
"skip: ..."}, "ok"}``; the exit status is 1 when any check failed. Paste the line into
docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

NO_CUDA_MESSAGE = (
    "gpu_check: no CUDA device is present (torch.cuda.is_available() is False); run it on a machine "
    "with an NVIDIA GPU and a CUDA build of torch, or pass --cpu for a dry run"
)

DEFAULT_RUN = Path(__file__).resolve().parents[1] / "astra_core" / "default_run.toml"


class Skip(Exception):
    """A check that cannot run here (a package or a device is missing)."""


def run_config(device: str, steps: int, parallelism: str = "ddp", **system: Any) -> Any:
    """The default run on `device` for `steps` steps, its system options overridden by `system`."""
    import tomllib

    from astra_core.config import parse_run_config

    data = tomllib.loads(DEFAULT_RUN.read_text(encoding="utf-8"))
    data["system"] = {"name": "transformers", "device": device, **system}
    data["evaluator"] = "none"
    data["training"] = {**data["training"], "training_steps": steps, "checkpoint_every": None}
    data["training"]["parallelism"] = parallelism
    data["training"].pop("keep_checkpoints", None)
    return parse_run_config(data, "gpu_check")


def train(device: str, steps: int, parallelism: str = "ddp", **system: Any) -> dict[str, Any]:
    """Assemble the run (joining torchrun's group first, if any) and train `steps` steps."""
    import torch

    from astra_core.assembly import assemble
    from astra_core.build import resolve

    trainer: Any = assemble(resolve(run_config(device, steps, parallelism, **system)), with_evaluator=False)
    before = [p.detach().clone() for p in trainer.parameters]
    history = trainer.train()
    moved = any(not torch.equal(a, p.detach()) for a, p in zip(before, trainer.parameters, strict=True))
    finite = all(bool(torch.isfinite(p).all()) for p in trainer.parameters)
    built = trainer.harness.sampler.system
    return {"trainer": trainer, "system": built, "history": history, "moved": moved, "finite": finite}


def check_default(device: str, report: dict[str, Any]) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = train(device, 3)
    system, history = run["system"], run["history"]
    dtypes = {str(p.dtype) for p in system.tester.parameters()}
    want = "torch.bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "torch.float32"
    if dtypes != {want}:
        raise AssertionError(f"tester dtypes {sorted(dtypes)}, expected {want}")
    if not (run["moved"] and run["finite"]):
        raise AssertionError(f"weights moved={run['moved']} finite={run['finite']}")
    # The first step pays for warm-up (allocator, kernels): time the others.
    steady = history[1:] or history
    step_time = sum(h["time/step"] for h in steady) / len(steady)
    report["step_time_s"] = round(step_time, 4)
    tokens = getattr(system, "generated_tokens", None)
    seconds = sum(h["time/step"] for h in history)
    report["tokens_per_s"] = round(tokens / seconds, 1) if tokens else None
    if device == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)


def check_lora(device: str, report: dict[str, Any]) -> None:
    if importlib.util.find_spec("peft") is None:
        raise Skip("peft is not installed (pip install 'astra-transformers[lora]')")
    run = train(device, 2, lora={"r": 8})
    system = run["system"]
    trainable = sum(p.numel() for p in system.parameters())
    total = sum(p.numel() for p in system.tester.parameters())
    if not (0 < trainable < total // 4 and run["moved"] and run["finite"]):
        raise AssertionError(f"{trainable} of {total} trainable, moved={run['moved']} finite={run['finite']}")


CONTEXTS = ["Hi Sam! How are you?", "What do you think about the weather?", "Oh,", "Oh,", "I"]
CHOSEN = [" I'm fine, thanks.", " It's so cold.", " shut up.", " well.", " see."]


def _system(device: str, **options: Any) -> Any:
    from astra_transformers.system import TransformersSystem

    return TransformersSystem(probe_tokens=16, response_tokens=16, device=device, **options)


def check_gradient_checkpointing(device: str, report: dict[str, Any]) -> None:
    import torch

    grads = []
    for checkpointed in (False, True):
        system = _system(device, dtype="float32", gradient_checkpointing=checkpointed)
        loss = system.tester_logprobs(CONTEXTS, CHOSEN, "mean").sum()
        loss.backward()
        grads.append((loss.detach(), [p.grad.detach().clone() for p in system.parameters()]))
    (plain_loss, plain), (loss, got) = grads
    torch.testing.assert_close(loss, plain_loss, rtol=1e-4, atol=1e-5)
    for a, b in zip(got, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def _decode_rate(
    system: Any, mode: str, rows: list[list[int]], new_tokens: int, compile: bool = False
) -> tuple[list[list[int]], float]:
    import torch

    from astra_transformers.decoding import fast_sample
    from astra_transformers.generation import Sampling, sample

    model = system._tester
    decoder = system._decoder(model)
    greedy = Sampling(top_k=1)

    stops = sorted(model.stop_ids)  # every decoder ends a row at the model's own stop tokens

    def once() -> list[list[int]]:
        with torch.inference_mode():
            if mode == "loop":
                return sample(decoder, rows, new_tokens, greedy, model.device, stop_ids=stops).new_ids
            decoded = fast_sample(
                mode, decoder, rows, new_tokens, greedy, model.device, stop_ids=stops, compile=compile
            )
            return decoded.new_ids

    once()  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    ids = once()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return ids, sum(len(r) for r in ids) / (time.perf_counter() - started)


def _decoding_check(mode: str, compile: bool = False) -> Callable[[str, dict[str, Any]], None]:
    name = f"{mode}_compiled" if compile else mode

    def check(device: str, report: dict[str, Any]) -> None:
        if compile and device != "cuda":
            raise Skip("compile_decoding compiles for CUDA graphs: CUDA only")
        # float32: greedy ties broken by bfloat16 rounding would differ between batch shapes.
        system = _system(device, dtype="float32")
        _, rows = system._tester_view.contexts(CONTEXTS * 13, 200)  # the tester's ids, cut as it reads them
        loop_ids, loop_rate = _decode_rate(system, "loop", rows, 32)
        ids, rate = _decode_rate(system, mode, rows, 32, compile)
        rates = report.setdefault("decode_tokens_per_s", {})
        rates["loop"], rates[name] = round(loop_rate, 1), round(rate, 1)
        differing = sum(a != b for a, b in zip(ids, loop_ids, strict=True))
        if differing:
            # Token-exact on the CPU (the suite checks it); GPU kernels may pick another
            # reduction order per batch shape, so a rare near-tie may flip: report, fail beyond 5 %.
            report.setdefault("decode_rows_differing", {})[name] = differing
        if differing > len(ids) // 20:
            raise AssertionError(f"{differing} of {len(ids)} greedy rows differ from the lean loop's")

    return check


def check_smollm2_chat(device: str, report: dict[str, Any]) -> None:
    if importlib.util.find_spec("astra_transformers.smollm2") is None:
        raise Skip("this astra-transformers has no SmolLM2 chat target (astra_transformers.smollm2)")
    from astra_core.errors import AstraError

    smollm2: Any = importlib.import_module("astra_transformers.smollm2")  # chat mode's module

    try:
        smollm2.gguf_file()
    except AstraError as error:
        raise Skip(str(error)) from None
    if importlib.util.find_spec("gguf") is None:
        raise Skip("the gguf package is not installed (pip install 'astra-transformers[smollm2]')")
    run = train(device, 1, target="smollm2-135m-instruct", target_chat=True, response_tokens=16)
    if not run["finite"]:
        raise AssertionError("non-finite weights after a step against the chat target")


def check_qlora(device: str, report: dict[str, Any]) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skip("bitsandbytes is not installed (pip install 'astra-transformers[quantization]')")
    run = train(device, 1, quantization="4bit", lora={"r": 8})
    if not (run["moved"] and run["finite"]):
        raise AssertionError(f"moved={run['moved']} finite={run['finite']}")


def check_device_map(device: str, report: dict[str, Any]) -> None:
    import torch

    if importlib.util.find_spec("accelerate") is None:
        raise Skip("accelerate is not installed (pip install 'astra-transformers[large]')")
    plain = _system(device, dtype="float32")
    mapped = _system(device, dtype="float32", target="tiny", target_device_map="auto")
    torch.testing.assert_close(
        mapped.target_logprobs(CONTEXTS, CHOSEN), plain.target_logprobs(CONTEXTS, CHOSEN), rtol=1e-4, atol=1e-4
    )


def _torchrun_ranks(device: str, parallelism: str, ranks: int = 2) -> None:
    import torch

    count = torch.cuda.device_count() if device == "cuda" else ranks
    if count < ranks:
        raise Skip(f"{parallelism.upper()} on {ranks} ranks needs {ranks} GPUs, found {count}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", __file__]
    command += ["--rank", parallelism] + (["--cpu"] if device == "cpu" else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    if result.returncode != 0:
        # torchrun ends with a banner of its own: report the ranks' last error line, else its
        # own line naming the exit code or signal (a rank that crashed leaves no Python error).
        lines = result.stderr.strip().splitlines() or ["no output"]
        errors = [line for line in lines if re.match(r"^\s*(\[rank\d+\]:\s*)?[\w.]*(Error|Exception)\b", line)]
        errors = [line for line in errors if "ChildFailed" not in line]
        codes = [line for line in lines if re.search(r"exitcode|[Ss]ignal", line)]
        raise AssertionError(f"torchrun exited {result.returncode}: {(errors or codes or lines)[-1].strip()}")


def check_ddp(device: str, report: dict[str, Any]) -> None:
    _torchrun_ranks(device, "ddp")


def check_fsdp(device: str, report: dict[str, Any]) -> None:
    _torchrun_ranks(device, "fsdp")


def check_fsdp_one_rank(device: str, report: dict[str, Any]) -> None:
    # One GPU still runs the sharded path: DTensor parameters, optimizer over shards, bf16 gathering.
    _torchrun_ranks(device, "fsdp", ranks=1)


def ddp_rank(device: str) -> None:
    """Under torchrun: train two steps and compare the ranks' weight checksums."""
    import torch

    from astra_core import distributed

    run = train(device, 2)
    checksum = torch.stack([p.detach().double().sum() for p in run["trainer"].parameters]).sum().reshape(1)
    low, high = checksum.clone(), checksum.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    distributed.destroy()
    if not torch.equal(low, high):
        print(f"ranks differ: weight checksums {float(low)} .. {float(high)}", file=sys.stderr)
        sys.exit(1)


def fsdp_rank(device: str) -> None:
    """Under torchrun: train two steps with the tester sharded, then gather its full weights."""
    from astra_core import distributed

    run = train(device, 2, parallelism="fsdp")
    trainer = run["trainer"]
    sharded = type(trainer.parameters[0]).__name__
    weights, _ = trainer.collectives.full_state(trainer._named_parameters(), trainer.optimizer)
    rank = distributed.rank()
    distributed.destroy()
    problems = [] if sharded == "DTensor" else [f"parameters are {sharded}, not DTensor shards"]
    if not run["moved"] or not run["finite"]:
        problems.append(f"weights moved: {run['moved']}, finite: {run['finite']}")
    if rank == 0 and len(weights) != len(trainer.parameters):
        problems.append(f"gathered {len(weights)} full weights for {len(trainer.parameters)} parameters")
    if problems:
        print(f"rank {rank}: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)


CHECKS: dict[str, Callable[[str, dict[str, Any]], None]] = {
    "default_bf16": check_default,
    "lora": check_lora,
    "gradient_checkpointing": check_gradient_checkpointing,
    "static_decoding": _decoding_check("static"),
    "static_compiled_decoding": _decoding_check("static", compile=True),
    "generate_decoding": _decoding_check("generate"),
    "smollm2_chat": check_smollm2_chat,
    "qlora_4bit": check_qlora,
    "target_device_map": check_device_map,
    "ddp_2": check_ddp,
    "fsdp_1": check_fsdp_one_rank,
    "fsdp_2": check_fsdp,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU (a dry run of this script)")
    parser.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run only these checks")
    # A torchrun rank of ddp_2 or fsdp_2.
    parser.add_argument("--rank", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return 2
    if args.rank is not None:
        (fsdp_rank if args.rank == "fsdp" else ddp_rank)(device)
        return 0
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "step_time_s": None,
        "tokens_per_s": None,
        "peak_memory_gib": None,
    }
    checks: dict[str, str] = {}
    started = time.perf_counter()
    for name, check in CHECKS.items():
        if args.only and name not in args.only:
            continue
        try:
            check(device, report)
            checks[name] = "pass"
        except Skip as reason:
            checks[name] = f"skip: {reason}"
        except Exception as error:  # a failed check is reported, and the others still run
            last = traceback.extract_tb(error.__traceback__)[-1]
            checks[name] = f"fail: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
            checks[name] += f"({Path(last.filename).name}:{last.lineno})"
    report["checks"] = checks
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = not any(v.startswith("fail") for v in checks.values())
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
