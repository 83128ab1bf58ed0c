"""``segfast replay-many`` on a local Ray instance (two CPUs, loopback only): six bags, one of
them cut off, replayed by two workers; a worker killed part-way; Ctrl-C and ``--resume``.

Every output is compared with plain ``segfast replay`` runs of the same bags, message for
message (the wall-clock timing field zeroed).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

ray = pytest.importorskip(
    "ray", reason="the fleet tests need Ray: pip install 'segfast_ros[fleet]' (make setup does)"
)

from fleet_bags import ARCHIVE, fleet_args, plain_replay, same_outputs, write_archive  # noqa: E402

from segfast_ros.fleet.manifest import Manifest  # noqa: E402
from segfast_ros.fleet.pool import FleetError  # noqa: E402
from segfast_ros.fleet.run import FleetSettings, run_fleet  # noqa: E402
from segfast_ros.fleet.summary import FleetSummary  # noqa: E402
from segfast_ros.fleet.table import read_table  # noqa: E402

NAMES = set(ARCHIVE)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 2**20,
        logging_level="WARNING",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The archive's root, and the folder of its plain ``segfast replay`` outputs."""
    root = tmp_path_factory.mktemp("archive")
    bags = write_archive(root)
    for bag in bags.values():
        plain_replay(bag, root / "plain")
    return root, root / "plain"


def fleet(root: Path, out: Path, **kw) -> FleetSummary:
    hooks = {k: kw.pop(k) for k in ("on_result", "on_tick") if k in kw}
    settings = FleetSettings(out, workers=2, **kw)
    return run_fleet(fleet_args(), [root / "site"], settings, **hooks)


def test_two_workers_write_what_plain_replays_write_and_the_corrupt_bag_fails_alone(
    local_ray, archive: tuple[Path, Path], tmp_path: Path
) -> None:
    root, plain = archive
    summary = fleet(root, tmp_path / "out")
    assert sorted(summary.done) == sorted(NAMES - {"corrupt"})
    assert list(summary.failed) == ["corrupt"] and "cut off" in summary.failed["corrupt"]
    assert summary.interrupted is False and summary.complete is False
    assert len(summary.workers) == 2  # both workers replayed bags
    for name in NAMES:
        same_outputs(tmp_path / "out", name, plain)
    manifest = Manifest.load(tmp_path / "out")
    assert {n: e.status for n, e in manifest.entries.items()} == {
        n: "failed" if n == "corrupt" else "done" for n in NAMES
    }
    assert "cut off" in (manifest.entries["corrupt"].error or "")
    rows = read_table(tmp_path / "out" / "fleet.parquet")
    per_bag = {n: sum(r["bag"].endswith(f"/{n}") for r in rows) for n in NAMES}
    assert per_bag == {n: e.frames for n, e in manifest.entries.items()}
    assert 0 < per_bag["corrupt"] < ARCHIVE["corrupt"]  # what was read before the cut
    assert all(r["encoder_ms"] > 0 and r["inference_ms"] > 0 for r in rows)
    assert not any((tmp_path / "out" / "work").glob("*"))  # nothing left in progress


def test_a_worker_killed_in_the_middle_of_a_bag_is_retried_and_the_output_is_whole(
    local_ray, archive: tuple[Path, Path], tmp_path: Path
) -> None:
    root, plain = archive
    killed: list[int] = []

    def kill_once(workers) -> None:
        for w in workers:
            if w.bag == "long" and w.frames >= 1 and not killed:
                os.kill(w.pid, signal.SIGKILL)
                killed.append(w.pid)

    summary = fleet(root, tmp_path / "out", on_tick=kill_once)
    assert killed, "the test never saw the long bag in progress"
    assert summary.retried == {"long": 2}
    assert "long" in summary.done
    same_outputs(tmp_path / "out", "long", plain)
    entry = Manifest.load(tmp_path / "out").entries["long"]
    assert entry.attempts == 2 and str(killed[0]) not in entry.worker  # a new process did it
    rows = read_table(tmp_path / "out" / "fleet.parquet")
    frames = [r["frame"] for r in rows if r["bag"].endswith("/long")]
    assert frames == list(range(ARCHIVE["long"]))  # one row per frame, none twice


def test_resume_after_an_interrupted_run_redoes_only_the_unfinished_bags(
    local_ray, archive: tuple[Path, Path], tmp_path: Path
) -> None:
    root, plain = archive
    out = tmp_path / "out"
    finished: list[str] = []

    def ctrl_c_after_two(result) -> None:
        finished.append(result.name)
        if len(finished) == 2:
            raise KeyboardInterrupt

    first = fleet(root, out, on_result=ctrl_c_after_two)
    assert first.interrupted and len(finished) == 2
    assert set(Manifest.load(out).entries) == set(finished)  # exactly the finished bags
    assert sorted(first.not_run) == sorted(NAMES - set(finished))
    assert {r["bag"].rsplit("/", 1)[1] for r in read_table(out / "fleet.parquet")} <= set(finished)
    complete = [n for n in finished if n != "corrupt"]
    times = {n: (out / "bags" / n / f"{n}.mcap").stat().st_mtime_ns for n in complete}

    with pytest.raises(FleetError, match="--resume"):
        fleet(root, out)  # another run into the same folder must say so
    second = fleet(root, out, resume=True)
    assert sorted(second.skipped) == sorted(complete)
    assert sorted([*second.done, *second.failed]) == sorted(NAMES - set(complete))
    assert {n: (out / "bags" / n / f"{n}.mcap").stat().st_mtime_ns for n in complete} == times
    for name in NAMES:
        same_outputs(out, name, plain)
    bags = {r["bag"].rsplit("/", 1)[1] for r in read_table(out / "fleet.parquet")}
    assert bags == NAMES


def test_workers_are_what_the_cluster_holds(local_ray) -> None:
    from segfast_ros.fleet.pool import RayPool

    def pool(**kw):
        base = {"address": None, "workers": None, "cpus_per_worker": 1.0}
        return RayPool(fleet_args(), **{**base, "gpus_per_worker": 0.0, "max_retries": 1, **kw})

    assert pool().workers == 2  # two CPUs
    many = pool(workers=5)
    assert many.workers == 2 and "--workers 5 asked, 2 fit" in many.label
    with pytest.raises(FleetError, match="no worker fits the Ray cluster .*0 GPUs"):
        pool(gpus_per_worker=1.0)
    with pytest.raises(FleetError, match="no worker fits"):
        pool(cpus_per_worker=3.0)
