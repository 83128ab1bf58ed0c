"""The fleet run's record of what is done: ``DIR/manifest.json``, one entry per input bag.

Each entry says which input it was (and its :func:`~.inputs.fingerprint`), under which settings
and model (:func:`config_fingerprint`), whether the replay completed, and the outputs it left
with their sizes. ``--resume`` replays a bag again unless :meth:`Manifest.complete` finds all of
that still true, so a bag that failed, changed, was replayed with other settings or lost an
output is redone, and nothing else is. The file is rewritten whole after each bag, atomically:
a run killed at any moment leaves the previous manifest or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..runtime.tensorrt.cache import file_sha256
from .inputs import tree_size

#: The manifest's file name in the output folder.
MANIFEST = "manifest.json"
#: What the file says it is, and its layout's version (a newer one is refused, not misread).
FORMAT = "segfast-fleet-manifest"
VERSION = 1
#: An entry's possible ``status``.
STATUSES: tuple[str, ...] = ("done", "failed")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file and what to do."""


@dataclass
class BagEntry:
    """What the fleet run did with one input bag.

    Attributes:
        name: the bag's output name (:attr:`~.inputs.BagInput.name`).
        input: the input path.
        fingerprint: the input's :func:`~.inputs.fingerprint` when it was replayed.
        config: the :func:`config_fingerprint` of the run that replayed it.
        status: ``"done"`` (the replay completed) or ``"failed"`` (an error; the outputs hold
            what was processed before it).
        outputs: kind (``"bag"``, ``"coco"``, ``"summary"``, ``"frames"``) ->
            ``{"path": relative to DIR, "size": bytes}`` (:func:`output_entry`).
        frames: frames processed.
        instances: instances found in them.
        wall_s: seconds the bag took, start to finish.
        worker: who replayed it, e.g. ``"worker 1 (pid 1234 on 10.0.0.2)"``.
        attempts: how many tries it took (retries included).
        error: why it failed (None when done).
        finished: when it was recorded, ISO 8601 UTC (:meth:`Manifest.record` fills it in).
    """

    name: str
    input: str
    fingerprint: str
    config: str
    status: str
    outputs: dict[str, dict] = field(default_factory=dict)
    frames: int = 0
    instances: int = 0
    wall_s: float = 0.0
    worker: str = ""
    attempts: int = 1
    error: str | None = None
    finished: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> BagEntry:
        """An entry from :meth:`to_json`'s dict; unknown keys (from a newer run) are ignored.

        Raises:
            ManifestError: not a dict, a required key missing, a value of the wrong type, or
                an unknown status; the message names the entry and the key.
        """
        if not isinstance(d, Mapping):
            raise ManifestError(f"an entry is a {type(d).__name__}, expected an object")
        label = f"entry {d.get('name')!r}"
        values = {}
        for f in fields(cls):
            if f.name not in d:
                if f.default is MISSING and f.default_factory is MISSING:  # required
                    raise ManifestError(f"{label} has no {f.name!r}")
                continue
            value, kinds = d[f.name], _TYPES[f.name]
            if not isinstance(value, kinds) or isinstance(value, bool):
                expected = " or ".join(_JSON_NAMES.get(k, "null") for k in kinds)
                raise ManifestError(f"{label}: {f.name!r} is {value!r}, expected {expected}")
            values[f.name] = float(value) if f.name == "wall_s" else value
        if values["status"] not in STATUSES:
            status = values["status"]
            raise ManifestError(f"{label}: status {status!r}, expected one of {STATUSES}")
        for kind, out in values.get("outputs", {}).items():
            if not (isinstance(out, Mapping) and isinstance(out.get("path"), str)) or (
                type(out.get("size")) is not int
            ):
                raise ManifestError(
                    f'{label}: output {kind!r} is {out!r}, expected {{"path": ..., "size": bytes}}'
                )
        return cls(**values)


#: The JSON types each field accepts (bools are refused everywhere: none is a flag).
_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("name", "input", "fingerprint", "config", "status", "worker"), (str,)),
    **dict.fromkeys(("frames", "instances", "attempts"), (int,)),
    "outputs": (dict,),
    "wall_s": (int, float),
    "error": (str, type(None)),
    "finished": (str,),
}
_JSON_NAMES = {str: "a string", dict: "an object", int: "an integer", float: "a number"}


