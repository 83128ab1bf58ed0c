"""Scripted prompts for the replay: what a planner would ask, at given bag times.

A YAML file lists the calls. SegAny calls (``srv/Segment.srv``)::

    prompts:
      - time: 1.5                 # seconds from the start of the bag
        points: [[320, 240], [400, 260]]
        labels: [1, 0]            # 1 foreground, 0 background (default: all 1)
        multimask: true
      - stamp: 1700000000500000000  # or: the header stamp (ns) of the frame to use
        boxes: [[100, 80, 220, 200], [300, 90, 420, 210]]
      - time: 4.0
        points: [[10, 10], [50, 60]]
        points_per_set: 1         # two point prompts in one batch

Prompted targets (``srv/Track.srv``), followed on every processed frame after they are added::

      - time: 0.0
        boxes: [[40, 30, 120, 110], [200, 50, 260, 140]]
        track: true               # ADD: one new target per prompt set (IDs 1, 2, ... in order)
      - time: 2.5
        points: [[90, 70]]
        track: [1]                # ADD with ids: prompt target 1 again (one ID per prompt set)
      - time: 6.0
        untrack: [2]              # REMOVE targets 2
      - stamp: 1700000009000000000
        untrack: all              # CLEAR every target

Target IDs are given in the order targets are added, from 1, and are never reused while a
target holds them, so a file can name the targets its earlier entries added. A ``track`` entry
takes ``points``/``labels``/``points_per_set``/``boxes`` exactly as a SegAny call, but not
``multimask`` (a target follows one mask); an ``untrack`` entry takes no prompt.

A ``time`` call is answered from the latest processed frame at or before that bag time, as the
node answers a request for the latest frame; a ``stamp`` call from the frame with that header
stamp, as the node answers ``Segment.stamp`` / ``Track.stamp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: What a prompts file entry does: a SegAny call, or Track.srv's ADD, REMOVE and CLEAR.
SEGMENT, TRACK, UNTRACK, UNTRACK_ALL = "segment", "track", "untrack", "untrack all"

_PROMPT_FIELDS = {"points", "labels", "points_per_set", "boxes"}
_FIELDS = {"time", "stamp", "multimask", "name", "track", "untrack", *_PROMPT_FIELDS}
#: Target IDs fit a mono16 label image.
_MAX_TARGET_ID = 65535


class PromptFileError(ValueError):
    """A prompts file that cannot be read; the message names the entry and the field."""


@dataclass(frozen=True)
class ScriptedPrompt:
    """One call of a prompts file: a SegAny call, or a target added, prompted again or removed.

    Attributes:
        index: position in the file (0-based).
        name: a label for reports (default ``prompt <index>``).
        time_ns: bag time offset from the bag's start, or None.
        stamp_ns: header stamp of the frame to use, or None.
        points: ``(N, 2)`` pixels; labels ``(N,)``.
        boxes: ``(M, 4)`` XYXY pixels.
        points_per_set: as ``Segment.points_per_set``.
        multimask: three masks per set.
        action: :data:`SEGMENT`, :data:`TRACK` (add targets, or prompt ``ids`` again),
            :data:`UNTRACK` (remove ``ids``) or :data:`UNTRACK_ALL`.
        ids: the target IDs a ``track: [ids]`` or ``untrack: [ids]`` entry names.
    """

    index: int
    name: str
    time_ns: int | None
    stamp_ns: int | None
    points: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    boxes: np.ndarray = field(repr=False)
    points_per_set: int = 0
    multimask: bool = False
    action: str = SEGMENT
    ids: tuple[int, ...] = ()


def _numbers(entry: dict, key: str, where: str, width: int | None) -> np.ndarray:
    value = entry.get(key, [])
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptFileError(f"{where}: {key} must be numbers, got {value!r}") from None
    if width is not None:
        if arr.size and (arr.ndim != 2 or arr.shape[1] != width):
            shape = "[[x, y], ...]" if width == 2 else "[[x1, y1, x2, y2], ...]"
            raise PromptFileError(f"{where}: {key} must be a list like {shape}, got {value!r}")
        arr = arr.reshape(-1, width)
    return arr


def _when(entry: dict, where: str) -> tuple[int | None, int | None]:
    """``(time_ns, stamp_ns)``: exactly one is set."""
    if ("time" in entry) == ("stamp" in entry):
        raise PromptFileError(
            f"{where}: give exactly one of time (seconds from the bag start) or stamp "
            "(header stamp in nanoseconds)"
        )
    if "time" in entry:
        t = entry["time"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise PromptFileError(f"{where}: time must be a number of seconds, got {t!r}")
        if t < 0:
            raise PromptFileError(f"{where}: time must be >= 0 s, got {t}")
        return round(t * 1e9), None
    s = entry["stamp"]
    if isinstance(s, bool) or not isinstance(s, int) or s < 0:
        raise PromptFileError(f"{where}: stamp must be integer nanoseconds, got {s!r}")
    return None, s


def _target_ids(value: Any, where: str, key: str) -> tuple[int, ...]:
    """A non-empty list of target IDs (integers in [1, 65535]), duplicates refused."""
    ok = isinstance(value, list) and value
    ok = ok and all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _MAX_TARGET_ID for v in value
    )
    if not ok or len(set(value)) != len(value):
        raise PromptFileError(
            f"{where}: {key} must be {'true or ' if key == 'track' else ''}a non-empty list of "
            f"distinct target IDs (integers 1..{_MAX_TARGET_ID}), got {value!r}"
        )
    return tuple(value)


def _action(entry: dict, where: str) -> tuple[str, tuple[int, ...]]:
    """What the entry does (:data:`SEGMENT`, :data:`TRACK`, ...) and the IDs it names."""
    track, untrack = entry.get("track", False), entry.get("untrack")
    if "untrack" in entry:
        given = sorted((_PROMPT_FIELDS | {"track", "multimask"}) & set(entry))
        if given:
            raise PromptFileError(
                f"{where}: an untrack entry takes no {', '.join(given)} (it only removes targets)"
            )
        if untrack == "all":
            return UNTRACK_ALL, ()
        if not isinstance(untrack, list):
            raise PromptFileError(
                f"{where}: untrack must be a list of target IDs or 'all', got {untrack!r}"
            )
        return UNTRACK, _target_ids(untrack, where, "untrack")
    if track is False:
        return SEGMENT, ()
    ids = () if track is True else _target_ids(track, where, "track")
    if "multimask" in entry:
        raise PromptFileError(
            f"{where}: a track entry takes no multimask (a target follows one mask per prompt set)"
        )
    if not {"points", "boxes"} & set(entry):
        raise PromptFileError(f"{where}: a track entry needs points or boxes")
    return TRACK, ids


def _entry(entry: Any, i: int, source: str) -> ScriptedPrompt:
    """One entry of the list, checked."""
    where = f"{source}: prompt {i}"
    if not isinstance(entry, dict):
        raise PromptFileError(f"{where}: expected a mapping, got {entry!r}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise PromptFileError(
            f"{where}: unknown field(s) {', '.join(unknown)}; accepted: {sorted(_FIELDS)}"
        )
    time_ns, stamp_ns = _when(entry, where)
    action, ids = _action(entry, where)
    points = _numbers(entry, "points", where, 2)
    labels = (
        _numbers(entry, "labels", where, None).reshape(-1)
        if "labels" in entry
        else np.ones(len(points))
    )
    per_set = entry.get("points_per_set", 0)
    if isinstance(per_set, bool) or not isinstance(per_set, int) or per_set < 0:
        raise PromptFileError(f"{where}: points_per_set must be an integer >= 0")
    multimask = entry.get("multimask", False)
    if not isinstance(multimask, bool):
        raise PromptFileError(f"{where}: multimask must be true or false, got {multimask!r}")
    return ScriptedPrompt(
        index=i,
        name=str(entry.get("name", f"prompt {i}")),
        time_ns=time_ns,
        stamp_ns=stamp_ns,
        points=points,
        labels=labels,
        boxes=_numbers(entry, "boxes", where, 4),
        points_per_set=per_set,
        multimask=multimask,
        action=action,
        ids=ids,
    )


def parse_prompts(data: Any, source: str = "prompts") -> list[ScriptedPrompt]:
    """Prompts from parsed YAML (``{"prompts": [...]}`` or a bare list).

    Only the file's structure is checked here; the values (NaN, out-of-image, unknown target
    IDs, too many targets) are checked against the frame and the targets when the call is
    answered, and a bad one fails that call alone.

    Raises:
        PromptFileError: not a list of mappings, unknown fields, neither or both of
            ``time``/``stamp``, negative times, arrays of the wrong shape, or ``track`` /
            ``untrack`` entries that are not as the module docstring shows.
    """
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise PromptFileError(f"{source}: expected a list under 'prompts:', got {items!r}")
    return [_entry(entry, i, source) for i, entry in enumerate(items)]


def load_prompts(path: str | Path) -> list[ScriptedPrompt]:
    """Read a prompts YAML file (see the module docstring).

    Raises:
        PromptFileError: a missing or unparsable file, or see :func:`parse_prompts`.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompts file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PromptFileError(f"prompts file {path} is not valid YAML: {err}") from None
    return parse_prompts(data, str(path))
