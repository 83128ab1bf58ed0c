"""The fleet table: a row per replayed frame of every bag, in Parquet (pyarrow) or CSV.

A bag's worker streams its frames' rows (:class:`~segfast_ros.replay.summary.FrameRow`, from
``replay``'s ``on_row``) into a part, ``DIR/frames/<name>.parquet|.csv``, with a
:class:`RowWriter`; the driver joins the parts into ``DIR/fleet.<ext>`` with :func:`combine`.
Both formats hold the same columns (:data:`COLUMNS`) and types: counts and stamps int64, stage
times float64 milliseconds, ``segevery`` bool, names strings. A stage that did not run on a
frame is null in Parquet and an empty cell in CSV.

pyarrow is imported only when Parquet is written or read, so CSV works without the ``fleet``
extra; :func:`table_format` picks CSV when pyarrow is absent.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..replay.summary import STAGES, FrameRow

#: Stage times of a row: the replay's stages in pipeline order, then encoder + SegEvery + SegAny.
_STAGE_KEYS: tuple[str, ...] = (*STAGES, "inference")

#: Each column's type, in the table's order.
_TYPES: dict[str, str] = {
    **dict.fromkeys(("bag", "topic"), "string"),
    **dict.fromkeys(("frame", "stamp_ns", "bag_time_ns"), "int64"),
    "segevery": "bool",
    **dict.fromkeys(("instances", "tracks", "targets", "positions_3d", "prompts"), "int64"),
    **{f"{stage}_ms": "float64" for stage in _STAGE_KEYS},
    "worker": "string",
}

#: The table's columns, in order.
COLUMNS: tuple[str, ...] = tuple(_TYPES)

#: Table formats, also the files' suffixes.
FORMATS: tuple[str, ...] = ("parquet", "csv")

#: Rows per Parquet row group (and per chunk read or buffered): what a writer holds at most.
ROW_GROUP = 1024

_INSTALL = "pip install 'segfast_ros[fleet]' (or pip install pyarrow), or use --table csv"


class TableError(RuntimeError):
    """A table that cannot be written or read; the message names the file and what was wrong."""


def table_format(requested: str = "auto") -> str:
    """The format to write: ``"auto"`` is Parquet when pyarrow imports, else CSV.

    Raises:
        TableError: ``"parquet"`` without pyarrow (the message says how to install it), or a
            format that is not ``auto``, ``parquet`` or ``csv``.
    """
    if requested not in ("auto", *FORMATS):
        raise TableError(f"unknown table format {requested!r}: expected auto, parquet or csv")
    if requested != "csv":
        try:
            _arrow()
        except TableError:
            if requested == "parquet":
                raise
            return "csv"
    return "parquet" if requested == "auto" else requested


class RowWriter:
    """One bag's rows, streamed to ``<path_without_suffix>.<fmt>`` (memory bounded: rows are
    buffered up to a Parquet row group of :data:`ROW_GROUP` and then written).

    Args:
        path_without_suffix: the file to write, less its suffix (its folder is created).
        fmt: ``"parquet"`` or ``"csv"`` (see :func:`table_format`).
        bag, topic, worker: the bag (its input path or output name), its image topic and who
            replays it, on every row.

    Called from one thread only (the replay's writer thread, then the worker's ``close``).
    """

    def __init__(
        self, path_without_suffix: Path, fmt: str, *, bag: str, topic: str, worker: str
    ) -> None:
        self.path = _with_suffix(Path(path_without_suffix), fmt)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self._labels = (bag, topic, worker)
        self._buffer: list[list[Any]] = []
        self._sink: _CsvSink | _ParquetSink | None = _open_sink(self.path, fmt)

    def add(self, row: FrameRow) -> None:
        """Add a frame's row; stages outside :data:`COLUMNS` are left out."""
        if self._sink is None:
            raise TableError(f"{self.path}: a row added after close()")
        self._buffer.append(_values(row, *self._labels))
        self.rows += 1
        if len(self._buffer) >= ROW_GROUP:
            self._sink.write_rows(self._buffer)
            self._buffer = []

    def close(self) -> Path:
        """Write what is buffered and close the file, which is readable also with no rows (a
        header-only CSV, a Parquet file with the schema and no row group). Idempotent."""
        if self._sink is not None:
            sink, self._sink = self._sink, None
            try:
                sink.write_rows(self._buffer)
            finally:
                self._buffer = []
                sink.close()
        return self.path

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def combine(parts: Sequence[Path], out_without_suffix: Path, fmt: str) -> tuple[Path, int]:
    """The fleet table: the parts' rows in order into ``<out_without_suffix>.<fmt>``, streamed
    through a temporary file that replaces the table only once whole.

    Parts of either format are read (a resumed run may find CSV parts from a run without
    pyarrow); a part without some stage's column (from a version with fewer stages) has null
    times there. No parts give an empty table with the columns.

    Returns:
        The table's path and its number of rows.

    Raises:
        TableError: a part that is missing or cannot be read (named), or Parquet without
            pyarrow; the previous table, if any, is then left as it was.
    """
    out = _with_suffix(Path(out_without_suffix), fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp")
    sink = _open_sink(tmp, fmt)
    rows = 0
    try:
        for part in parts:
            part = Path(part)
            if isinstance(sink, _ParquetSink) and _format_of(part) == "parquet":
                for table in _parquet_tables(part):  # no round trip through Python objects
                    sink.write_arrow(table)
                    rows += table.num_rows
            else:
                for chunk in _chunks(part):
                    sink.write_rows(chunk)
                    rows += len(chunk)
    except BaseException:
        sink.close()
        tmp.unlink(missing_ok=True)
        raise
    sink.close()
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out, rows


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a fleet table or a part, as dicts of typed values (None where missing): for
    tests, the benchmark and users without pandas. Raises :class:`TableError`."""
    return [dict(zip(COLUMNS, row, strict=True)) for chunk in _chunks(Path(path)) for row in chunk]


# ------------------------------------------------------------------------------- writing


def _values(row: FrameRow, bag: str, topic: str, worker: str) -> list[Any]:
    """A row's values in :data:`COLUMNS` order, as plain Python types."""
    ints = (row.index, row.stamp_ns, row.bag_time_ns)
    counts = (row.instances, row.tracks, row.targets, row.positions_3d, row.prompts)
    stages = [None if ms is None else float(ms) for ms in map(row.stages_ms.get, _STAGE_KEYS)]
    return [bag, topic, *map(int, ints), bool(row.segevery), *map(int, counts), *stages, worker]


def _with_suffix(base: Path, fmt: str) -> Path:
    """``base`` with ``.<fmt>`` added (not replaced: a name may hold dots)."""
    if fmt not in FORMATS:
        raise TableError(f"unknown table format {fmt!r} for {base}: expected parquet or csv")
    return base.with_name(f"{base.name}.{fmt}")


def _open_sink(path: Path, fmt: str) -> _CsvSink | _ParquetSink:
    return _ParquetSink(path) if fmt == "parquet" else _CsvSink(path)


def _cell(value: Any) -> str:
    """A CSV cell: empty for a missing value, ``true``/``false``, floats exactly (repr)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


class _CsvSink:
    """A CSV file: the header, then rows as they come."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(COLUMNS)

    def write_rows(self, rows: list[list[Any]]) -> None:
        self._csv.writerows([_cell(v) for v in row] for row in rows)

    def close(self) -> None:
        self._file.close()


class _ParquetSink:
    """A Parquet file: rows gathered into row groups of :data:`ROW_GROUP` as they come."""

    def __init__(self, path: Path) -> None:
        self._pa, parquet = _arrow()
        self._schema = _schema(self._pa)
        self._writer = parquet.ParquetWriter(path, self._schema)
        self._pending: list[Any] = []
        self._rows = 0

    def write_rows(self, rows: list[list[Any]]) -> None:
        if rows:
            columns = dict(zip(COLUMNS, map(list, zip(*rows, strict=True)), strict=True))
            self.write_arrow(self._pa.Table.from_pydict(columns, schema=self._schema))

    def write_arrow(self, table: Any) -> None:
        """Add a table of the schema; whole row groups are written, the rest kept."""
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= ROW_GROUP:
            gathered = self._pa.concat_tables(self._pending)
            whole = self._rows // ROW_GROUP * ROW_GROUP
            self._writer.write_table(gathered.slice(0, whole), row_group_size=ROW_GROUP)
            rest = gathered.slice(whole)
            self._pending, self._rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self._pending:
            self._writer.write_table(self._pa.concat_tables(self._pending))
            self._pending = []
        self._writer.close()


# ------------------------------------------------------------------------------- reading


def _arrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, or a TableError that says how to get them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise TableError(
            f"Parquet needs pyarrow, which cannot be imported ({e}): {_INSTALL}"
        ) from e
    return pyarrow, pyarrow.parquet


def _schema(pa: Any) -> Any:
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([(c, types.get(t) or pa.bool_()) for c, t in _TYPES.items()])


def _format_of(path: Path) -> str:
    if not path.is_file():
        raise TableError(f"{path}: no such file (expected a fleet table or a part of one)")
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise TableError(f"{path}: not a table: expected a .parquet or .csv file")
    return suffix


def _check_columns(path: Path, names: Sequence[str]) -> None:
    """A table's columns must be :data:`COLUMNS`, each once; a stage column may be missing (a
    part from a version with fewer stages: its times are null)."""
    missing = [c for c in COLUMNS if c not in names and not c.endswith("_ms")]
    unknown = [n for n in names if n not in _TYPES]
    if missing or unknown or len(set(names)) != len(names):
        raise TableError(
            f"{path}: not a fleet table: missing columns {missing}, unknown columns {unknown}, "
            f"{len(names) - len(set(names))} repeated (expected {', '.join(COLUMNS)})"
        )


def _chunks(path: Path) -> Iterator[list[list[Any]]]:
    """The rows of a table of either format, in :data:`COLUMNS` order, a chunk at a time."""
    if _format_of(path) == "csv":
        yield from _csv_chunks(path)
        return
    for table in _parquet_tables(path):
        yield [list(row) for row in zip(*table.to_pydict().values(), strict=True)]


def _parquet_tables(path: Path) -> Iterator[Any]:
    pa, parquet = _arrow()
    schema = _schema(pa)
    try:
        file = parquet.ParquetFile(path)
        names = file.schema_arrow.names
        _check_columns(path, names)
        present = [c for c in COLUMNS if c in names]
        for batch in file.iter_batches(batch_size=ROW_GROUP, columns=present):
            table = pa.Table.from_batches([batch])
            for column in (c for c in COLUMNS if c not in names):
                table = table.append_column(column, pa.nulls(len(table), pa.float64()))
            yield table.select(list(COLUMNS)).cast(schema)
    except (OSError, pa.ArrowException) as e:
        raise TableError(f"{path}: cannot read it as Parquet ({e})") from e


def _csv_chunks(path: Path) -> Iterator[list[list[Any]]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise TableError(f"{path}: empty, expected a CSV header line ({COLUMNS[0]},...)")
            _check_columns(path, header)
            where = [header.index(c) if c in header else None for c in COLUMNS]
            chunk: list[list[Any]] = []
            for cells in reader:
                if cells:
                    line = f"{path} line {reader.line_num}"
                    chunk.append(_parse_row(line, cells, len(header), where))
                if len(chunk) >= ROW_GROUP:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TableError(f"{path}: cannot read it as CSV ({e})") from e


_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def _parse_row(line: str, cells: list[str], width: int, where: list[int | None]) -> list[Any]:
    """A CSV line's cells as typed values in :data:`COLUMNS` order (``where``: each column's
    cell, None for a missing stage column): an empty cell is None (a string column's "")."""
    if len(cells) != width:
        raise TableError(f"{line}: {len(cells)} cells, expected {width}")
    values: list[Any] = []
    for column, i in zip(COLUMNS, where, strict=True):
        kind, text = _TYPES[column], "" if i is None else cells[i]
        try:
            if kind == "string" or not text:
                values.append(text if kind == "string" else None)
            elif kind == "bool":
                values.append(_BOOLS[text.lower()])
            else:
                values.append(int(text) if kind == "int64" else float(text))
        except (KeyError, ValueError):
            raise TableError(f"{line}, column {column}: {text!r} is not {kind}") from None
    return values
