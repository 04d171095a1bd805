"""bench/gpu_check.py on a machine without CUDA: one line that says so, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the check would run")
def test_gpu_check_without_cuda_exits_2_with_one_line() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "no CUDA device is present" in lines[0], result.stderr


def test_gpu_check_lists_its_checks_in_its_help() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0
    for name in ("default_bf16", "lora", "smollm2_chat", "ddp_2", "fsdp_1", "fsdp_2"):
        assert name in result.stdout


TORCHRUN_TAIL = """[rank0]: Traceback (most recent call last):
[rank0]:   File "gpu_check.py", line 300, in fsdp_rank
[rank0]: torch.distributed.DistBackendError: NCCL error in: init.cc:100, unhandled system error
E1130 23:30:00 torch/distributed/elastic/multiprocessing/api.py] failed (exitcode: 1) local_rank: 0
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================"""

CRASH_TAIL = """E1130 23:30:00 api.py] failed (exitcode: -11) local_rank: 0 (pid: 12) of binary: python3
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
  exitcode  : -11 (pid: 12)
  traceback : Signal 11 (SIGSEGV) received by PID 12
============================================================"""


@pytest.mark.parametrize(
    ("stderr", "named"),
    [
        (TORCHRUN_TAIL, "torchrun exited 1: [rank0]: torch.distributed.DistBackendError: NCCL error in: init.cc:100"),
        (CRASH_TAIL, "torchrun exited 1: traceback : Signal 11 (SIGSEGV) received by PID 12"),
    ],
)
def test_a_failed_torchrun_check_names_the_ranks_error_not_torchruns_banner(
    monkeypatch: pytest.MonkeyPatch, stderr: str, named: str
) -> None:
    sys.path.insert(0, str(SCRIPT.parents[1]))
    from bench import gpu_check

    failed = subprocess.CompletedProcess(args=[], returncode=1, stdout="", stderr=stderr)
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(AssertionError) as caught:
        gpu_check._torchrun_ranks("cpu", "fsdp", ranks=1)
    assert str(caught.value).startswith(named)
