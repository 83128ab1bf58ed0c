"""The fleet table (:mod:`segfast_ros.fleet.table`): rows of real ``FrameRow`` s written to
Parquet and CSV parts, read back typed, joined into one table; and the CSV fallback when pyarrow
cannot be imported.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segfast_ros.fleet.table import (
    COLUMNS,
    ROW_GROUP,
    RowWriter,
    TableError,
    combine,
    read_table,
    table_format,
)
from segfast_ros.replay.summary import STAGES, FrameRow

FORMATS = ("parquet", "csv")

#: The topic and worker of every part the tests write.
ARGS = ("/camera/color", "worker 1")


def frame_rows(n: int, start: int = 0) -> list[FrameRow]:
    """Rows as the replay gives them: SegEvery every third frame, the other frames without
    its stages; stamps near today's nanoseconds; times that only round-trip exactly."""
    rows = []
    for i in range(start, start + n):
        segevery = i % 3 == 0
        stages = {"decode_image": 0.1 + 0.2 * i, "encoder": 41.5 + i / 7, "write": 1e-9 * i}
        if segevery:
            stages |= {
                "detector": 3.25,
                "decoder": 12.0 + i,
                "postprocess": 0.5,
                "inference": 60.0,
            }
        rows.append(
            FrameRow(
                index=i,
                stamp_ns=1_700_000_000_123_456_789 + i * 33_333_333,
                bag_time_ns=1_700_000_000_200_000_000 + i,
                segevery=segevery,
                instances=5 * segevery + i % 2,
                tracks=4 * segevery,
                targets=i % 4,
                positions_3d=i % 5,
                prompts=i % 2,
                stages_ms=stages,
            )
        )
    return rows


def expected(rows: list[FrameRow], bag: str, topic: str, worker: str) -> list[dict[str, Any]]:
    """What a table must hold for ``rows``, built from the FrameRow's fields one by one."""
    out = []
    for r in rows:
        d: dict[str, Any] = {"bag": bag, "topic": topic, "frame": r.index}
        d |= {"stamp_ns": r.stamp_ns, "bag_time_ns": r.bag_time_ns, "segevery": r.segevery}
        d |= {"instances": r.instances, "tracks": r.tracks, "targets": r.targets}
        d |= {"positions_3d": r.positions_3d, "prompts": r.prompts}
        d |= {f"{s}_ms": r.stages_ms.get(s) for s in (*STAGES, "inference")}
        d["worker"] = worker
        out.append(d)
    return out


def write_part(base: Path, fmt: str, rows: list[FrameRow], bag: str = "bag_a") -> Path:
    with RowWriter(base, fmt, bag=bag, topic=ARGS[0], worker=ARGS[1]) as writer:
        for row in rows:
            writer.add(row)
    assert writer.rows == len(rows)
    return writer.path


@pytest.fixture
def no_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow cannot be imported (as without the ``fleet`` extra)."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)


# ------------------------------------------------------------------------------- columns


def test_columns_are_the_contracts_in_order() -> None:
    assert COLUMNS[:11] == (
        *("bag", "topic", "frame", "stamp_ns", "bag_time_ns", "segevery", "instances"),
        *("tracks", "targets", "positions_3d", "prompts"),
    )
    assert COLUMNS[11:-1] == (*(f"{s}_ms" for s in STAGES), "inference_ms")
    assert COLUMNS[-1] == "worker"


def test_parquet_types_and_nulls(tmp_path: Path) -> None:
    rows = frame_rows(6)
    rows[2].stages_ms = {}
    table = pq.read_table(write_part(tmp_path / "a", "parquet", rows))
    assert table.schema.names == list(COLUMNS)
    types = {f.name: f.type for f in table.schema}
    assert types["stamp_ns"] == types["frame"] == types["instances"] == pa.int64()
    assert types["encoder_ms"] == types["inference_ms"] == pa.float64()
    assert types["segevery"] == pa.bool_()
    assert types["bag"] == types["worker"] == pa.string()
    assert table.column("encoder_ms").null_count == 1  # the row without stages
    assert table.column("detector_ms").null_count == 4  # frames 1, 2, 4, 5: no SegEvery
    assert table.column("lift_ms").null_count == 6


# ------------------------------------------------------------------------------- parts


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_part_round_trips_typed(tmp_path: Path, fmt: str) -> None:
    rows = frame_rows(7)
    rows[4].stages_ms = {}
    path = write_part(tmp_path / "frames" / "bag_a", fmt, rows)
    assert path == tmp_path / "frames" / f"bag_a.{fmt}"
    got = read_table(path)
    assert got == expected(rows, "bag_a", *ARGS)
    assert type(got[0]["segevery"]) is bool and type(got[0]["stamp_ns"]) is int
    assert got[4]["encoder_ms"] is None and got[1]["detector_ms"] is None


