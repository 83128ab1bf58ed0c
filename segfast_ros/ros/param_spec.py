"""One node parameter's declaration: its type, range and description, and what ROS shows of it.

:class:`ParamSpec` is a row of the node's parameter table (:mod:`.params`);
:func:`field_params` makes rows from a settings dataclass's own fields (their
:func:`~segfast_ros.segevery.settings.param` ranges and docstring), so the ranges a user sees in
``ros2 param describe`` are the ones the library enforces; :func:`descriptor` is the ROS
``ParameterDescriptor`` of a row.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from segfast_ros.segevery.settings import ParamRange

#: Largest value ROS integer ranges accept (int64), used as "no upper bound".
_INT_MAX = 2**63 - 1


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    Attributes:
        name: dotted ROS name.
        default: its default; the type (bool, int, float, str, list of str) is the ROS type.
        description: what it does, shown by ``ros2 param describe``.
        range: accepted numeric values, checked on declaration and on every change.
        read_only: fixed for the node's lifetime (model and backend choices).
        choices: accepted strings.
    """

    name: str
    default: Any
    description: str
    range: ParamRange | None = None
    read_only: bool = False
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> Any:
        """``value`` converted to this parameter's type, or a ValueError saying why not."""
        if self.range is not None:
            return self.range.check(self.name, value)
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
        elif isinstance(self.default, str):
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be a string, got {value!r}")
            if self.choices and value not in self.choices:
                raise ValueError(f"{self.name} must be one of {list(self.choices)}, got {value!r}")
        elif isinstance(self.default, list) and not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.name} must be a list of strings, got {value!r}")
        return value


def num_range(default: float, low: float | None = None, high: float | None = None) -> ParamRange:
    """A range of ``default``'s kind (int or float) from ``low`` to ``high``."""
    kind = int if isinstance(default, int) and not isinstance(default, bool) else float
    return ParamRange(kind, low, high)


def field_params(prefix: str, cls: type, describe: Any) -> list[ParamSpec]:
    """``<prefix>.<field>`` for every ranged or boolean field of dataclass ``cls``.

    Numeric fields carry the range the class itself enforces (:func:`~.settings.param`);
    boolean fields are plain switches; other fields (objects) are left out.
    ``describe(field)`` is the parameter's description.
    """
    assert dataclasses.is_dataclass(cls)
    return [
        ParamSpec(f"{prefix}.{f.name}", f.default, describe(f), range=f.metadata.get("range"))
        for f in dataclasses.fields(cls)
        if f.metadata.get("range") is not None or isinstance(f.default, bool)
    ]


def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of ``cls``'s docstring (Google
    style: ``name: text`` lines, continued by deeper-indented ones)."""
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        return docs
    name = ""
    for line in lines[lines.index("Attributes:") + 1 :]:
        if line and not line.startswith(" "):
            break  # the next section
        text = line.strip()
        head, sep, rest = text.partition(": ")
        if sep and line.startswith("    ") and not line.startswith("     ") and " " not in head:
            name, docs[head] = head, rest
        elif name and text:
            docs[name] += " " + text
    return docs


def ros_range(spec: ParamSpec) -> tuple[str, float, float] | None:
    """``("integer" | "floating_point", from, to)`` for the ROS descriptor, or None.

    ROS ranges are closed and need both ends, so an open upper end or a missing bound is left
    to :meth:`ParamSpec.check` alone.
    """
    rng = spec.range
    if rng is None or rng.low is None:
        return None
    if rng.kind is int:
        high = _INT_MAX if rng.high is None else rng.high
        return "integer", int(rng.low), int(high)
    if rng.high is None or rng.high_open:
        return None
    return "floating_point", float(rng.low), float(rng.high)


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS descriptor of ``spec``: description, read-only flag, and the range ROS can say."""
    out = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        out.additional_constraints = f"one of {list(spec.choices)}"
    elif spec.range is not None:
        out.additional_constraints = spec.range.describe()
    bounds = ros_range(spec)
    if bounds is not None and bounds[0] == "integer":
        out.integer_range = [IntegerRange(from_value=bounds[1], to_value=bounds[2], step=1)]
    elif bounds is not None:
        out.floating_point_range = [
            FloatingPointRange(from_value=bounds[1], to_value=bounds[2], step=0.0)
        ]
    return out
