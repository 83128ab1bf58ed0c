"""``segfast replay-many`` without Ray (``--address local``: the same workers in this process)
and its command line: largest bags first, a real Ctrl-C, the CSV table, names kept on resume,
and what it says when Ray or the inputs are missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fleet_bags import FLAGS, fleet_args, plain_replay, same_outputs
from replay_bags import REPO, write_bag

from segfast_ros.bench.scenes import generate_sequence
from segfast_ros.cli import main
from segfast_ros.fleet.inputs import InputError
from segfast_ros.fleet.manifest import Manifest
from segfast_ros.fleet.pool import FleetError
from segfast_ros.fleet.run import FleetSettings, run_fleet
from segfast_ros.fleet.table import read_table


def small_archive(root: Path, frames: dict[str, int]) -> dict[str, Path]:
    bags = {}
    for i, (name, n) in enumerate(frames.items()):
        images = [f.image for f in generate_sequence(500 + i, n, (96, 128))]
        write_bag(root / name, n, images=images)
        bags[name] = root / name
    return bags


def test_local_runs_largest_first_and_writes_what_a_plain_replay_writes(tmp_path: Path) -> None:
    bags = small_archive(tmp_path / "in", {"small": 2, "big": 5, "mid": 3})
    listing = tmp_path / "bags.txt"
    listing.write_text("# today's bags\nin/small\nin/big\n\nin/mid  # the last one\n")
    order: list[str] = []
    settings = FleetSettings(tmp_path / "out", address="local", table="csv")
    summary = run_fleet(
        fleet_args(), [listing], settings, on_result=lambda r: order.append(r.name)
    )
    assert order == ["big", "mid", "small"] and summary.complete
    assert summary.pool.startswith("this process")
    plain_replay(bags["mid"], tmp_path / "plain")
    same_outputs(tmp_path / "out", "mid", tmp_path / "plain")
    rows = read_table(tmp_path / "out" / "fleet.csv")
    assert len(rows) == 10 == summary.frames
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["complete"] and doc["table_rows"] == 10 and doc["done"] == order
    bag_summary = json.loads((tmp_path / "out" / "summaries" / "mid.json").read_text())
    assert bag_summary["output"] == str(tmp_path / "out" / "bags" / "mid")  # final place


def test_ctrl_c_leaves_finished_outputs_readable_and_resume_finishes(tmp_path: Path) -> None:
    """A real SIGINT to the command while it replays: exit 130, the manifest lists exactly the
    bags whose outputs are in place; --resume redoes only the others."""
    small_archive(tmp_path / "in", {"long": 120, "a": 2, "b": 2})
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "segfast_ros.cli", "replay-many", str(tmp_path / "in")]
    argv += ["--out", str(out), "--address", "local", *FLAGS]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    # "long" is replayed first (largest): interrupt once its first frames are through.
    while not list((out / "work" / "long").glob("long/*.mcap")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, text
    assert "INTERRUPTED" in text and "--resume" in text
    assert Manifest.load(out).entries == {}  # nothing finished, nothing claimed
    assert (out / "manifest.json").is_file()
    assert not (out / "bags" / "long").exists()
    rows = read_table(out / "fleet.parquet")  # the table is there, and empty
    assert rows == []

    again = subprocess.run([*argv, "--resume"], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    entries = Manifest.load(out).entries
    assert {n: e.status for n, e in entries.items()} == {"long": "done", "a": "done", "b": "done"}
    assert len(read_table(out / "fleet.parquet")) == 124
    assert not (out / "work").exists()


def test_resume_keeps_each_bags_name_when_new_inputs_clash(tmp_path: Path) -> None:
    small_archive(tmp_path / "run1", {"bag": 2})
    out = tmp_path / "out"
    run_fleet(fleet_args(), [tmp_path / "run1"], FleetSettings(out, address="local"))
    small_archive(tmp_path / "run2", {"bag": 2})
    inputs = [tmp_path / "run1", tmp_path / "run2"]
    summary = run_fleet(fleet_args(), inputs, FleetSettings(out, address="local", resume=True))
    assert summary.skipped == ["bag"]  # not renamed run1__bag, not replayed again
    assert summary.done == ["run2__bag"]


def test_the_output_folder_inside_an_input_folder_is_not_an_input(tmp_path: Path) -> None:
    small_archive(tmp_path / "in", {"x": 2})
    out = tmp_path / "in" / "results"
    run_fleet(fleet_args(), [tmp_path / "in"], FleetSettings(out, address="local"))
    again = run_fleet(
        fleet_args(), [tmp_path / "in"], FleetSettings(out, address="local", resume=True)
    )
    assert again.skipped == ["x"] and again.bags == 1


def test_errors_name_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    small_archive(tmp_path / "in", {"x": 2})
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(
        FleetError, match=r"Ray is not installed: pip install 'segfast_ros\[fleet\]'"
    ):
        run_fleet(fleet_args(), [tmp_path / "in"], FleetSettings(tmp_path / "out"))
    argv = ["replay-many", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), *FLAGS]
    assert main(argv) == 2
    assert "--address local" in capsys.readouterr().err
    with pytest.raises(InputError, match="does not exist"):
        run_fleet(
            fleet_args(), [tmp_path / "nope"], FleetSettings(tmp_path / "o3", address="local")
        )
    for flags, match in (
        (["--workers", "0"], "--workers must be >= 1"),
        (["--address", "local", "--workers", "2"], "one worker in this process"),
        (["--gpus-per-worker", "-1"], "--gpus-per-worker must be >= 0"),
    ):
        assert main([*argv, *flags]) == 2
        assert match in capsys.readouterr().err
    assert main([*argv[: -len(FLAGS)], "--address", "local", "--every", "0", *FLAGS]) == 2
    assert "--every must be >= 1" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o2" / "manifest.json")


def test_one_progress_bar_over_all_bags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    small_archive(tmp_path / "in", {"a": 4, "b": 3, "c": 3})
    settings = FleetSettings(tmp_path / "out", address="local", progress=True)
    run_fleet(fleet_args(), [tmp_path / "in"], settings)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")  # one line, redrawn in place
    draws = err.strip().split("\r")
    assert "10/10 frames 100%" in draws[-1] and "3/3 bags" in draws[-1]
    assert all("/10 frames" in d for d in draws if d)  # the total is every bag's frames


def test_resume_redoes_bags_when_the_settings_change_not_when_the_model_moves(
    tmp_path: Path,
) -> None:
    import shutil

    small_archive(tmp_path / "in", {"x": 2})
    shutil.copytree(REPO / "models" / "demo", tmp_path / "m1")
    out = tmp_path / "out"

    def run(model: Path, *flags: str):
        args = fleet_args("--onnx-dir", str(model), "--detector", str(model / "detector.onnx"))
        args.set = list(flags) or None
        settings = FleetSettings(out, address="local", resume=True)
        return run_fleet(args, [tmp_path / "in"], settings)

    assert run(tmp_path / "m1").done == ["x"]
    (tmp_path / "m1").rename(tmp_path / "m2")  # the same model, mounted elsewhere
    assert run(tmp_path / "m2").skipped == ["x"]
    assert run(tmp_path / "m2", "conf=0.5").done == ["x"]  # another setting: replayed again
    assert run(tmp_path / "m2", "conf=0.5").skipped == ["x"]
    # Another graph in the model folder (here the INT8 encoder, not even used at fp32): the
    # model's files are hashed, so the bag is replayed again.
    int8 = tmp_path / "m2" / "encoder.int8.onnx"
    int8.write_bytes(int8.read_bytes() + b"\0")
    assert run(tmp_path / "m2", "conf=0.5").done == ["x"]


def test_a_bag_the_driver_cannot_fingerprint_does_not_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver reads each bag's edges to fingerprint it; one it cannot read (permissions,
    a flaky mount: faked here, as root reads everything) is still handed to a worker, which
    replays it or fails it alone, and is never taken as complete on --resume."""
    import segfast_ros.fleet.run as fleet_run

    small_archive(tmp_path / "in", {"ok": 2, "odd": 2})
    real = fleet_run.fingerprint

    def flaky(path: Path) -> str:
        if path.name == "odd":
            raise InputError(f"cannot read input bag {path} to fingerprint it: EIO")
        return real(path)

    monkeypatch.setattr(fleet_run, "fingerprint", flaky)
    settings = FleetSettings(tmp_path / "out", address="local", resume=True)
    first = run_fleet(fleet_args(), [tmp_path / "in"], settings)
    assert sorted(first.done) == ["odd", "ok"]
    again = run_fleet(fleet_args(), [tmp_path / "in"], settings)
    assert again.skipped == ["ok"] and again.done == ["odd"]  # never taken as complete
