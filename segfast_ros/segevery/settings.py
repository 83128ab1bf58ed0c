"""The strategies' settings: typed, range-checked keyword arguments and the one mask filter.

A strategy is a frozen dataclass whose numeric fields are declared with :func:`param` (default
and accepted range in one place) and checked by :func:`validate_params`. The node declares its
``segevery.<strategy>.<field>`` parameters from the same fields
(:func:`segfast_ros.ros.params.segevery_params`), so the ranges ``ros2 param describe`` shows
are the ones enforced here.

:class:`MaskFilter` declares the settings every strategy shares (which masks survive, and how
duplicates go) once. A strategy inherits it; one whose reference uses other defaults changes
them with :func:`mask_filter_defaults` instead of declaring the fields again.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True)
class ParamRange:
    """The accepted values of one strategy keyword argument (see :func:`param`)."""

    kind: type
    low: float | None = None
    high: float | None = None
    high_open: bool = False

    def describe(self) -> str:
        """``"an integer >= 1"``, ``"a number in [0, 1]"``, ``"a finite number"``."""
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} >= {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        return f"a finite {what.split()[-1]}" if self.kind is float else what

    def check(self, name: str, value: Any) -> Any:
        """``value`` converted to ``kind``, or a ValueError saying the value and the range."""
        if self.kind is int:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            converted: Any = int(value) if ok else None
        else:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            converted = float(value) if ok else None
            ok = ok and math.isfinite(converted)
        if ok:
            low_ok = self.low is None or converted >= self.low
            high_ok = self.high is None or (
                converted < self.high if self.high_open else converted <= self.high
            )
            ok = low_ok and high_ok
        if not ok:
            kind = "" if isinstance(value, int | float) else f" ({type(value).__name__})"
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}{kind}")
        return converted


def param(
    default: float,
    *,
    low: float | None = None,
    high: float | None = None,
    high_open: bool = False,
) -> Any:
    """A dataclass field for a strategy keyword argument, with its accepted range.

    The type is that of ``default`` (``int`` or ``float``); :func:`validate_params` checks and
    converts the values in ``__post_init__``. Example::

        points_per_side: int = param(32, low=1)
        pred_iou_thresh: float = param(0.88, low=0.0, high=1.0)
    """
    kind = int if isinstance(default, int) and not isinstance(default, bool) else float
    return dataclasses.field(
        default=default, metadata={"range": ParamRange(kind, low, high, high_open)}
    )


def validate_params(obj: Any) -> None:
    """Check (and convert to int/float) every :func:`param` field of frozen dataclass ``obj``.

    Raises:
        ValueError: ``"<name> must be <range>, got <value>"`` for the first bad field.
    """
    for f in dataclasses.fields(obj):
        spec = f.metadata.get("range")
        if spec is not None:
            object.__setattr__(obj, f.name, spec.check(f.name, getattr(obj, f.name)))


def check_bool(name: str, value: Any) -> None:
    """A ValueError naming ``name`` unless ``value`` is a bool (1, "true" and None are not)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")


def settings_from_dict(cls: type[_T], values: Mapping[str, Any], what: str) -> _T:
    """``cls(**values)`` for a settings dataclass, refusing names it does not have.

    Args:
        cls: a dataclass whose construction checks its values (:func:`validate_params`).
        values: ``{field: value}``; missing fields keep their defaults.
        what: what the settings are, for the message (``"tracking"``, ``"depth"``).

    Raises:
        ValueError: an unknown field (the message lists the accepted ones), or whatever
            ``cls`` refuses (a value out of range or of the wrong type).
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(
            f"unknown {what} setting(s) {', '.join(unknown)}; accepted: {', '.join(names)}"
        )
    return cls(**values)


@dataclass(frozen=True, kw_only=True)
class MaskFilter:
    """Which decoded masks survive, and how duplicates are removed (SAM's defaults).

    Every strategy is a ``MaskFilter`` (it inherits these fields, so they are its keyword
    arguments and node parameters); :func:`~.candidates.segment_prompts` and
    :func:`~.candidates.finish_candidates` read them. Checked on construction, like every
    :func:`param` field of a subclass.

    Attributes:
        pred_iou_thresh: keep masks with predicted IoU ``>`` this (0 disables the filter).
        stability_score_thresh: keep masks with stability ``>=`` this (0 disables the filter).
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU above which the lower-scored of two masks is dropped (1.0
            keeps both).
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this many pixels
            in every kept mask, then NMS again (costly on big images: every kept RLE is decoded).
        mask_threshold: logit above which a pixel is in the mask.
    """

    pred_iou_thresh: float = param(0.88, low=0.0, high=1.0)
    stability_score_thresh: float = param(0.95, low=0.0, high=1.0)
    stability_score_offset: float = param(1.0, low=0.0)
    box_nms_thresh: float = param(0.7, low=0.0, high=1.0)
    min_mask_region_area: int = param(0, low=0)
    mask_threshold: float = param(0.0)

    def __post_init__(self) -> None:
        validate_params(self)


def mask_filter_defaults(**defaults: float) -> Callable[[type[_T]], type[_T]]:
    """Class decorator, placed under ``@dataclass``: other defaults for :class:`MaskFilter`.

    The decorated class (a ``MaskFilter`` subclass) gets the named fields with the given
    defaults and everything else of the ``MaskFilter`` field: type, range, and place in the
    field order (so in the keyword arguments and node parameters). Example::

        @dataclass(frozen=True, kw_only=True)
        @mask_filter_defaults(pred_iou_thresh=0.0, box_nms_thresh=1.0)
        class KeepsEverything(MaskFilter): ...

    Raises:
        TypeError: a name that is not a ``MaskFilter`` field.
        ValueError: a default outside the field's range.
    """
    fields = {f.name: f for f in dataclasses.fields(MaskFilter)}
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise TypeError(
            f"not MaskFilter fields: {', '.join(unknown)}; fields: {', '.join(fields)}"
        )
    checked = {name: fields[name].metadata["range"].check(name, v) for name, v in defaults.items()}

    def apply(cls: type[_T]) -> type[_T]:
        # Own annotations and attributes are what @dataclass reads as the class's fields; a
        # name already in a base keeps the base's place.
        own = dict(inspect.get_annotations(cls))
        for name, value in checked.items():
            own[name] = fields[name].type
            setattr(cls, name, dataclasses.field(default=value, metadata=fields[name].metadata))
        cls.__annotations__ = own
        return cls

    return apply
