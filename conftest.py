"""Shared pytest setup for the core's and every plugin's tests."""

from __future__ import annotations

import os

# Tiny models run fastest on one thread, and the suite must not fight itself for 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure() -> None:
    import torch

    torch.set_num_threads(1)
