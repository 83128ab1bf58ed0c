"""``segfast bench-fleet`` on two tiny bags: what it prints and writes, Ray's overhead figures
as its docstring computes them, the Ray configurations skipped without Ray, and a failed run
stopping it loudly.

Only the shape of the report is checked: timed assertions do not belong in tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from segfast_ros.cli import main
from segfast_ros.fleet import benchmark
from segfast_ros.fleet.benchmark import BenchError, bag_lengths, run_sequential, sched_per_bag

TINY = ["bench-fleet", "--bags", "2", "--frames", "3", "--size", "128x96", "--rounds", "1"]


def test_all_four_configurations_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray", reason="the Ray configurations need Ray: segfast_ros[fleet]")
    out = tmp_path / "fleet.json"
    assert main([*TINY, "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())

    names = ["sequential", "local", "ray-1x2", "ray-2x1"]
    assert "config      runs  median s  frames/s  x seq start-up s sched/bag s" in printed
    for name in names:
        assert f"round 1/1 {name}:" in printed
        assert any(line.startswith(name) for line in printed.splitlines())
    assert "ray-1x2 - local, whole processes:" in printed and "CPU " in printed

    context = doc["context"]
    assert context["cpu_count"] >= 2 and context["cpu"]["model"] is not None
    assert len(context["load_average_before"]) == len(context["load_average_after"]) == 3
    assert context["ray_version"] and context["cores"]["cores"] == 2
    assert doc["settings"]["lengths"] == [3, 2] and doc["skipped"] == {}

    runs = doc["runs"]
    assert [r["config"] for r in runs] == names and all(r["frames"] == 5 for r in runs)
    rows = {r["config"]: r for r in doc["configs"]}
    assert list(rows) == names
    for name, row in rows.items():
        (run,) = [r for r in runs if r["config"] == name]
        assert row["walls_s"] == [run["wall_s"]] and row["median_s"] == run["wall_s"] > 0
        assert row["fps"] == pytest.approx(5 / row["median_s"])
        assert row["speedup"] == pytest.approx(rows["sequential"]["median_s"] / row["median_s"])
    assert rows["sequential"]["startup_s"] is None and rows["local"]["sched_per_bag_s"] is None

    overhead = doc["overhead"]
    for name in ("ray-1x2", "ray-2x1"):
        (run,) = [r for r in runs if r["config"] == name]
        workers = {"ray-1x2": 1, "ray-2x1": 2}[name]
        assert 0 < run["startup_s"] < run["fleet_wall_s"] < run["wall_s"]
        expected = (run["fleet_wall_s"] - run["startup_s"] - run["bag_wall_s"] / workers) / 2
        assert run["sched_per_bag_s"] == pytest.approx(expected)
        assert overhead["sched_per_bag_s"][name] == run["sched_per_bag_s"]
        assert overhead["startup_s"][name] == run["startup_s"]
    per_bag = (rows["ray-1x2"]["median_s"] - rows["local"]["median_s"]) / 2
    assert overhead["process_per_bag_s"] == pytest.approx(per_bag)
    assert set(overhead["how"]) == {"startup_s", "sched_per_bag_s", "process_per_bag_s"}

    # The last round's outputs stay in --work: every bag done in each fleet run.
    for name in names[1:]:
        manifest = json.loads((tmp_path / "work" / "runs" / name / "manifest.json").read_text())
        assert {e["status"] for e in manifest["entries"].values()} == {"done"}
    assert sorted(p.name for p in (tmp_path / "work" / "runs" / "sequential").glob("*.json")) == [
        "bag0_3f.json",
        "bag1_2f.json",
        "s.json",
    ]


def test_without_ray_the_ray_configurations_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(benchmark, "ray_version", lambda: None)
    out = tmp_path / "fleet.json"
    argv = [*TINY, "--configs", "local", "ray-2x1", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "skipping ray-2x1: Ray is not installed: pip install 'segfast_ros[fleet]'" in printed
    doc = json.loads(out.read_text())
    assert [r["config"] for r in doc["configs"]] == ["local"]
    assert doc["skipped"] == {"ray-2x1": benchmark.NO_RAY}
    assert doc["context"]["ray_version"] is None
    assert doc["configs"][0]["speedup"] is None  # no sequential run to compare with
    assert doc["overhead"]["process_per_bag_s"] is None

    assert main([*TINY, "--configs", "ray-1x2"]) == 2
    assert "nothing to run: every configuration asked for needs Ray" in capsys.readouterr().err


def test_overhead_is_reported_as_computed_not_clamped() -> None:
    # 10 s in all, 2 s start-up, 17 s of replays on 2 workers: 0.5 s short, over 4 bags.
    assert sched_per_bag(10.0, 2.0, 17.0, 2, 4) == pytest.approx(-0.125)
    assert sched_per_bag(10.0, 2.0, 12.0, 2, 4) == pytest.approx(0.5)


def test_bag_lengths_step_down_from_the_largest() -> None:
    assert bag_lengths(6, 60) == [60, 50, 40, 30, 20, 10]
    assert bag_lengths(2, 3) == [3, 2] and bag_lengths(4, 1) == [1, 1, 1, 1]


def test_a_failed_run_stops_the_benchmark_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_bag"
    with pytest.raises(BenchError) as failed:
        run_sequential([missing], tmp_path / "out", ["--no-progress"], dict(os.environ))
    message = str(failed.value)  # the run, and the command's own words
    assert message.startswith("sequential no_such_bag: `segfast replay` exited 2")
    assert f"input bag {missing} does not exist" in message


def test_work_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "file"
    work.write_text("")
    assert main([*TINY, "--configs", "local", "--work", str(work)]) == 2
    assert f"--work {work} is a file; expected a folder" in capsys.readouterr().err


def test_on_a_bigger_machine_the_runs_are_held_to_two_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 7, 9}, raising=False)
    env, cores = benchmark.child_env()
    assert cores == {"cores": 2, "usable_cores": 4, "pinned_to": [3, 5]}
    assert json.loads(env["RAY_OVERRIDE_RESOURCES"]) == {"CPU": 2}
    assert "RAY_ADDRESS" not in env  # each Ray run starts its own local instance

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    with pytest.raises(BenchError, match="runs on 2 cores; this machine has 1"):
        benchmark.child_env()
