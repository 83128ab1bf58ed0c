"""The fleet run's manifest (segfast_ros.fleet.manifest): saved atomically, read back, refused
with a clear message when damaged, and asked which bags are done (and why the others are not)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from segfast_ros.fleet import manifest as manifest_module
from segfast_ros.fleet.manifest import (
    MANIFEST,
    BagEntry,
    Manifest,
    ManifestError,
    config_fingerprint,
    output_entry,
)


def outputs(out: Path, name: str) -> dict[str, dict]:
    """Real output files of bag ``name`` in ``out``, and their entries."""
    bag = out / "bags" / name
    bag.mkdir(parents=True)
    (bag / f"{name}_0.mcap").write_bytes(b"m" * 300)
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    (out / "coco").mkdir(exist_ok=True)
    (out / "coco" / f"{name}.json").write_text("[]")
    return {
        "bag": output_entry(out, bag),
        "coco": output_entry(out, out / "coco" / f"{name}.json"),
    }


def entry(out: Path, name: str = "drive_a", **kw) -> BagEntry:
    values = {
        "name": name,
        "input": f"/data/{name}",
        "fingerprint": "f" * 64,
        "config": "c" * 64,
        "status": "done",
        "outputs": outputs(out, name),
        "frames": 120,
        "instances": 345,
        "wall_s": 12.5,
        "worker": "worker 1 (pid 1234 on 10.0.0.2)",
    }
    values.update(kw)
    return BagEntry(**values)


def write_entries(out: Path, entries: dict) -> None:
    data = {"format": "segfast-fleet-manifest", "version": 1, "entries": entries}
    (out / MANIFEST).write_text(json.dumps(data))


def test_entries_round_trip_through_the_file(tmp_path: Path) -> None:
    a = entry(tmp_path)
    assert BagEntry.from_json(a.to_json()) == a
    failed = entry(tmp_path, "drive_b", status="failed", error="BagError: corrupt", attempts=3)
    m = Manifest(tmp_path)
    m.record(a)
    m.record(failed)
    assert a.finished.endswith("+00:00") and "T" in a.finished  # ISO 8601, UTC
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert data["format"] == "segfast-fleet-manifest" and data["version"] == 1
    assert list(data["entries"]) == ["drive_a", "drive_b"]
    assert data["entries"]["drive_a"]["outputs"]["bag"] == {"path": "bags/drive_a", "size": 332}
    loaded = Manifest.load(tmp_path)
    assert loaded.entries == {"drive_a": a, "drive_b": failed}
    assert not (tmp_path / f"{MANIFEST}.tmp").exists()


def test_a_missing_manifest_is_empty(tmp_path: Path) -> None:
    assert Manifest.load(tmp_path / "fresh").entries == {}


def test_record_replaces_the_bags_entry_and_keeps_its_time(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.record(entry(tmp_path, status="failed", error="boom"))
    retried = BagEntry(**{**m.entries["drive_a"].to_json(), "status": "done", "error": None})
    retried.finished = "2030-01-01T00:00:00+00:00"
    m.record(retried)
    (only,) = Manifest.load(tmp_path).entries.values()
    assert only.status == "done" and only.finished == "2030-01-01T00:00:00+00:00"


def test_save_is_atomic(tmp_path: Path, monkeypatch) -> None:
    m = Manifest(tmp_path)
    m.record(entry(tmp_path))
    before = (tmp_path / MANIFEST).read_bytes()
    calls: list[str] = []
    real_replace, real_fsync = os.replace, os.fsync

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append("replace")
        # What is renamed into place is already whole, and the old file is still there.
        assert json.loads(Path(src).read_text())["entries"].keys() == {"drive_a", "drive_b"}
        assert (tmp_path / MANIFEST).read_bytes() == before
        raise OSError("disk gone")  # killed at the worst moment

    monkeypatch.setattr(manifest_module.os, "fsync", fsync)
    monkeypatch.setattr(manifest_module.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        m.record(entry(tmp_path, "drive_b"))
    assert calls == ["fsync", "replace"]  # synced to disk before it replaces the old one
    assert (tmp_path / MANIFEST).read_bytes() == before
    assert list(Manifest.load(tmp_path).entries) == ["drive_a"]
    monkeypatch.setattr(manifest_module.os, "replace", real_replace)
    m.save()
    assert list(Manifest.load(tmp_path).entries) == ["drive_a", "drive_b"]


# ------------------------------------------------------------------------------- complete


def test_complete_says_why_not(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    fp, cfg = "f" * 64, "c" * 64
    assert m.complete("drive_a", fp, cfg) == (False, "not replayed yet")
    m.record(entry(tmp_path, status="failed", error="BagError: cut off at frame 7"))
    assert m.complete("drive_a", fp, cfg) == (
        False,
        "failed last time: BagError: cut off at frame 7",
    )
    m.record(entry(tmp_path, "drive_b"))
    assert m.complete("drive_b", fp, cfg) == (True, "done")
    assert m.complete("drive_b", "e" * 64, cfg) == (False, "the input changed")
    assert m.complete("drive_b", fp, "d" * 64) == (False, "the settings or model changed")

    loaded = Manifest.load(tmp_path)  # what --resume sees
    assert loaded.complete("drive_b", fp, cfg) == (True, "done")
    data = tmp_path / "bags" / "drive_b" / "drive_b_0.mcap"
    data.write_bytes(b"m" * 299)
    assert loaded.complete("drive_b", fp, cfg) == (
        False,
        "output bags/drive_b size differs (331 bytes, 332 recorded)",
    )
    data.write_bytes(b"m" * 300)
    assert loaded.complete("drive_b", fp, cfg)[0]
    (tmp_path / "coco" / "drive_b.json").unlink()
    assert loaded.complete("drive_b", fp, cfg) == (False, "output coco/drive_b.json is missing")


# ------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"format": "segfast-fleet-manifest", "version": 1, "entr', "not JSON"),
        ("[1, 2]", "not a fleet manifest"),
        ('{"format": "something else", "version": 1, "entries": {}}', "not a fleet manifest"),
        ('{"format": "segfast-fleet-manifest", "version": 7, "entries": {}}', "version 7, this"),
        ('{"format": "segfast-fleet-manifest", "version": 1, "entries": []}', '"entries" is not'),
    ],
)
def test_a_damaged_manifest_is_refused(tmp_path: Path, content: str, why: str) -> None:
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(ManifestError) as err:
        Manifest.load(tmp_path)
    text = str(err.value)
    assert text.startswith(f"cannot read the fleet manifest {tmp_path / MANIFEST}: {why}")
    assert text.endswith("Delete it to replay every bag again, or use a fresh --out folder")


def test_a_malformed_entry_is_named(tmp_path: Path) -> None:
    good = entry(tmp_path).to_json()
    cases = [
        ({k: v for k, v in good.items() if k != "fingerprint"}, "has no 'fingerprint'"),
        ({**good, "frames": "120"}, "'frames' is '120', expected an integer"),
        ({**good, "attempts": True}, "'attempts' is True, expected an integer"),
        ({**good, "error": 3}, "'error' is 3, expected a string or null"),
        ({**good, "status": "running"}, "status 'running', expected one of ('done', 'failed')"),
        (
            {**good, "outputs": {"bag": {"size": 3}}},
            "output 'bag' is {'size': 3}, expected {\"path\"",
        ),
        (
            {**good, "outputs": {"bag": {"path": "b", "size": 1.5}}},
            "'bag' is {'path': 'b', 'size': 1.5}, expected",
        ),
        ({**good, "name": "other"}, "entry 'drive_a' is named 'other'"),
        ("text", "an entry is a str, expected an object"),
    ]
    for raw, why in cases:
        write_entries(tmp_path, {"drive_a": raw})
        with pytest.raises(ManifestError, match="Delete it") as err:
            Manifest.load(tmp_path)
        assert why in str(err.value), (why, str(err.value))
    # A newer run's extra keys are read past; a whole-number wall time is a float.
    extra = {**good, "gpu": "H200", "wall_s": 3}
    write_entries(tmp_path, {"drive_a": extra})
    assert Manifest.load(tmp_path).entries["drive_a"].wall_s == 3.0


# -------------------------------------------------------------------- fingerprints, outputs


def test_config_fingerprint(tmp_path: Path) -> None:
    model = tmp_path / "model" / "encoder.onnx"
    model.parent.mkdir()
    model.write_bytes(b"weights v1")
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("- point: [1, 2]\n")
    settings = {"topic": "/cam/image_raw", "segevery": {"points_per_side": 16}, "dir": tmp_path}
    base = config_fingerprint(settings, [model, prompts])
    assert len(base) == 64
    assert config_fingerprint(dict(reversed(settings.items())), [model, prompts]) == base
    assert config_fingerprint({**settings, "segevery": {"points_per_side": 8}}, [model]) != base
    assert config_fingerprint({**settings, "topic": "/other"}, [model, prompts]) != base
    assert config_fingerprint(settings, [prompts, model]) != base  # order matters
    assert config_fingerprint(settings, [model]) != base
    moved = tmp_path / "elsewhere" / "encoder.onnx"
    moved.parent.mkdir()
    moved.write_bytes(b"weights v1")
    assert config_fingerprint(settings, [moved, prompts]) == base  # content, not place
    model.write_bytes(b"weights v2")
    assert config_fingerprint(settings, [model, prompts]) != base
    (model.parent / "encoder.onnx.data").write_bytes(b"external data")
    with_data = config_fingerprint(settings, [model, prompts])
    (model.parent / "encoder.onnx.data").write_bytes(b"external data, retrained")
    assert config_fingerprint(settings, [model, prompts]) != with_data
    gone_a = config_fingerprint(settings, [tmp_path / "a.onnx"])
    assert gone_a != config_fingerprint(settings, [tmp_path / "b.onnx"])
    assert gone_a == config_fingerprint(settings, [tmp_path / "a.onnx"])


def test_output_entry(tmp_path: Path) -> None:
    files = outputs(tmp_path, "x")
    assert files == {
        "bag": {"path": "bags/x", "size": 300 + len("rosbag2_bagfile_information: {}\n")},
        "coco": {"path": "coco/x.json", "size": 2},
    }
    with pytest.raises(ValueError, match="is not inside the output folder"):
        output_entry(tmp_path / "coco", tmp_path / "bags" / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        output_entry(tmp_path, tmp_path / "summaries" / "x.json")
