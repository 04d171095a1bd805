"""Atomic checkpoints and exact resume.

A checkpoint is a directory ``checkpoints/step-00000012`` holding safetensors (weights by
parameter name, optimizer tensors, the RNG state of the CPU and of every CUDA device) and JSON
(everything else), plus ``manifest.json`` with each file's SHA-256. It is written into a
temporary directory and renamed into place, so a crash leaves either the previous checkpoint or
the new one, never half of one; pruning renames a checkpoint out of sight before deleting it.
Loading verifies the manifest, then the contents (types, ranges, sizes, finite weights): a
checkpoint that fails either is skipped for the previous good one, with one warning. Nothing is
unpickled. A write that fails (a full disk, a read-only directory) is a `CheckpointWriteError`
naming the directory and the operating system's reason; `check_writable` lets a command find such
a directory before training starts. The checks that decide whether a run may resume from a
checkpoint (`resume_problem`, `check_same_run`) live here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from astra_core.errors import CheckpointError, ConfigError
from astra_core.rundir import PARTIAL_PREFIX, describe_os_error

log = logging.getLogger(__name__)

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
FORMAT = "astra-checkpoint/2"  # /2: weights by parameter name (/1 stored them by position)
READABLE_FORMATS = frozenset({"astra-checkpoint/1", FORMAT})
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


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    try:
        save_file(tensors, str(path), metadata=metadata)
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


# --- parameter names ------------------------------------------------------------------------------

_POSITIONAL = re.compile(r"param\.\d{5}")


def positional_names(count: int) -> list[str]:
    """``param.00000``, ``param.00001``, ...: the names of parameters no component names."""
    return [f"param.{i:05d}" for i in range(count)]


def parameter_names(parameters: Sequence[torch.Tensor], *owners: object) -> list[str]:
    """A name for each of `parameters` (the Trainer's list), under which its weights are saved.

    A parameter is named by the first of `owners` (the system, then the algorithm) whose
    ``named_parameters()`` yields it, so the system's names are what a checkpoint holds and
    evaluation can load a tester into a system alone. Where no owner offers
    ``named_parameters``, or two parameters would share a name, every parameter falls back to
    its position (``param.NNNNN``); such a checkpoint loads back only into the same list.
    """
    known: dict[int, str] = {}
    for owner in owners:
        named = getattr(owner, "named_parameters", None)
        if callable(named):
            for name, parameter in named():
                known.setdefault(id(parameter), str(name))
    names = [known.get(id(p), f"param.{i:05d}") for i, p in enumerate(parameters)]
    if len(set(names)) != len(names):
        return positional_names(len(parameters))
    return names


def _named(parameters: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(parameters, Mapping):
        return dict(parameters)
    listed = list(parameters)
    return dict(zip(positional_names(len(listed)), listed, strict=True))


# --- RNG state ------------------------------------------------------------------------------------


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The process's RNG states: torch's CPU generator and every CUDA device's as tensors,
    Python's and NumPy's as JSON."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state.cpu()
    data = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    return tensors, data


def set_rng_state(tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA devices this process has; a count that differs warns)."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and here:
        for index, state in enumerate(cuda[:here]):
            torch.cuda.set_rng_state(state, index)
    if len(cuda) != here and (cuda or here):
        log.warning(
            "the checkpoint holds the RNG state of %d CUDA device(s), this process has %d: "
            "GPU sampling from here differs from the uninterrupted run's",
            len(cuda),
            here,
        )
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# --- optimizer state ------------------------------------------------------------------------------


def optimizer_state(
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict (or the optimizer's own) into tensors and JSON."""
    state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
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
    """Inverse of `optimizer_state`. State of a sharded (FSDP) parameter is loaded as its shards."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        if int(index) < len(parameters) and value.dim() > 0:
            value = _like(parameters[int(index)], value)
        state.setdefault(int(index), {})[name] = value
    for index, values in data["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": data["param_groups"]})


# --- writing --------------------------------------------------------------------------------------


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
    parameters: Mapping[str, torch.Tensor] | Iterable[torch.Tensor],
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
    scheduler: Any,
    state: Mapping[str, Any],
    config: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically under `run_dir/checkpoints`; keep the newest `keep`.

    `parameters` maps names to tensors (see `parameter_names`); a plain sequence is saved by
    position. `optimizer` is the optimizer or its state dict (`Collectives.full_state` gathers
    a sharded one's). Files are written and fsynced in a hidden staging directory that is renamed into
    place, so a crash at any moment leaves only complete checkpoints under ``step-*`` names.
    Staging and pruning directories left by an earlier crash are removed first. An `OSError`
    while writing (a full disk, a read-only directory) becomes `CheckpointWriteError`, after the
    staging directory is removed; the previous checkpoints stay as they were. Old checkpoints
    are renamed out of sight before they are deleted, so a crash while pruning leaves no
    partial ``step-*`` folder.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step:08d}"
    try:
        _write_checkpoint(root, final, _named(parameters), optimizer, scheduler, state, config, step)
    except OSError as error:
        raise _write_failed(root, step, error, run_dir) from error
    _remove_partial(root)
    others = [p for p in list_checkpoints(run_dir) if p != final]
    for old in others[: max(0, len(others) - (keep - 1))]:  # the new one always stays
        doomed = root / f"{PARTIAL_PREFIX}pruned-{old.name}-{os.getpid()}"
        try:
            os.replace(old, doomed)
        except OSError:
            continue  # pruning is housekeeping: a failure here must not fail the run
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def _remove_partial(root: Path) -> None:
    for stale in root.glob(f"{PARTIAL_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _write_checkpoint(
    root: Path,
    final: Path,
    parameters: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
    scheduler: Any,
    state: Mapping[str, Any],
    config: Mapping[str, Any],
    step: int,
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _remove_partial(root)
    staging = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}step-{step:08d}-", dir=root))
    try:
        weights = {name: p.detach().cpu().contiguous() for name, p in parameters.items()}
        # The order lets a checkpoint load by position too (components without parameter names).
        _save_tensors(weights, staging / "weights.safetensors", {"order": json.dumps(list(parameters))})
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


def without_manifest(run_dir: str | Path) -> list[Path]:
    """``step-*`` folders without a manifest: never written by an intact save, so damaged."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and not (p / MANIFEST).exists()
    )


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
    if manifest.get("format") not in READABLE_FORMATS or not isinstance(manifest.get("files"), dict):
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


