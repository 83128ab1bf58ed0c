"""The bags of a fleet run: what ``segfast replay-many INPUTS...`` names, found, named and
fingerprinted.

An input is a bag (a rosbag2 folder, or a lone ``.mcap`` / ``.db3`` file), a folder of bags
searched recursively, or a text file listing any of these. Each bag gets a unique output name
(:func:`collect_inputs`), a frame count from its ``metadata.yaml`` for the progress bar
(:func:`frame_count`) and a content fingerprint that says on ``--resume`` whether it changed
since it was replayed (:func:`fingerprint`). Nothing here opens a bag's data: a bag whose data
is corrupt is still an input, and fails alone when it is replayed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..replay.bags import IMAGE_TYPES

#: The file that makes a folder a rosbag2 bag.
METADATA = "metadata.yaml"
#: Suffixes of a bag stored as one file (rosbags reads them without ``metadata.yaml``).
BAG_FILES: tuple[str, ...] = (".mcap", ".db3")
#: What an input may be, for the error messages.
EXPECTED = (
    "expected a rosbag2 folder (with metadata.yaml), a .mcap or .db3 file, a folder of bags, "
    "or a text file listing them"
)
#: How much of each end of a file :func:`fingerprint` reads.
EDGE = 1 << 20
#: Longest output name in characters; longer ones are cut and keep a hash of the path.
MAX_NAME = 150


class InputError(ValueError):
    """An input that is not a bag, holds none, or cannot be read; the message names it and
    says what was expected."""


@dataclass(frozen=True)
class BagInput:
    """One bag to replay.

    Attributes:
        path: the bag, absolute: a rosbag2 folder or a lone ``.mcap`` / ``.db3`` file.
        name: its unique output name (``DIR/bags/<name>``, ``DIR/coco/<name>.json``...): safe
            as a file name, and the same for the same inputs on every run.
        size: bytes of its files (a folder: the sum over everything in it).
    """

    path: Path
    name: str
    size: int


def collect_inputs(items: Sequence[str | Path]) -> list[BagInput]:
    """The bags that ``items`` (INPUTS as given on the command line) name, in the order found.

    An item is a bag, a folder searched recursively for bags (a folder holding
    ``metadata.yaml`` is a bag and is not searched further; ``.mcap`` and ``.db3`` files in
    other folders are bags; hidden entries are skipped), or a text file listing items, one per
    line: blank lines and ``#`` comments (a whole line, or after a space) are ignored, ``~`` is
    expanded and relative paths are relative to the list file's folder. A bag reached twice
    (same resolved path) is taken once.

    Names are the bag's folder name or file stem. Bags that would share a name (compared
    without case, as macOS and Windows do) take as many parent folder names, joined with
    ``__``, as it takes to tell them apart: ``run1/bag`` and ``run2/bag`` become
    ``run1__bag`` and ``run2__bag``.

    Raises:
        InputError: nothing given, a path that does not exist, a folder with no bag in it, a
            list file that lists nothing or is not text, a ROS 1 ``.bag`` or a sqlite3 side file
            (``.db3-wal``).
    """
    if not items:
        raise InputError(f"no inputs given; {EXPECTED}")
    found: dict[Path, Path] = {}  # resolved -> absolute as given
    lists: set[Path] = set()
    for item in items:
        for bag in _expand(Path(item).expanduser(), "", lists):
            found.setdefault(bag.resolve(), bag)
    paths = list(found.values())
    names = unique_names(paths)
    return [BagInput(p, n, tree_size(p)) for p, n in zip(paths, names, strict=True)]


def _expand(path: Path, where: str, lists: set[Path]) -> Iterator[Path]:
    """The bags ``path`` names; ``where`` says where it was given (for the error messages) and
    ``lists`` holds the list files read so far (a list read twice adds nothing)."""
    path = Path(os.path.abspath(path))
    if not path.exists():
        raise InputError(f"input {path}{where} does not exist; {EXPECTED}")
    if path.is_dir():
        bags = [path] if is_bag_folder(path) else list(_search(path))
        if not bags:
            held = sorted(p.name for p in path.iterdir())[:8]
            raise InputError(
                f"input folder {path}{where} holds no bag: no folder with {METADATA} and no "
                f"{' or '.join(BAG_FILES)} file in it or below (it holds {held or 'nothing'}); "
                f"{EXPECTED}"
            )
        yield from bags
    elif path.suffix in BAG_FILES:
        yield path
    elif path.name == METADATA:
        yield path.parent  # `replay-many bag/metadata.yaml` means the bag
    elif ".db3-" in path.name:
        raise InputError(
            f"input {path}{where} is part of a sqlite3 bag, not a bag; pass its folder "
            f"({path.parent}) instead"
        )
    elif path.suffix == ".bag":
        raise InputError(
            f"input {path}{where} is a ROS 1 bag; convert it to rosbag2 first "
            "(`rosbags-convert --src BAG --dst FOLDER`)"
        )
    else:
        yield from _read_list(path, where, lists)


def _read_list(path: Path, where: str, lists: set[Path]) -> Iterator[Path]:
    """The bags a list file names (see :func:`collect_inputs`)."""
    if path.resolve() in lists:
        return
    lists.add(path.resolve())
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(
            f"input {path}{where} is neither a bag nor a readable text list of bags ({err}); "
            f"{EXPECTED}"
        ) from err
    lines = [re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip() for line in text.splitlines()]
    for number, entry in enumerate(lines, 1):
        if entry:
            where = f" (line {number} of list {path})"
            yield from _expand(path.parent / Path(entry).expanduser(), where, lists)
    if not any(lines):
        raise InputError(
            f"list file {path}{where} lists no bag (only blank lines and comments); expected "
            "one bag, folder of bags or list file per line"
        )


def is_bag_folder(path: Path) -> bool:
    """Whether ``path`` is a rosbag2 folder: it holds ``metadata.yaml`` (whatever its data)."""
    return (path / METADATA).is_file()


def _search(folder: Path, seen: set[Path] | None = None) -> Iterator[Path]:
    """Bags in and below ``folder`` (not itself a bag), depth first in name order; hidden
    entries skipped, symbolic links followed, each real folder visited once."""
    seen = set() if seen is None else seen
    if folder.resolve() in seen:
        return
    seen.add(folder.resolve())
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return  # an unreadable folder below the input: it holds nothing we can use
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from [entry] if is_bag_folder(entry) else _search(entry, seen)
        elif entry.suffix in BAG_FILES and entry.is_file():
            yield entry


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Output names for the bags at ``paths`` (absolute): each one's folder name or file stem,
    with parent folder names joined by ``__`` in front where names would clash."""
    chains = [
        [safe_name(p.stem if p.is_file() else p.name)]
        + [safe_name(a.name) for a in p.parents if a.name]
        for p in paths
    ]
    full = [[n.casefold() for n in chain] for chain in chains]
    depth = [1] * len(paths)
    while True:
        names = ["__".join(reversed(c[:d])) for c, d in zip(chains, depth, strict=True)]
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name.casefold(), []).append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        deeper = [  # a parent helps only those whose folders differ somewhere
            i
            for g in clashes
            for i in g
            if depth[i] < len(chains[i]) and any(full[j] != full[i] for j in g)
        ]
        if not deeper:
            break
        for i in deeper:
            depth[i] += 1
    for group in clashes:  # the same folders all the way up (a.mcap beside a/): numbered
        for number, i in enumerate(group[1:], 2):
            names[i] += f"__{number}"
    return [_short(n, p) for n, p in zip(names, paths, strict=True)]


