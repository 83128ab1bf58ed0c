"""TensorRT engine cache: serialized engines next to a JSON sidecar holding their build key.

An engine is only valid for the exact ONNX file, TensorRT version, GPU (name and compute
capability), precision and optimization profile it was built with. The key holds all of them;
a lookup with any difference rebuilds (logging which fields changed), so an engine built on
another device or by another TensorRT is never deserialized. No tensorrt import here.

Files: ``<cache_dir>/<name>.engine`` and ``<cache_dir>/<name>.json`` (the key), where ``name``
is ``<onnx stem>.<precision>``; writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Bump when the way engines are built changes (e.g. the FP32 plan rules), so old caches go.
BUILD_RECIPE_VERSION = 1


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, plus its ONNX external-data sibling ``<file>.data`` if any."""
    digest = hashlib.sha256()
    path = Path(path)
    for part in (path, path.with_name(path.name + ".data")):
        if part.is_file():
            with part.open("rb") as f:
                while block := f.read(chunk):
                    digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on.

    Attributes:
        onnx_sha256: :func:`file_sha256` of the source ONNX file.
        tensorrt_version: ``tensorrt.__version__`` of the builder.
        gpu_name: CUDA device name (``cudaDeviceProp.name``), e.g. ``"Orin"``.
        compute_capability: ``"<major>.<minor>"`` (8.7 on every Jetson Orin).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        profile: the optimization profile (decoder: min/opt/max sets, max points), [] if none.
        recipe: :data:`BUILD_RECIPE_VERSION`.
    """

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: list[int] = field(default_factory=list)
    recipe: int = BUILD_RECIPE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def diff(self, other: dict[str, Any]) -> list[str]:
        """``"field: old -> new"`` for every field where ``other`` (a stored key) differs."""
        mine = self.to_dict()
        return [
            f"{k}: {other.get(k)!r} -> {v!r}"
            for k, v in mine.items()
            if other.get(k) != v and not (isinstance(v, list) and list(other.get(k) or []) == v)
        ]


@dataclass
class CacheLookup:
    """Result of :meth:`EngineCache.load`: the engine bytes, or why there are none."""

    engine: bytes | None
    reason: str


class EngineCache:
    """Engines in ``cache_dir`` by name, each valid only for its :class:`EngineKey`.

    Args:
        cache_dir: folder (created on first store).
        log: called with one line for every miss and rebuild reason.
    """

    def __init__(self, cache_dir: str | Path, log: Callable[[str], None] = print) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.log = log

    def paths(self, name: str) -> tuple[Path, Path]:
        """``(engine file, key sidecar)`` for ``name``."""
        return self.cache_dir / f"{name}.engine", self.cache_dir / f"{name}.json"

    def load(self, name: str, key: EngineKey) -> CacheLookup:
        """The cached engine bytes if the stored key equals ``key``, else why not (logged)."""
        engine_path, key_path = self.paths(name)
        if not engine_path.is_file() or not key_path.is_file():
            return self._miss(f"no cached engine {engine_path}")
        try:
            stored = json.loads(key_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return self._miss(f"unreadable key file {key_path} ({err}); rebuilding")
        if not isinstance(stored, dict):
            return self._miss(f"key file {key_path} is not a JSON object; rebuilding")
        changed = key.diff(stored)
        if changed:
            return self._miss(
                f"cached engine {engine_path} is stale ({'; '.join(changed)}); rebuilding"
            )
        data = engine_path.read_bytes()
        if not data:
            return self._miss(f"cached engine {engine_path} is empty; rebuilding")
        return CacheLookup(data, f"cached engine {engine_path}")

    def _miss(self, reason: str) -> CacheLookup:
        self.log(reason)
        return CacheLookup(None, reason)

    def store(self, name: str, key: EngineKey, engine: bytes) -> Path:
        """Write ``engine`` and its key atomically; returns the engine path."""
        if not engine:
            raise ValueError(f"refusing to cache an empty engine for {name!r}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        engine_path, key_path = self.paths(name)
        # The key is removed first and written last: a crash in between leaves no valid pair.
        key_path.unlink(missing_ok=True)
        _atomic_write(engine_path, engine)
        _atomic_write(
            key_path, (json.dumps(key.to_dict(), indent=2, sort_keys=True) + "\n").encode()
        )
        return engine_path

    def invalidate(self, name: str, reason: str) -> None:
        """Drop an entry that failed to deserialize (corrupt or foreign), logging ``reason``."""
        self.log(reason)
        for path in self.paths(name):
            path.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