def weight_order(checkpoint: Path, weights: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of a checkpoint's weights in the Trainer's order (positional names sort so)."""
    try:
        with safe_open(str(checkpoint / "weights.safetensors"), framework="pt") as handle:
            metadata = handle.metadata() or {}
        order = json.loads(metadata.get("order", "null"))
    except (OSError, ValueError, SafetensorError):
        order = None
    if isinstance(order, list) and sorted(map(str, order)) == sorted(weights):
        return [str(name) for name in order]
    return sorted(weights)


def load_weights(checkpoint: str | Path, parameters: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> None:
    """Copy a checkpoint's weights into `parameters`.

    A mapping is loaded by name: every name in it must be in the checkpoint (the checkpoint may
    hold more, say an algorithm's value head when loading a system's tester). A sequence is
    loaded by position, in the order the Trainer saved them: it must be that Trainer's list
    (`astra_core.assembly.trainable_parameters` of the algorithm's parameters). Call `verify`
    first; weights that differ in count, name or shape raise `CheckpointError` (a different
    model), and so do non-finite weights.
    """
    path = Path(checkpoint)
    try:
        weights = load_tensors(path, "weights.safetensors")
    except Exception as error:  # a file that passed its checksum but is not ours
        raise CheckpointError(f"{path}: unreadable weights ({type(error).__name__}: {error})") from None
    _check_finite(path, "weights", weights)
    if isinstance(parameters, Mapping):
        targets = dict(parameters)
        missing = [name for name in targets if name not in weights]
        if missing:
            raise CheckpointError(
                f"{path}: holds no weights named {missing[0]!r} ({len(missing)} missing of {len(targets)}); "
                f"it is from a different model"
            )
        pairs = [(name, name, targets[name]) for name in targets]
    else:
        listed = list(parameters)
        order = weight_order(path, weights)
        if len(order) != len(listed):
            raise CheckpointError(
                f"{path}: holds {len(order)} parameter tensors, this run trains {len(listed)}; "
                f"it is from a different model"
            )
        pairs = [(str(i), name, p) for i, (name, p) in enumerate(zip(order, listed, strict=True))]
    for label, name, parameter in pairs:
        saved = weights[name]
        if saved.shape != parameter.shape:
            raise CheckpointError(
                f"{path}: parameter {label} is of shape {tuple(saved.shape)}, expected shape "
                f"{tuple(parameter.shape)}; it is from a different model"
            )
    with torch.no_grad():
        for _, name, parameter in pairs:
            parameter.copy_(_like(parameter, weights[name]))


def _like(parameter: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `parameter` is: this rank's shard of it when `parameter` is an FSDP
    ``DTensor`` (cut locally from the full tensor every rank read: no communication)."""
    if not torch.distributed.is_available():
        return full
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(parameter, DTensor):
        return full
    return distribute_tensor(
        full.detach().to(parameter.device), parameter.device_mesh, parameter.placements, src_data_rank=None
    )


def load_tester(checkpoint: str | Path, system: object, trainer_parameters: Any = None) -> int:
    """Load a checkpoint's tester into `system` alone (no algorithm needed); return its step.

    The system's trainable parameters are matched by the names its ``named_parameters()``
    gives, which is what the Trainer saved them under. A system without parameter names
    leaves only the checkpoint's order: then `trainer_parameters` (a callable returning the
    Trainer's list, `astra_core.assembly.trainable_parameters` of the algorithm's parameters)
    is required. Verifies the checkpoint first.
    """
    path = Path(checkpoint)
    manifest = verify(path)
    named = getattr(system, "named_parameters", None)
    if callable(named):
        targets = {str(n): p for n, p in named() if getattr(p, "requires_grad", True)}
        load_weights(path, targets)
    elif trainer_parameters is not None:
        load_weights(path, trainer_parameters())
    else:
        raise CheckpointError(
            f"{path}: the system names no parameters (no named_parameters()), so its weights load only "
            f"by position into the Trainer's parameter list; pass the algorithm's parameters"
        )
    step = manifest.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: the manifest's step is {step!r}; the checkpoint is corrupted")
    return step


def _check_finite(path: Path, what: str, tensors: Mapping[str, torch.Tensor]) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: {what} {name!r} holds NaN or infinite values; the checkpoint is corrupted")


# --- reading back for a resume --------------------------------------------------------------------


@dataclass
class Resumable:
    """A checkpoint's contents, read and validated (types, ranges, sizes), not yet applied."""

    path: Path
    step: int
    state: dict[str, Any]
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_data: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng_tensors: dict[str, torch.Tensor]
    rng_data: dict[str, Any]


class DifferentRunError(CheckpointError):
    """The checkpoint is intact but belongs to another run or model: no older one would do better."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; the checkpoint is corrupted")


def read_resumable(checkpoint: Path) -> Resumable:
    """Verify `checkpoint` and read every file of it, checking each value's type and range.

    Raises `CheckpointError` on the first problem (a wrong type, a negative or mismatched step,
    an RNG state of the wrong size, optimizer state naming parameters that do not exist,
    non-finite weights), before anything is applied to a live run.
    """
    manifest = verify(checkpoint)
    path = checkpoint

    def load_json(name: str) -> Any:
        try:
            return read_json(path, name)
        except (OSError, ValueError) as error:
            raise _bad(path, f"{name} is not JSON ({type(error).__name__})") from None

    def load(name: str) -> dict[str, torch.Tensor]:
        try:
            return load_tensors(path, name)
        except Exception as error:  # a file that passed its checksum but is not safetensors
            raise _bad(path, f"{name} is not a safetensors file ({type(error).__name__})") from None

    state, config = load_json("state.json"), load_json("config.json")
    if not isinstance(state, dict) or not isinstance(config, dict):
        raise _bad(path, "state.json or config.json is not a JSON object")
    step = state.get("global_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _bad(path, f"state.json global_step is {step!r}, not a whole number >= 0")
    if step != manifest.get("step") or path.name != f"step-{step:08d}":
        raise _bad(path, f"state.json says step {step}, its manifest or folder name another")
    for key in ("nonfinite_total", "nonfinite_in_a_row", "world_size"):
        value = state.get(key, 1)
        if not _is_int(value) or value < 0:
            raise _bad(path, f"state.json {key} is {value!r}, not a whole number >= 0")

    weights = load("weights.safetensors")
    _check_finite(path, "weights", weights)
    optimizer_tensors, optimizer_data = load("optimizer.safetensors"), load_json("optimizer.json")
    _check_finite(path, "optimizer state", optimizer_tensors)
    groups = optimizer_data.get("param_groups") if isinstance(optimizer_data, dict) else None
    scalars = optimizer_data.get("scalars") if isinstance(optimizer_data, dict) else None
    if not isinstance(groups, list) or not isinstance(scalars, dict):
        raise _bad(path, "optimizer.json lacks param_groups or scalars")
    indices: list[int] = []
    for group in groups:
        params = group.get("params") if isinstance(group, dict) else None
        if not isinstance(params, list) or not all(_is_int(i) for i in params):
            raise _bad(path, "optimizer.json param_groups are not lists of parameter indices")
        indices += params
    for key in [*optimizer_tensors, *(f"{k}.scalars" for k in scalars)]:
        index = key.split(".", 1)[0]
        if not index.isdigit() or int(index) not in indices:
            raise _bad(path, f"optimizer state {key!r} names no parameter of its param_groups")
    if len(indices) != len(weights):
        raise _bad(path, f"optimizer.json covers {len(indices)} parameters, the weights {len(weights)}")
    scheduler = load_json("scheduler.json")
    if scheduler is not None and not isinstance(scheduler, dict):
        raise _bad(path, "scheduler.json is neither a JSON object nor null")

    rng_tensors, rng_data = load("rng.safetensors"), load_json("rng.json")
    expected = torch.get_rng_state()
    cpu = rng_tensors.get("torch")
    if cpu is None or cpu.dtype != expected.dtype or cpu.shape != expected.shape:
        raise _bad(path, "rng.safetensors holds no CPU generator state of the right size")
    for name, tensor in rng_tensors.items():
        if name != "torch" and (
            not re.fullmatch(r"cuda\.\d+", name) or tensor.dtype != torch.uint8 or tensor.dim() != 1
        ):
            raise _bad(path, f"rng.safetensors holds {name!r}, not a generator state")
    if not isinstance(rng_data, dict) or not _valid_python_rng(rng_data.get("python")):
        raise _bad(path, "rng.json holds no valid Python generator state")
    if not _valid_numpy_rng(rng_data.get("numpy")):
        raise _bad(path, "rng.json holds no valid NumPy generator state")
    return Resumable(
        path, step, state, config, weights, optimizer_tensors, optimizer_data, scheduler, rng_tensors, rng_data
    )


def _words(values: Any, count: int) -> bool:
    return isinstance(values, list) and len(values) == count and all(_is_int(v) and 0 <= v < 2**32 for v in values)


def _valid_python_rng(value: Any) -> bool:
    if not isinstance(value, list) or len(value) != 3:
        return False
    version, internal, gauss = value
    return _is_int(version) and _words(internal, 625) and (gauss is None or isinstance(gauss, float))


def _valid_numpy_rng(value: Any) -> bool:
    if not isinstance(value, list) or len(value) != 5:
        return False
    kind, keys, pos, has_gauss, cached = value
    return (
        kind == "MT19937"
        and _words(keys, 624)
        and _is_int(pos)
        and 0 <= pos <= 624
        and has_gauss in (0, 1)
        and isinstance(cached, float)
        and math.isfinite(cached)
    )


def open_resumable(source: str | Path, accept: Any = None) -> Resumable:
    """The newest checkpoint of run directory `source` that verifies, reads back valid and that
    `accept` (a callable raising `CheckpointError`, say a same-run check) takes.

    Each checkpoint skipped is one warning line naming it and why. A `DifferentRunError` from
    `accept` stops the search (an older checkpoint of the same run would not do better).
    A checkpoint folder given directly is used alone.
    """
    source = Path(source)
    if (source / MANIFEST).exists():
        loaded = read_resumable(source)
        if accept is not None:
            accept(loaded)
        return loaded
    for damaged in without_manifest(source):
        log.warning("%s has no %s (deleted, or damaged by a crash); ignoring it", damaged, MANIFEST)
    candidates = list(reversed(list_checkpoints(source)))
    for index, candidate in enumerate(candidates):
        try:
            loaded = read_resumable(candidate)
            if accept is not None:
                accept(loaded)
            return loaded
        except DifferentRunError:
            raise
        except CheckpointError as error:
            if index + 1 < len(candidates):
                log.warning("%s is corrupted; resuming from the older %s (%s)", candidate, candidates[index + 1], error)
            else:
                log.warning("%s is corrupted (%s); no older checkpoint to resume from", candidate, error)
    raise CheckpointError(f"{source}: no complete checkpoint to resume from")


def check_optimizer_shapes(loaded: Resumable, parameters: Sequence[torch.Tensor]) -> None:
    """Raise `CheckpointError` when optimizer state does not fit `parameters` (the Trainer's list).

    Per-parameter state that is not a scalar (Adam's moments, SGD's momentum, ...) has its
    parameter's shape; ``load_state_dict`` does not check that, and the first optimizer step
    would fail mid-training instead.
    """
    for key, tensor in loaded.optimizer_tensors.items():
        index = int(key.split(".", 1)[0])
        if index >= len(parameters):
            raise _bad(loaded.path, f"optimizer state {key!r} names parameter {index} of {len(parameters)}")
        if tensor.dim() > 0 and tensor.shape != parameters[index].shape:
            raise _bad(
                loaded.path,
                f"optimizer state {key!r} has shape {tuple(tensor.shape)}, "
                f"its parameter {tuple(parameters[index].shape)}",
            )


# --- may this run resume? -------------------------------------------------------------------------

# Settings that may change between an interrupted run and its resume.
RESUMABLE_CHANGES = frozenset(
    {
        "training_steps",
        "output_dir",
        "checkpoint_every",
        "eval_every",
        "samples_every",
        "samples_per_step",
        "keep_checkpoints",
        "max_nonfinite_in_a_row",
        "parallelism",  # the same checkpoint format and updates either way
    }
)


def check_same_run(mine: Mapping[str, Any], saved: Mapping[str, Any], checkpoint: Path) -> None:
    """Raise `DifferentRunError` unless `saved` (a checkpoint's config) is `mine` up to the
    settings a resume may change (`RESUMABLE_CHANGES`) and the callbacks."""

    def comparable(config: Mapping[str, Any]) -> dict[str, Any]:
        data = {k: v for k, v in config.items() if k != "callbacks"}
        training = config.get("training", {})
        data["training"] = {
            k: v
            for k, v in (dict(training) if isinstance(training, Mapping) else {}).items()
            if k not in RESUMABLE_CHANGES
        }
        return data

    ours, theirs = comparable(mine), comparable(saved)
    if ours != theirs:
        differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise DifferentRunError(
            f"{checkpoint}: written by a run with a different configuration "
            f"(differs in: {', '.join(differing)}); resume with that run's config"
        )


def resume_problem(run_dir: str | Path) -> str | None:
    """Why `run_dir` cannot resume from a checkpoint, or None when one verifies.

    A run directory with no checkpoint at all is not a problem (the run starts again at step
    0); one whose every checkpoint fails its checksum is.
    """
    found = list_checkpoints(run_dir)
    if not found or latest_checkpoint(run_dir) is not None:
        return None
    try:
        verify(found[-1])
    except CheckpointError as error:
        return f"every checkpoint is corrupted ({error})"
    return None