def safe_name(text: str) -> str:
    """``text`` as a file name: characters other than letters, digits, ``.``, ``-`` and ``_``
    become ``_``, and no leading dot (never empty)."""
    return re.sub(r"[^\w.-]", "_", text).lstrip(".") or "bag"


def _short(name: str, path: Path) -> str:
    """``name`` cut to :data:`MAX_NAME` characters, ending in a hash of ``path`` when cut."""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    return f"{name[-(MAX_NAME - 12) :].lstrip('._')}__{digest}"


def bag_files(bag: Path) -> list[Path]:
    """The files of a bag: itself when a file, else everything below the folder, by name."""
    if bag.is_file():
        return [bag]
    return sorted(p for p in bag.rglob("*") if p.is_file())


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file below a folder (0 for a path that is gone)."""
    try:
        return sum(p.stat().st_size for p in bag_files(path))
    except OSError:
        return 0


def frame_count(bag: Path, topic: str | None) -> int | None:
    """Messages on the image topic, per the bag's ``metadata.yaml``; for the progress bar.

    ``topic`` given: that topic's count; None: the count of the bag's only
    ``sensor_msgs/msg/Image`` or ``CompressedImage`` topic. None when unknown: a lone bag file,
    no or unreadable metadata, several or no image topics, the topic absent. Never raises.
    """
    try:
        meta = yaml.safe_load((Path(bag) / METADATA).read_text(encoding="utf-8"))
        topics = meta["rosbag2_bagfile_information"]["topics_with_message_count"]
        counts = {
            t["topic_metadata"]["name"]: (t["topic_metadata"]["type"], t["message_count"])
            for t in topics
        }
    except Exception:  # missing file, bad YAML, another shape: all just "unknown"
        return None
    if topic is None:
        images = [count for kind, count in counts.values() if kind in IMAGE_TYPES]
        found: Any = images[0] if len(images) == 1 else None
    else:
        found = counts.get(topic, (None, None))[1]
    return found if isinstance(found, int) and not isinstance(found, bool) else None


def fingerprint(bag: Path) -> str:
    """A content fingerprint of a bag, cheap for huge bags (hex SHA-256).

    Hashes each file's name relative to the bag, its size, and its first and last MiB (all of
    it when smaller): reads at most 2 MiB per file. It changes when a file is added, removed,
    renamed, re-recorded, truncated or appended to; an edit inside the middle of a large file
    that keeps its size goes unnoticed (rosbag2 never writes such a thing).

    Raises:
        InputError: the bag or one of its files cannot be read.
    """
    bag = Path(bag)
    if not bag.exists():
        raise InputError(f"cannot read input bag {bag} to fingerprint it: it does not exist")
    digest = hashlib.sha256(b"segfast-fleet-fingerprint-1\0")
    try:
        for file in bag_files(bag):
            rel = file.name if file == bag else file.relative_to(bag).as_posix()
            with file.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                digest.update(f"{rel}\0{size}\0".encode())
                digest.update(f.read(EDGE if size > 2 * EDGE else size))
                if size > 2 * EDGE:
                    f.seek(size - EDGE)
                    digest.update(f.read(EDGE))
    except OSError as err:
        raise InputError(f"cannot read input bag {bag} to fingerprint it: {err}") from err
    return digest.hexdigest()