class Manifest:
    """The entries of ``out_dir/manifest.json``, by bag name; :meth:`record` saves each one.

    Args:
        out_dir: the fleet run's output folder.
        entries: the entries to start from (default: none).
    """

    def __init__(self, out_dir: Path, entries: dict[str, BagEntry] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST
        self.entries: dict[str, BagEntry] = dict(entries or {})
        self._lock = threading.Lock()

    @classmethod
    def load(cls, out_dir: Path) -> Manifest:
        """The manifest in ``out_dir``; empty when there is none yet.

        Raises:
            ManifestError: the file is not JSON, not a manifest, from a newer version, or has
                a malformed entry; the message names the file and says to delete it (every
                bag is then replayed again) or to use a fresh ``--out`` folder.
        """
        manifest = cls(out_dir)
        try:
            manifest.entries = _read_entries(manifest.path)
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError, ManifestError) as err:
            raise ManifestError(
                f"cannot read the fleet manifest {manifest.path}: {err}. Delete it to replay "
                "every bag again, or use a fresh --out folder"
            ) from err
        return manifest

    def record(self, entry: BagEntry) -> None:
        """Set ``entry`` (replacing the bag's previous one) and :meth:`save`; ``finished`` is
        set to now when empty."""
        if not entry.finished:
            entry.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._lock:
            self.entries[entry.name] = entry
        self.save()

    def save(self) -> None:
        """Write ``manifest.json`` atomically: ``manifest.json.tmp``, flushed and synced to
        disk, then renamed over the old one (a reader never sees half a file)."""
        with self._lock:
            data = {
                "format": FORMAT,
                "version": VERSION,
                "entries": {n: self.entries[n].to_json() for n in sorted(self.entries)},
            }
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(MANIFEST + ".tmp")
            with tmp.open("w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _sync_folder(self.out_dir)

    def complete(self, name: str, fingerprint: str, config: str) -> tuple[bool, str]:
        """Whether bag ``name`` is done and need not be replayed again, and if not, why.

        True only when its entry is ``"done"``, was made from the same input (``fingerprint``)
        under the same settings and model (``config``), and every output it lists is there
        with its recorded size. The reason is in words, for the log: ``"not replayed yet"``,
        ``"failed last time: <error>"``, ``"the input changed"``, ``"the settings or model
        changed"``, ``"output bags/x is missing"``, ``"output bags/x size differs (...)"``.
        """
        entry = self.entries.get(name)
        if entry is None:
            return False, "not replayed yet"
        if entry.status != "done":
            return False, f"failed last time: {entry.error or 'no error recorded'}"
        if entry.fingerprint != fingerprint:
            return False, "the input changed"
        if entry.config != config:
            return False, "the settings or model changed"
        for out in entry.outputs.values():
            path = self.out_dir / out["path"]
            if not path.exists():
                return False, f"output {out['path']} is missing"
            size = tree_size(path)
            if size != out["size"]:
                return False, (
                    f"output {out['path']} size differs ({size} bytes, {out['size']} recorded)"
                )
        return True, "done"


def _read_entries(path: Path) -> dict[str, BagEntry]:
    """The entries of manifest file ``path``.

    Raises:
        ManifestError: what is wrong with it (:meth:`Manifest.load` adds the file's name).
        OSError: it cannot be read.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"not JSON ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f'not a fleet manifest (no "format": {FORMAT!r})')
    if data.get("version") != VERSION:
        raise ManifestError(f"version {data.get('version')!r}, this segfast reads {VERSION}")
    if not isinstance(data.get("entries"), dict):
        raise ManifestError('"entries" is not an object of entries by name')
    entries = {name: BagEntry.from_json(raw) for name, raw in data["entries"].items()}
    for name, entry in entries.items():
        if entry.name != name:
            raise ManifestError(f"entry {name!r} is named {entry.name!r}")
    return entries


def _sync_folder(folder: Path) -> None:
    """Sync a folder's entries to disk, so that a rename in it survives a power cut (POSIX; a
    no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def config_fingerprint(settings: Mapping[str, Any], files: Sequence[Path]) -> str:
    """A fingerprint of what decides a bag's results besides the bag (hex SHA-256).

    Hashes the JSON of ``settings`` (sorted keys; values JSON does not know, as paths, by
    ``str``) and the full content of each of ``files`` in order (the model's ONNX files with
    their external data, a prompts file...): a moved model folder keeps its fingerprint, a
    retrained model does not. A path that is not a file hashes as its path.
    """
    digest = hashlib.sha256(b"segfast-fleet-config-1\0")
    digest.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for path in files:
        path = Path(path)
        part = f"file {file_sha256(path)}" if path.is_file() else f"missing {path}"
        digest.update(f"\0{part}".encode())
    return digest.hexdigest()


def output_entry(out_dir: Path, path: Path) -> dict:
    """An output for :attr:`BagEntry.outputs`: ``{"path": relative to out_dir, "size": bytes}``
    (a folder's size is the sum over its files).

    Raises:
        ValueError: ``path`` is not inside ``out_dir``.
        FileNotFoundError: ``path`` does not exist.
    """
    out_dir, path = Path(out_dir).absolute(), Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"output {path} does not exist; cannot record it")
    try:
        rel = path.relative_to(out_dir)
    except ValueError as err:
        raise ValueError(f"output {path} is not inside the output folder {out_dir}") from err
    return {"path": rel.as_posix(), "size": tree_size(path)}
