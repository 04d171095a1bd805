"""Atomic checkpoints and exact resume.

A checkpoint is a directory ``checkpoints/step-00000012`` holding safetensors (weights, optimizer
tensors, torch RNG state) and JSON (everything else), plus ``manifest.json`` with each file's
SHA-256. It is written into a temporary directory and renamed into place, so a crash leaves
either the previous checkpoint or the new one, never half of one; loading verifies the manifest.
Nothing is unpickled. A write that fails (a full disk, a read-only directory) is a
`CheckpointWriteError` naming the directory and the operating system's reason; `check_writable`
lets a command find such a directory before training starts.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from astra_core.errors import CheckpointError, ConfigError

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
# A manifest lists a handful of files; it is read before any checksum can vouch for it, so a
# damaged or hostile one must not make `verify` read gigabytes.
MAX_MANIFEST_BYTES = 1 << 20
CHECKPOINTS = "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        save_file(tensors, str(path))
    except SafetensorError as error:
        # safetensors reports a failed write as its own error type; recover the OSError so a
        # full disk reads the same whichever file hit it.
        found = re.search(r"\(os error (\d+)\)", str(error))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from error


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


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, directory read-only, ...).

    Nothing half-written is left where `latest_checkpoint` looks, and the previous checkpoint
    is untouched. It is also an `OSError` whose ``errno`` is the operating system's, so code
    that handles disk errors generically still catches it.
    """

    def __init__(self, message: str, cause: OSError) -> None:
        super().__init__(message)
        self.errno = cause.errno
        self.strerror = cause.strerror

    def __str__(self) -> str:  # OSError would format "[Errno n] ..." from errno and strerror
        return str(self.args[0])


def describe_os_error(error: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the reason of `error` and its errno name."""
    reason = error.strerror or str(error) or type(error).__name__
    name = errno.errorcode.get(error.errno) if isinstance(error.errno, int) else None
    return f"{reason} ({name})" if name else reason


def _write_failed(root: Path, step: int, error: OSError, run_dir: str | Path) -> CheckpointWriteError:
    try:
        previous = latest_checkpoint(run_dir)  # verified: the message promises it is intact
    except OSError:
        previous = None
    kept = f"the previous checkpoint {previous} is intact" if previous else "no complete earlier checkpoint exists"
    inside = error.filename is not None and str(error.filename).startswith(str(root))
    where = f" ({error.filename})" if error.filename and not inside else ""
    return CheckpointWriteError(
        f"{root}: cannot write checkpoint step-{step:08d}: {describe_os_error(error)}{where}; {kept}; "
        f"free space or make the directory writable, then resume from the run directory",
        error,
    )


def check_writable(run_dir: str | Path) -> None:
    """Raise `ConfigError` unless files can be created and written in `run_dir`.

    Creates the directory (and missing parents), writes and fsyncs a small probe file, then
    removes the probe and every directory it created, so a failed check and a good one both
    leave the file system as they found it. Run it before building components, so a run whose
    checkpoints could never be saved fails in seconds, not after its first hours.
    """
    path = Path(run_dir)
    created: list[Path] = []
    probe = path / f".astra-write-probe-{os.getpid()}"
    try:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for directory in reversed(missing):
            directory.mkdir()
            created.append(directory)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)  # a full disk may only refuse the data when it is flushed
        finally:
            os.close(fd)
    except OSError as error:
        # Name the failing path only when it is not the run directory or the probe in it.
        where = f" ({error.filename})" if error.filename and Path(error.filename) not in (path, probe) else ""
        raise ConfigError(
            f"{path}: cannot write the run directory: {describe_os_error(error)}{where}; "
            f"pass --output DIR with a writable directory that has free space"
        ) from None
    finally:
        with contextlib.suppress(OSError):  # under a file, even unlink fails (ENOTDIR)
            probe.unlink(missing_ok=True)
        for directory in reversed(created):
            try:
                directory.rmdir()
            except OSError:
                break


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
    directories left by an earlier crash are removed first. An `OSError` while writing (a full
    disk, a read-only directory) becomes `CheckpointWriteError`, after the staging directory is
    removed; the previous checkpoints stay as they were.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step:08d}"
    try:
        _write_checkpoint(root, final, parameters, optimizer, scheduler, state, config, step)
    except OSError as error:
        raise _write_failed(root, step, error, run_dir) from error
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    others = [p for p in list_checkpoints(run_dir) if p != final]
    for old in others[: max(0, len(others) - (keep - 1))]:  # the new one always stays
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(
    root: Path,
    final: Path,
    parameters: Iterable[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: Mapping[str, Any],
    config: Mapping[str, Any],
    step: int,
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-", dir=root))
    try:
        weights = {f"param.{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(parameters)}
        _save_tensors(weights, staging / "weights.safetensors")
        opt_tensors, opt_data = optimizer_state(optimizer)
        _save_tensors(opt_tensors, staging / "optimizer.safetensors")
        _write_json(staging / "optimizer.json", opt_data)
        _write_json(staging / "scheduler.json", scheduler.state_dict() if scheduler is not None else None)
        rng_tensors, rng_data = rng_state()
        _save_tensors(rng_tensors, staging / "rng.safetensors")
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
        _rename_into_place(staging, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _rename_into_place(staging: Path, final: Path) -> None:
    if not final.exists():
        os.replace(staging, final)
        return
    # rename() cannot replace a non-empty directory: move the old one aside (a name
    # `latest_checkpoint` ignores) so the new one still appears in a single rename, and move it
    # back if that rename fails.
    aside = final.parent / f".tmp-replaced-{final.name}-{os.getpid()}"
    os.replace(final, aside)
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(aside, final)
        raise


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
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise CheckpointError(
            f"{path}: {MANIFEST} is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit; the checkpoint is corrupted"
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
    for name in manifest["files"]:  # before hashing anything: never read outside the checkpoint
        if Path(name).name != name or name in {"", ".", ".."}:
            raise CheckpointError(
                f"{path}: the manifest lists {name!r}, which is not a file name inside the checkpoint; "
                f"the checkpoint is corrupted or was tampered with"
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


def load_weights(checkpoint: str | Path, parameters: Iterable[torch.Tensor]) -> None:
    """Copy a checkpoint's weights into `parameters`, by index, as the Trainer saved them.

    `parameters` must be the list the Trainer trains (`astra_core.trainer.trainable_parameters`
    of the algorithm's parameters). Call `verify` first; a file that passes its checksum but holds
    other tensors, a count or a shape that differs, raises `CheckpointError` (a different model).
    """
    path, parameters = Path(checkpoint), list(parameters)
    try:
        weights = load_tensors(path, "weights.safetensors")
    except Exception as error:  # a file that passed its checksum but is not ours
        raise CheckpointError(f"{path}: unreadable weights ({type(error).__name__}: {error})") from None
    if len(weights) != len(parameters):
        raise CheckpointError(
            f"{path}: holds {len(weights)} parameter tensors, this run trains {len(parameters)}; "
            f"it is from a different model"
        )
    with torch.no_grad():
        for i, parameter in enumerate(parameters):
            saved = weights.get(f"param.{i:05d}")
            if saved is None or saved.shape != parameter.shape:
                found = "missing" if saved is None else f"of shape {tuple(saved.shape)}"
                raise CheckpointError(
                    f"{path}: parameter {i} is {found}, expected shape {tuple(parameter.shape)}; "
                    f"it is from a different model"
                )
            parameter.copy_(saved)
