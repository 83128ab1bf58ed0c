"""SegEvery strategies by name, for node parameters, the CLI and benchmarks.

To register a strategy, import its class here and add it to :data:`STRATEGIES` under its
``name`` (see the marked line). A strategy is a class whose constructor takes only keyword
arguments (its configuration, validated in the constructor with a ValueError naming the value
and the accepted range) and whose instances are :class:`~.base.SegEvery` callables.
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import SegEvery
from .grid import GridSegEvery
from .hierarchical import HierarchicalSegEvery
from .object_aware import ObjectAwareSegEvery

#: Strategy name -> class. The names are the ``strategy`` of their results.
STRATEGIES: dict[str, type[SegEvery]] = {
    GridSegEvery.name: GridSegEvery,
    HierarchicalSegEvery.name: HierarchicalSegEvery,
    ObjectAwareSegEvery.name: ObjectAwareSegEvery,
    # Register further strategies here (import the class above, add `Class.name: Class`).
}


def strategy_params(name: str) -> dict[str, Any]:
    """The keyword arguments strategy ``name`` accepts, with their defaults.

    Required arguments (no default, e.g. the object-aware detector) map to
    ``inspect.Parameter.empty``.

    Raises:
        ValueError: unknown strategy name (the message lists the known ones).
    """
    cls = _strategy(name)
    return {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def build_segevery(name: str, **kwargs: Any) -> SegEvery:
    """Build the SegEvery strategy ``name`` configured with ``kwargs``.

    Example::

        segevery = build_segevery("hierarchical", points_per_side=32, pred_iou_thresh=0.8)
        result = segevery(predictor)

    Raises:
        ValueError: unknown strategy name (lists the known ones), unknown or missing keyword
            arguments (lists the accepted ones), or an out-of-range / wrongly typed value (says
            the value and the accepted range).
    """
    cls = _strategy(name)
    accepted = strategy_params(name)
    unknown = sorted(set(kwargs) - set(accepted))
    missing = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in kwargs]
    if unknown or missing:
        problem = (
            f"unknown argument(s) {', '.join(unknown)}"
            if unknown
            else f"missing required argument(s) {', '.join(missing)}"
        )
        raise ValueError(
            f"{problem} for SegEvery strategy {name!r}; accepted: {', '.join(accepted)}"
        )
    return cls(**kwargs)


def _strategy(name: str) -> type[SegEvery]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown SegEvery strategy {name!r}; expected one of {sorted(STRATEGIES)}"
        ) from None
