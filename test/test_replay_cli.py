"""``segfast replay`` and ``segfast bench-replay`` as commands: exit codes, errors, Ctrl-C."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from replay_bags import (
    DT,
    GARBAGE,
    REPO,
    T0,
    TOPIC,
    cli_args,
    corrupt_sqlite,
    garble_sqlite,
    read_bag,
    write_bag,
)


def test_cli_ctrl_c_leaves_a_readable_bag(tmp_path: Path, tiny_onnx_dir: Path) -> None:
    write_bag(tmp_path / "in", 300, extra_topics=False)
    proc = subprocess.Popen(
        [
            *cli_args(
                str(tmp_path / "in"), str(tmp_path / "out"), "--onnx-dir", str(tiny_onnx_dir)
            ),
            "--set",
            "points_per_side=8",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 60
    while not list((tmp_path / "out").glob("*.mcap")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "INTERRUPTED" in output
    processed = len(read_bag(tmp_path / "out").get("/segfast/instances", []))
    assert 0 < processed < 300
    assert f"{processed} processed" in output


def test_cli_reports_a_corrupt_bag_and_a_missing_topic(
    tmp_path: Path, tiny_onnx_dir: Path
) -> None:
    write_bag(tmp_path / "in", 12, storage="sqlite3", extra_topics=False)
    shutil.copytree(tmp_path / "in", tmp_path / "bad")
    corrupt_sqlite(tmp_path / "bad")
    model = ["--onnx-dir", str(tiny_onnx_dir), "--set", "points_per_side=2"]
    run = subprocess.run(
        [*cli_args(str(tmp_path / "bad"), str(tmp_path / "out"), *model)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    assert "ERROR: input bag" in run.stdout and "corrupt after" in run.stdout
    read_bag(tmp_path / "out")
    run = subprocess.run(
        [*cli_args(str(tmp_path / "in"), str(tmp_path / "out2"), *model, "--topic", "/x")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2
    assert "topic '/x' is not in the bag" in run.stderr and TOPIC in run.stderr


def test_cli_names_an_undecodable_message(tmp_path: Path, tiny_onnx_dir: Path) -> None:
    write_bag(tmp_path / "in", 6, storage="sqlite3", extra_topics=False)
    garble_sqlite(tmp_path / "in", 3, GARBAGE)
    run = subprocess.run(
        [
            *cli_args(
                str(tmp_path / "in"), str(tmp_path / "out"), "--onnx-dir", str(tiny_onnx_dir)
            ),
            *("--set", "points_per_side=2"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    facts = [
        f"input bag {tmp_path / 'in'}",
        f"message 3 of topic {TOPIC}",
        f"bag time 1700000000.300000000 s = {T0 + 3 * DT} ns",
    ]
    error = next(line for line in run.stderr.splitlines() if "segfast replay: error:" in line)
    assert all(fact in error for fact in facts), run.stderr
    assert "3 processed" in run.stdout and "ERROR: input bag" in run.stdout
    assert len(read_bag(tmp_path / "out")["/segfast/instances"]) == 3


def test_bench_replay_prints_a_table_and_writes_json(
    tmp_path: Path, tiny_onnx_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("onnx", reason="the synthetic detector graph is written with onnx")
    from segfast_ros.cli import main

    out = tmp_path / "bench.json"
    args = ["--onnx-dir", str(tiny_onnx_dir), "--precision", "fp32", "--threads", "1"]
    size = ["--frames", "3", "--width", "64", "--height", "48", "--boxes", "2"]
    assert main(["bench-replay", *args, *size, "--json", str(out)]) == 0
    assert "jpeg, SegEvery object_aware" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == [
        "rgb8, encoder only",
        "rgb8, SegEvery object_aware",
        "jpeg, encoder only",
        "jpeg, SegEvery object_aware",
    ]
    for row in rows:
        assert row["frames"] == 3
        assert row["ratio"] == pytest.approx(row["fps"] / row["encoder_bound_fps"])
    assert rows[0]["instances"] == 0 and rows[1]["instances"] == 6  # 2 boxes x 3 frames
