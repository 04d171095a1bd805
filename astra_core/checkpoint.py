"""Atomic checkpoints and exact resume.

A checkpoint is a directory ``checkpoints/step-00000012`` holding safetensors (weights, optimizer
tensors, torch RNG state) and JSON (everything else), plus ``manifest.json`` with each file's
SHA-256. It is written into a temporary directory and renamed into place, so a crash leaves
either the previous checkpoint or the new one, never half of one; loading verifies the manifest.
Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from astra_core.errors import CheckpointError

MANIFEST = "manifest.json"
REQUIRED_FILES = frozenset(
    {
        "weights.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.json",
        "rng.safetensors",
        "rng.json",
        "state.json",
        "config.json",
    }
)
FORMAT = "astra-checkpoint/1"
CHECKPOINTS = "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The process's RNG states: torch's as tensors, Python's and NumPy's as JSON."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    data = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    return tensors, data


def set_rng_state(tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(tensors["torch"])
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors and JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any]
) -> None:
    """Inverse of `optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in data["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": data["param_groups"]})


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    parameters: Iterable[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: Mapping[str, Any],
    config: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically under `run_dir/checkpoints`; keep the newest `keep`.

    Files are written and fsynced in a hidden staging directory that is renamed into place, so
    a crash at any moment leaves only complete checkpoints under ``step-*`` names. Staging
    directories left by an earlier crash are removed first.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-", dir=root))
    try:
        weights = {f"param.{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(parameters)}
        save_file(weights, str(staging / "weights.safetensors"))
        opt_tensors, opt_data = optimizer_state(optimizer)
        save_file(opt_tensors, str(staging / "optimizer.safetensors"))
        _write_json(staging / "optimizer.json", opt_data)
        _write_json(staging / "scheduler.json", scheduler.state_dict() if scheduler is not None else None)
        rng_tensors, rng_data = rng_state()
        save_file(rng_tensors, str(staging / "rng.safetensors"))
        _write_json(staging / "rng.json", rng_data)
        _write_json(staging / "state.json", {**state, "step": step})
        _write_json(staging / "config.json", dict(config))
        files = sorted(p.name for p in staging.iterdir())
        manifest = {"format": FORMAT, "step": step, "files": {n: _sha256(staging / n) for n in files}}
        _write_json(staging / MANIFEST, manifest)
        for path in staging.iterdir():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(staging)
        if final.exists():
            # rename() cannot replace a non-empty directory: move the old one aside (a name
            # `latest_checkpoint` ignores) so the new one still appears in a single rename.
            os.replace(final, root / f".tmp-replaced-{final.name}-{os.getpid()}")
        os.replace(staging, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    others = [p for p in list_checkpoints(run_dir) if p != final]
    for old in others[: max(0, len(others) - (keep - 1))]:  # the new one always stays
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoints (a manifest present), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / MANIFEST).exists()]
    return sorted(found, key=lambda p: p.name)


def verify(checkpoint: str | Path) -> dict[str, Any]:
    """Check a checkpoint's manifest and checksums; return the manifest."""
    path = Path(checkpoint)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{path}: not a checkpoint (no {MANIFEST}); pass a run directory or a "
            f"checkpoints/step-N directory written by astra"
        )
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable manifest ({error}); the checkpoint is corrupted") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: the manifest is not a JSON object; the checkpoint is corrupted")
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        found = manifest.get("format")
        raise CheckpointError(f"{path}: unknown checkpoint format {found!r}; expected {FORMAT}")
    missing = sorted(REQUIRED_FILES - set(manifest["files"]))
    if missing:
        raise CheckpointError(
            f"{path}: manifest lists no {', '.join(missing)}; the checkpoint is corrupted, resume from an older one"
        )
    for name, digest in manifest["files"].items():
        file = path / name
        if not file.is_file() or _sha256(file) != digest:
            raise CheckpointError(
                f"{path}: {name} is missing or does not match its checksum; "
                f"the checkpoint is corrupted, resume from an older one"
            )
    return manifest


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose checksums verify, or None."""
    for candidate in reversed(list_checkpoints(run_dir)):
        try:
            verify(candidate)
        except CheckpointError:
            continue
        return candidate
    return None


def read_json(checkpoint: Path, name: str) -> Any:
    """A JSON file of a checkpoint (call `verify` first)."""
    return json.loads((checkpoint / name).read_text(encoding="utf-8"))


def load_tensors(checkpoint: Path, name: str) -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint, on the CPU (safetensors never unpickles)."""
    return load_file(str(checkpoint / name))
