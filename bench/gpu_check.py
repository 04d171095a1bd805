"""A short GPU check: one training step of the real stack on CUDA, then data-parallel on two GPUs.

Optional to run; it needs a CUDA torch and the first-party plugins (astra-transformers,
astra-ast, astra-algorithms, astra-scorers), and downloads nothing (the tiny embedded model)::

    python bench/gpu_check.py            # one step on cuda:0; with 2+ GPUs, also a 2-process DDP step
    python bench/gpu_check.py --cpu      # the same checks on the CPU (gloo): a dry run of this script

The single-process check trains one step of the ``transformers`` system with ``device="cuda"``
and checks that the loss and the weights are finite and that the weights moved. The DDP check
re-runs this file under ``torchrun --nproc_per_node 2`` (NCCL), where each rank trains one step
and the ranks compare a checksum of their weights, which must be identical. Prints one line per
check and exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import torch

from astra_core import distributed
from astra_core.assembly import assemble
from astra_core.build import resolve
from astra_core.config import RunConfig, parse_run_config
from astra_core.trainer import Trainer


def run_config(device: str, steps: int = 1) -> RunConfig:
    """A one-step run of the default stack on the tiny embedded model, on `device`."""
    return parse_run_config(
        {
            "system": {
                "name": "transformers",
                "model": "tiny",
                "device": device,
                "probe_tokens": 8,
                "response_tokens": 8,
            },
            "scorer": "profanity",
            "sampler": {"name": "ast", "tree_width": 2, "tree_depth": 2},
            "algorithm": "dpo",
            "evaluator": "none",
            "training": {
                "training_steps": steps,
                "num_episodes_per_experience": 4,
                "batch_size": 8,
                "lr": 1e-3,
                "max_grad_norm": 1.0,
            },
        },
        "gpu_check",
    )


def train_one_step(device: str) -> tuple[Trainer[Any, Any, Any, Any], list[torch.Tensor], dict[str, float]]:
    """Assemble the run on `device` (joining torchrun's group first, if any) and train one step."""
    trainer = assemble(resolve(run_config(device)))
    before = [p.detach().clone() for p in trainer.parameters]
    logs = trainer.train()[-1]
    return trainer, before, logs


def check_single(device: str) -> None:
    """One step in this process: finite loss and weights, weights moved, on the requested device."""
    started = time.perf_counter()
    trainer, before, logs = train_one_step(device)
    seconds = time.perf_counter() - started
    where = {str(p.device) for p in trainer.parameters}
    moved = any(not torch.equal(a, p.detach()) for a, p in zip(before, trainer.parameters, strict=True))
    finite = all(bool(torch.isfinite(p).all()) for p in trainer.parameters)
    ok = moved and finite and all(w.startswith(device) for w in where)
    print(
        f"{'ok ' if ok else 'FAIL'} single process on {sorted(where)}: loss {logs.get('loss', float('nan')):.4f}, "
        f"{int(logs.get('updates', 0))} update(s), weights moved={moved} finite={finite}, {seconds:.1f} s",
        flush=True,
    )
    if not ok:
        sys.exit(1)


def check_ddp_rank(device: str) -> None:
    """Under torchrun: train one step and compare the ranks' weight checksums (run on every rank)."""
    trainer, _, logs = train_one_step(device)
    checksum = torch.stack([p.detach().double().sum() for p in trainer.parameters]).sum().reshape(1)
    low, high = checksum.clone(), checksum.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    same = bool(torch.equal(low, high))
    if distributed.is_main():
        print(
            f"{'ok ' if same else 'FAIL'} DDP over {distributed.world_size()} {device} processes: "
            f"identical weights={same}, "
            f"{logs.get('episodes', 0):.0f} episodes in the step, loss {logs.get('loss', float('nan')):.4f}",
            flush=True,
        )
    distributed.destroy()
    if not same:
        sys.exit(1)


def main() -> None:
    """Run the checks this machine allows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cpu", action="store_true", help="run the single-process check on the CPU")
    args = parser.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    device = "cpu" if args.cpu else "cuda"
    if distributed.launched_by_torchrun():
        check_ddp_rank(device)
        return
    if device == "cuda" and not torch.cuda.is_available():
        print("skip: CUDA is not available (use --cpu for a dry run on the CPU)")
        return
    check_single(device)
    count = torch.cuda.device_count() if device == "cuda" else 2
    if count < 2:
        print(f"skip: DDP needs 2 GPUs, found {count}")
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
    sys.exit(subprocess.run(command + (["--cpu"] if args.cpu else []), check=False).returncode)


if __name__ == "__main__":
    main()