def test_csv_cells_are_empty_for_missing_stages(tmp_path: Path) -> None:
    rows = frame_rows(2)
    lines = write_part(tmp_path / "a", "csv", rows).read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    cells = dict(zip(COLUMNS, lines[2].split(","), strict=True))  # frame 1: no SegEvery
    assert cells["detector_ms"] == cells["lift_ms"] == "" and cells["segevery"] == "false"
    assert cells["encoder_ms"] == repr(rows[1].stages_ms["encoder"])


def test_2500_rows_stream_into_parquet_row_groups(tmp_path: Path) -> None:
    path = write_part(tmp_path / "big", "parquet", frame_rows(2500))
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups > 1
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [
        ROW_GROUP,
        ROW_GROUP,
        2500 - 2 * ROW_GROUP,
    ]
    assert [r["frame"] for r in read_table(path)] == list(range(2500))


def test_csv_and_parquet_read_back_equal(tmp_path: Path) -> None:
    rows = frame_rows(2500)
    parquet = read_table(write_part(tmp_path / "p", "parquet", rows))
    csv = read_table(write_part(tmp_path / "c", "csv", rows))
    assert csv == parquet == expected(rows, "bag_a", *ARGS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_rows_still_gives_a_readable_file(tmp_path: Path, fmt: str) -> None:
    writer = RowWriter(tmp_path / "empty", fmt, bag="e", topic="/t", worker="w")
    path = writer.close()
    assert writer.close() == path  # closing twice is harmless
    assert read_table(path) == [] and writer.rows == 0
    if fmt == "parquet":
        assert pq.read_schema(path).names == list(COLUMNS)
    else:
        assert path.read_text().splitlines() == [",".join(COLUMNS)]
    with pytest.raises(TableError, match="after close"):
        writer.add(frame_rows(1)[0])


def test_a_dotted_name_keeps_its_dots(tmp_path: Path) -> None:
    path = write_part(tmp_path / "run.2024-05-01", "csv", frame_rows(1))
    assert path.name == "run.2024-05-01.csv"


# ------------------------------------------------------------------------------- formats


def test_auto_is_parquet_with_pyarrow() -> None:
    assert table_format() == table_format("auto") == table_format("parquet") == "parquet"
    assert table_format("csv") == "csv"
    with pytest.raises(TableError, match="'xlsx': expected auto, parquet or csv"):
        table_format("xlsx")


@pytest.mark.usefixtures("no_pyarrow")
def test_without_pyarrow_auto_is_csv_and_parquet_says_how_to_install(tmp_path: Path) -> None:
    assert table_format("auto") == "csv"
    with pytest.raises(TableError) as error:
        table_format("parquet")
    assert "pip install 'segfast_ros[fleet]'" in str(error.value)
    assert "--table csv" in str(error.value)
    with pytest.raises(TableError, match="segfast_ros\\[fleet\\]"):
        RowWriter(tmp_path / "p", "parquet", bag="b", topic="/t", worker="w")
    assert not (tmp_path / "p.parquet").exists()
    rows = frame_rows(5)
    path = write_part(tmp_path / "c", table_format("csv"), rows)
    assert read_table(path) == expected(rows, "bag_a", *ARGS)


def test_the_module_imports_without_loading_pyarrow() -> None:
    code = "import sys, segfast_ros.fleet.table; assert 'pyarrow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------- combine


@pytest.mark.parametrize("fmt", FORMATS)
def test_combine_joins_mixed_parts_in_order(tmp_path: Path, fmt: str) -> None:
    a, b, c = frame_rows(1500), frame_rows(3, start=1500), frame_rows(700, start=2000)
    parts = [
        write_part(tmp_path / "frames" / "a", "parquet", a, bag="a"),
        write_part(tmp_path / "frames" / "b", "csv", b, bag="b"),
        write_part(tmp_path / "frames" / "c", "parquet", c, bag="c"),
    ]
    (tmp_path / f"fleet.{fmt}").write_text("a previous run's table")
    path, rows = combine(parts, tmp_path / "fleet", fmt)
    assert (path, rows) == (tmp_path / f"fleet.{fmt}", 2203)
    want = [*expected(a, "a", *ARGS), *expected(b, "b", *ARGS), *expected(c, "c", *ARGS)]
    assert read_table(path) == want
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"fleet.{fmt}", "frames"]


