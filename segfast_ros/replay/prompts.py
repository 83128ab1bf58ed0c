"""Scripted SegAny prompts for the replay: what a planner would ask, at given bag times.

A YAML file lists the calls::

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

A ``time`` call is answered from the latest processed frame at or before that bag time, as the
node answers a request for the latest frame; a ``stamp`` call from the frame with that header
stamp, as the node answers ``Segment.stamp``. The fields are those of ``srv/Segment.srv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

_FIELDS = {"time", "stamp", "points", "labels", "points_per_set", "boxes", "multimask", "name"}


class PromptFileError(ValueError):
    """A prompts file that cannot be read; the message names the entry and the field."""


@dataclass(frozen=True)
class ScriptedPrompt:
    """One SegAny call of a prompts file.

    Attributes:
        index: position in the file (0-based).
        name: a label for reports (default ``prompt <index>``).
        time_ns: bag time offset from the bag's start, or None.
        stamp_ns: header stamp of the frame to use, or None.
        points: ``(N, 2)`` pixels; labels ``(N,)``.
        boxes: ``(M, 4)`` XYXY pixels.
        points_per_set: as ``Segment.points_per_set``.
        multimask: three masks per set.
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


def parse_prompts(data: Any, source: str = "prompts") -> list[ScriptedPrompt]:
    """Prompts from parsed YAML (``{"prompts": [...]}`` or a bare list).

    Only the file's structure is checked here; the values (NaN, out-of-image) are checked
    against the frame when the call is answered, and a bad one fails that call alone.

    Raises:
        PromptFileError: not a list of mappings, unknown fields, neither or both of
            ``time``/``stamp``, negative times, or arrays of the wrong shape.
    """
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise PromptFileError(f"{source}: expected a list under 'prompts:', got {items!r}")
    prompts = []
    for i, entry in enumerate(items):
        where = f"{source}: prompt {i}"
        if not isinstance(entry, dict):
            raise PromptFileError(f"{where}: expected a mapping, got {entry!r}")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise PromptFileError(
                f"{where}: unknown field(s) {', '.join(unknown)}; accepted: {sorted(_FIELDS)}"
            )
        if ("time" in entry) == ("stamp" in entry):
            raise PromptFileError(
                f"{where}: give exactly one of time (seconds from the bag start) or stamp "
                "(header stamp in nanoseconds)"
            )
        time_ns = stamp_ns = None
        if "time" in entry:
            t = entry["time"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise PromptFileError(f"{where}: time must be a number of seconds, got {t!r}")
            if t < 0:
                raise PromptFileError(f"{where}: time must be >= 0 s, got {t}")
            time_ns = round(t * 1e9)
        else:
            s = entry["stamp"]
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise PromptFileError(f"{where}: stamp must be integer nanoseconds, got {s!r}")
            stamp_ns = s
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
        prompts.append(
            ScriptedPrompt(
                index=i,
                name=str(entry.get("name", f"prompt {i}")),
                time_ns=time_ns,
                stamp_ns=stamp_ns,
                points=points,
                labels=labels,
                boxes=_numbers(entry, "boxes", where, 4),
                points_per_set=per_set,
                multimask=multimask,
            )
        )
    return prompts


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
