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
