"""The run directory: its layout, its file formats, the one-writer lock, and confinement of writes.

A run directory is what ``astra train`` writes::

    RUN_DIR/
      .astra-run             marker: "this directory is an Astra run" (JSON: format, creation time)
      .astra.lock            the one-writer lock (fcntl.flock) and the holder's PID
      run.toml               the run file as given
      config.json            the resolved configuration
      metrics.jsonl          one JSON object per training step ({"step": N, ...}) and per evaluation
      samples.jsonl          training rollouts as text (one JSON object per record, with "step")
      checkpoints/step-N/    atomic checkpoints (see `astra_core.checkpoint`)
      eval/step-N.json|.md   periodic evaluations; eval/evaluation.json|.md from `astra evaluate`
      eval/transcripts.jsonl one JSON object per evaluation attempt (with "step" and "tester"; a
                             tester evaluated again at a step replaces its earlier records)
      tester/                the trained tester in its native format, renamed into place whole
      astra.log              tracebacks of plugin failures and warnings, for the record

Only a directory holding the marker is ever deleted (``--overwrite``), and every path a run
file or option names for writing goes through `RunDir.confine`, which refuses anything that
resolves outside the run directory. This module imports only the standard library and pydantic.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Annotated, Any

from pydantic import AfterValidator

from astra_core.errors import AstraError, ConfigError
from astra_core.graph import Graph, Node
from astra_core.types import JSON, json_safe

MARKER = ".astra-run"
MARKER_FORMAT = "astra-run/1"
LOCK = ".astra.lock"
RUN_FILE = "run.toml"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
TRANSCRIPTS = "transcripts.jsonl"
TESTER = "tester"
LOG = "astra.log"
# Names of half-written things (staging, pruning); removed by `RunDir.clean_partial`.
PARTIAL_PREFIX = ".tmp-"
# OSError numbers that mean the disk failed us (full, read-only, gone), not a bug.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


class RunLockedError(AstraError):
    """Another process is writing this run directory."""


def _inside_relative(value: str) -> str:
    if not value:
        raise ValueError("is empty; name a file inside the run directory")
    path = Path(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} is not a path inside the run directory (no absolute paths, no '..')")
    return value


RunRelativePath = Annotated[str, AfterValidator(_inside_relative)]
"""An options-model type for a file a component writes: relative, inside the run directory."""


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` holds the marker `astra train` writes (only such a directory may be replaced)."""
    return (Path(path) / MARKER).is_file()


