"""What every benchmark prints and writes: a fixed-width table and a JSON file."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

#: A table column: ``(title, value, spec)``. ``value`` is the row's attribute name or a
#: function of the row; ``spec`` is the value's format spec (``">9.1f"``), whose alignment and
#: width also frame the title. A string value (a blank, a ``"-"``) keeps only that alignment
#: and width, and None prints as ``-``.
Column = tuple[str, str | Callable[[Any], Any], str]


def _frame(spec: str) -> str:
    """The alignment and width of a format spec, without precision or type."""
    return spec.rstrip("dfs%").split(".")[0]


def _cell(value: Any, spec: str) -> str:
    if value is None:
        value = "-"
    return f"{value:{_frame(spec) if isinstance(value, str) else spec}}"


def table_header(columns: Sequence[Column], sep: str = " ") -> list[str]:
    """The title line and the rule under it."""
    header = sep.join(f"{title:{_frame(spec)}}" for title, _, spec in columns)
    return [header, "-" * len(header)]


def table_row(row: Any, columns: Sequence[Column], sep: str = " ") -> str:
    """One row's line (trailing blanks removed)."""
    cells = (
        _cell(value(row) if callable(value) else getattr(row, value), spec)
        for _, value, spec in columns
    )
    return sep.join(cells).rstrip()


def format_columns(rows: Sequence[Any], columns: Sequence[Column], sep: str = " ") -> str:
    """A fixed-width table of ``rows`` (dataclasses or any objects), one column per
    :data:`Column`, cells joined by ``sep``."""
    return "\n".join(table_header(columns, sep) + [table_row(r, columns, sep) for r in rows])


def write_json(path: str | Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` (dataclasses in it become dicts) as indented JSON, folders made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=_plain) + "\n")


def write_rows_json(rows: Sequence[Any], path: str | Path, **context: object) -> None:
    """Write the rows and the run's context (machine, threads, model...) as JSON:
    ``{"context": {...}, "rows": [...]}``."""
    machine = {"machine": platform.machine(), "python": platform.python_version()}
    write_json(path, {"context": {**machine, **context}, "rows": list(rows)})


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