def test_combine_gathers_small_parts_into_whole_row_groups(tmp_path: Path) -> None:
    parts = [
        write_part(tmp_path / f"p{i}", ("parquet", "csv")[i % 2], frame_rows(100, start=100 * i))
        for i in range(25)
    ]
    path, rows = combine(parts, tmp_path / "fleet", "parquet")
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert rows == 2500 and sizes == [ROW_GROUP, ROW_GROUP, 2500 - 2 * ROW_GROUP]
    assert [r["frame"] for r in read_table(path)] == list(range(2500))


@pytest.mark.parametrize("fmt", FORMATS)
def test_combine_of_no_parts_is_an_empty_table(tmp_path: Path, fmt: str) -> None:
    path, rows = combine([], tmp_path / "fleet", fmt)
    assert rows == 0 and read_table(path) == []
    if fmt == "parquet":
        assert pq.read_schema(path).names == list(COLUMNS)


@pytest.mark.usefixtures("no_pyarrow")
def test_combine_of_csv_parts_works_without_pyarrow(tmp_path: Path) -> None:
    parts = [write_part(tmp_path / f"p{i}", "csv", frame_rows(3, start=3 * i)) for i in range(2)]
    path, rows = combine(parts, tmp_path / "fleet", table_format("auto"))
    assert path.name == "fleet.csv" and rows == 6
    assert read_table(path) == expected(frame_rows(6), "bag_a", *ARGS)
    with pytest.raises(TableError, match="pip install"):
        combine(parts, tmp_path / "fleet", "parquet")


def test_combine_fills_stage_columns_an_older_part_lacks(tmp_path: Path) -> None:
    """A resumed run may find parts written by a version with fewer stages: their times are
    null, the rest of their rows as written."""
    rows = frame_rows(4)
    table = pq.read_table(write_part(tmp_path / "new", "parquet", rows))
    pq.write_table(table.drop_columns(["lift_ms", "encoder_ms"]), tmp_path / "old.parquet")
    lines = write_part(tmp_path / "new", "csv", rows).read_text().splitlines()
    lift = COLUMNS.index("lift_ms")
    old_csv = [",".join(c for i, c in enumerate(line.split(",")) if i != lift) for line in lines]
    (tmp_path / "old.csv").write_text("\n".join(old_csv) + "\n")
    parts = [tmp_path / "old.parquet", tmp_path / "old.csv"]
    path, n = combine(parts, tmp_path / "fleet", "parquet")
    want = [{**r, "lift_ms": None} for r in expected(rows, "bag_a", *ARGS)]
    assert n == 8
    assert read_table(path) == [{**r, "encoder_ms": None} for r in want] + want


def bad_parts(folder: Path) -> dict[str, tuple[Path, str]]:
    """Parts that cannot be read, and what the error must say about each."""
    folder.mkdir()
    (folder / "garbage.parquet").write_bytes(b"PAR1 not really")
    header = ",".join(COLUMNS)
    (folder / "columns.csv").write_text("bag,topic,frame\nb,/t,1\n")
    (folder / "twice.csv").write_text(f"{header},bag\n")
    (folder / "cell.csv").write_text(f"{header}\n" + "b,/t,x" + ",0" * (len(COLUMNS) - 3) + "\n")
    (folder / "short.csv").write_text(f"{header}\nb,/t,1\n")
    (folder / "empty.csv").write_text("")
    (folder / "rows.txt").write_text(header)
    return {
        "garbage": (folder / "garbage.parquet", "cannot read it as Parquet"),
        "columns": (folder / "columns.csv", "not a fleet table: missing columns ['stamp_ns'"),
        "twice": (folder / "twice.csv", "unknown columns [], 1 repeated"),
        "cell": (folder / "cell.csv", "line 2, column frame: 'x' is not int64"),
        "short": (folder / "short.csv", f"line 2: 3 cells, expected {len(COLUMNS)}"),
        "empty": (folder / "empty.csv", "empty, expected a CSV header"),
        "suffix": (folder / "rows.txt", "expected a .parquet or .csv file"),
        "missing": (folder / "gone.parquet", "no such file"),
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "bad", ["garbage", "columns", "twice", "cell", "short", "empty", "suffix", "missing"]
)
def test_combine_names_a_part_it_cannot_read(tmp_path: Path, fmt: str, bad: str) -> None:
    good = write_part(tmp_path / "good", "parquet", frame_rows(3))
    part, message = bad_parts(tmp_path / "bad")[bad]
    previous = tmp_path / f"fleet.{fmt}"
    previous.write_text("the previous table")
    with pytest.raises(TableError) as error:
        combine([good, part], tmp_path / "fleet", fmt)
    assert str(error.value).startswith(str(part)) and message in str(error.value)
    assert previous.read_text() == "the previous table"
    assert not (tmp_path / f"fleet.{fmt}.tmp").exists()
    with pytest.raises(TableError, match=re.escape(message)):
        read_table(part)