class RunDir:
    """One run directory: where each file lives, how each is written and read.

    >>> run = RunDir("runs/example")
    >>> run.metrics_path.name, run.checkpoints.name
    ('metrics.jsonl', 'checkpoints')
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[str] | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- layout -------------------------------------------------------------------------------

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def samples_path(self) -> Path:
        return self.path / SAMPLES

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    @property
    def transcripts_path(self) -> Path:
        return self.eval_dir / TRANSCRIPTS

    @property
    def tester(self) -> Path:
        return self.path / TESTER

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    def is_run(self) -> bool:
        return is_run_dir(self.path)

    def confine(self, relative: str | Path, *, what: str = "path") -> Path:
        """`relative` resolved inside the run directory, or a one-line `ConfigError` naming `what`.

        Symbolic links are followed, so a link inside the run pointing out of it is refused too.
        """
        candidate = Path(relative)
        target = candidate if candidate.is_absolute() else self.path / candidate
        root = self.path.resolve()
        resolved = target.resolve()
        if resolved != root and root not in resolved.parents:
            raise ConfigError(
                f"{what} {str(relative)!r} resolves outside the run directory {self.path}; "
                f"name a path inside it (relative, without '..')"
            )
        return resolved

    # --- creation, marker, lock ---------------------------------------------------------------

    def create(self, *, config: Mapping[str, Any], run_text: str) -> None:
        """Make the directory (the caller holds the lock) and write marker, run file and config."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.marker, json.dumps({"format": MARKER_FORMAT, "created": time.time()}) + "\n")
        write_atomic(self.run_file, run_text)
        self.write_config(config)

    def write_config(self, config: Mapping[str, Any]) -> None:
        write_atomic(self.config_path, json.dumps(json_safe(config), indent=2, allow_nan=False) + "\n")

    def read_config(self) -> dict[str, Any] | None:
        data = _load_json(self.config_path)
        return data if isinstance(data, dict) else None

    def acquire(self) -> None:
        """Take the one-writer lock, or raise `RunLockedError` naming the holder's PID.

        The lock is an ``fcntl.flock`` on ``.astra.lock``: the operating system releases it when
        its holder dies however it dies, so a stale lock file never blocks. The directory must exist.
        """
        if self._lock is not None:
            return
        handle = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            self._flock(handle)
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def check_unlocked(self) -> None:
        """Raise `RunLockedError` if another process holds the lock; write nothing."""
        if self._lock is not None or not self.lock_path.is_file():
            return
        try:
            handle = open(self.lock_path, encoding="utf-8")  # noqa: SIM115 (closed below)
        except OSError:
            return
        with handle:
            self._flock(handle)  # released when the handle closes

    def _flock(self, handle: IO[str]) -> None:
        import fcntl

        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(
                f"{self.path}: another astra process (PID {holder}) is writing this run directory; "
                f"wait for it to finish or stop it, or pass --output DIR for a new run"
            ) from None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    @property
    def locked(self) -> bool:
        return self._lock is not None

    @contextlib.contextmanager
    def locked_for_writing(self) -> Iterator[RunDir]:
        """Hold the lock for the duration of the block."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def clear(self) -> list[str]:
        """Delete everything in a marked run directory except the lock (held by the caller).

        Returns the names deleted. Refuses a directory without the marker.
        """
        if not self.is_run():
            raise ConfigError(f"{self.path}: not marked as an astra run ({MARKER} missing); refusing to delete it")
        deleted = []
        for entry in sorted(self.path.iterdir()):
            if entry.name == LOCK:
                continue
            folder = entry.is_dir() and not entry.is_symlink()
            if folder:
                shutil.rmtree(entry)
            else:
                entry.unlink()
            deleted.append(entry.name + ("/" if folder else ""))
        return deleted

    def clean_partial(self) -> list[Path]:
        """Remove what a crash left half-written (staging and pruning folders); return them."""
        found = [p for p in (self.path, self.checkpoints) if p.is_dir()]
        removed = []
        for directory in found:
            for entry in directory.iterdir():
                if entry.name.startswith(PARTIAL_PREFIX):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed.append(entry)
        return removed

    # --- metrics ------------------------------------------------------------------------------

    def append_metrics(self, record: Mapping[str, Any], filename: str = METRICS) -> None:
        """Append one record (strict JSON: NaN and infinities become null) to the metrics file."""
        _append_lines(self.confine(filename, what="metrics file"), [record])

    def trim_metrics(self, last_step: int, filename: str = METRICS) -> None:
        """Keep only the records of steps up to `last_step` (what a resume starts after).

        Lines that are not this file's JSON objects (a line cut short by a crash) are dropped;
        the file is replaced atomically.
        """
        path = self.confine(filename, what="metrics file")
        if not path.exists():
            return
        kept = [
            record
            for record in read_jsonl(path)
            if isinstance(record.get("step", 0), int | float) and record.get("step", 0) <= last_step
        ]
        write_atomic(path, _json_lines(kept))

    def read_metrics(self, filename: str = METRICS) -> list[dict[str, Any]]:
        """The training records of the metrics file (evaluation records and torn lines skipped)."""
        return [
            r
            for r in read_jsonl(self.confine(filename, what="metrics file"))
            if not any(k.startswith("eval/") for k in r)
        ]

    # --- evaluations, transcripts, samples ----------------------------------------------------

    def write_evaluation(self, step: int, metrics: Mapping[str, Any], details: Any, markdown: str = "") -> Path:
        """``eval/step-N.json`` (and ``.md`` when there is markdown), each written atomically."""
        stem = self.eval_dir / f"step-{step:08d}"
        self.eval_dir.mkdir(parents=True, exist_ok=True)
        payload = {"step": step, "metrics": dict(metrics), "details": details}
        write_atomic(stem.with_suffix(".json"), json.dumps(json_safe(payload), indent=1, allow_nan=False))
        if markdown:
            write_atomic(stem.with_suffix(".md"), markdown)
        return stem.with_suffix(".json")

    def read_evaluations(self) -> dict[int, dict[str, Any]]:
        """The periodic evaluations by step: ``{step: {"metrics": ..., "details": ...}}``."""
        found: dict[int, dict[str, Any]] = {}
        for path in sorted(self.eval_dir.glob("step-*.json")):
            data = _load_json(path)
            if isinstance(data, dict) and isinstance(data.get("metrics"), dict) and isinstance(data.get("step"), int):
                found[data["step"]] = data
        return found

    @property
    def evaluation_path(self) -> Path:
        """``eval/evaluation.json``: what ``astra evaluate`` writes for a run."""
        return self.eval_dir / "evaluation.json"

    def read_final_evaluation(self) -> dict[str, Any] | None:
        data = _load_json(self.evaluation_path)
        return data if isinstance(data, dict) else None

    def record_transcripts(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Record an evaluation's transcripts in ``eval/transcripts.jsonl`` (`write_transcripts`).

        A record says at least which ``step`` and which ``tester`` ("base" or "trained") it is of.
        """
        self.eval_dir.mkdir(parents=True, exist_ok=True)
        write_transcripts(self.transcripts_path, records)

    def read_transcripts(self) -> list[dict[str, Any]]:
        return read_jsonl(self.transcripts_path)

    def append_samples(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append training rollouts as text, one JSON object each (with its ``step``), to samples.jsonl."""
        _append_lines(self.samples_path, records)

    def read_samples(self) -> list[dict[str, Any]]:
        return read_jsonl(self.samples_path)

    # --- the log ------------------------------------------------------------------------------

    def log(self, text: str) -> Path:
        """Append `text` (a warning, a traceback) to the run's log file, with a timestamp."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(f"--- {stamp} pid {os.getpid()}\n{text.rstrip()}\n")
        return self.log_path


# --- file formats -------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a fsynced temporary file renamed over it."""
    staging = path.with_name(f"{PARTIAL_PREFIX}{path.name}-{os.getpid()}")
    try:
        with staging.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            staging.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """A fresh staging folder beside `final`, renamed over it when the block succeeds.

    Whatever happens inside (a crash, a full disk, a signal), `final` is either the old folder
    or the complete new one; the staging folder is removed on failure, or by
    `RunDir.clean_partial` after a crash.
    """
    staging = final.parent / f"{PARTIAL_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
        if not staging.is_dir():
            raise OSError(errno.ENOENT, "nothing was saved", str(staging))
        replace_directory(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(new: Path, final: Path) -> None:
    """Rename folder `new` to `final`, replacing an existing `final` in one visible step."""
    if not final.exists():
        os.replace(new, final)
        return
    # rename() cannot replace a non-empty folder: move the old one aside under a partial name
    # so the new one still appears in a single rename, and move it back if that fails.
    aside = final.parent / f"{PARTIAL_PREFIX}replaced-{final.name}-{os.getpid()}"
    os.replace(final, aside)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def transcript_records(details: JSON, tester: str, step: int | None) -> list[dict[str, Any]]:
    """The transcript records of an evaluation: one per attempt of a report's `details` (a list of
    objects, each an attempt as its evaluator describes it), with ``tester`` and ``step`` added."""
    if not isinstance(details, list):
        return []
    return [{"tester": tester, "step": step, **d} for d in details if isinstance(d, dict)]


def sample_record(graph: Graph[Any, Any], step: int) -> dict[str, Any]:
    """A training rollout as text: ``step``, ``prompt`` and every turn, parents before children,
    each with its ``depth``, ``parent`` (index of the turn it follows; None at depth 1), ``probe``,
    ``response``, ``reward`` and ``scores``."""
    turns: list[dict[str, Any]] = []

    def visit(node: Node[Any, Any], depth: int, parent: int | None) -> None:
        here = len(turns)
        turns.append(
            {
                "depth": depth,
                "parent": parent,
                "probe": str(node.probe),
                "response": str(node.response),
                "reward": node.reward,
                "scores": dict(node.scores),
            }
        )
        for child in node.children:
            visit(child, depth + 1, here)

    for child in graph.children:
        visit(child, 1, None)
    return {"step": step, "prompt": str(graph.context), "turns": turns}


def write_transcripts(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Add an evaluation's transcript records to the JSON-lines file `path`, replacing the records
    of an earlier evaluation of the same tester at the same step (``astra evaluate`` run again, a
    resumed run evaluating a step again), so each attempt is in the file once and counting its
    lines counts attempts. Other records are kept; a file with records to replace is rewritten
    atomically, otherwise the new records are appended."""
    new = list(records)
    if not new:
        return
    evaluated = {(record.get("tester"), record.get("step")) for record in new}
    existing = read_jsonl(path)
    kept = [record for record in existing if (record.get("tester"), record.get("step")) not in evaluated]
    if len(kept) == len(existing):
        _append_lines(path, new)
    else:
        write_atomic(path, _json_lines(kept + new))


def _json_lines(records: Iterable[Mapping[str, Any]]) -> str:
    """One strict-JSON line per record (NaN and infinities as null)."""
    return "".join(json.dumps(json_safe(dict(r)), allow_nan=False) + "\n" for r in records)


def _append_lines(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    text = _json_lines(records)
    if not text:
        return
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a missing file is empty, torn lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe_os_error(error: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the reason of `error` and its errno name."""
    reason = error.strerror or str(error) or type(error).__name__
    name = errno.errorcode.get(error.errno) if isinstance(error.errno, int) else None
    return f"{reason} ({name})" if name else reason


def is_disk_error(error: BaseException) -> bool:
    """An OSError of a full, read-only or failing disk (not a bug)."""
    return isinstance(error, OSError) and error.errno in DISK_ERRNOS


__all__ = [
    "MARKER",
    "RunDir",
    "RunLockedError",
    "RunRelativePath",
    "describe_os_error",
    "is_disk_error",
    "is_run_dir",
    "read_jsonl",
    "replace_directory",
    "staged_directory",
    "write_atomic",
]
