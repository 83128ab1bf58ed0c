"""The bags of a fleet run (segfast_ros.fleet.inputs): found in folders and list files, named
uniquely, counted from their metadata and fingerprinted; real rosbag2 bags written with rosbags."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from replay_bags import TOPIC, write_bag

from segfast_ros.fleet.inputs import (
    EDGE,
    InputError,
    collect_inputs,
    fingerprint,
    frame_count,
    safe_name,
)
from segfast_ros.replay.bags import write_image_bag

FRAMES = [np.full((32, 32, 3), i * 50, np.uint8) for i in range(2)]


def bag(path: Path, storage: str = "mcap") -> Path:
    """A real 2-frame 32x32 camera bag at ``path`` (parents made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image_bag(path, FRAMES, storage=storage)
    return path


def lone_mcap(path: Path, tmp: Path) -> Path:
    """A bag's single .mcap file, alone at ``path``."""
    folder = bag(tmp / f"src_{path.stem}")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(next(folder.glob("*.mcap")), path)
    return path


def files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def by_name(inputs: list) -> dict:
    return {b.name: b for b in inputs}


# ---------------------------------------------------------------------------- finding bags


def test_a_folder_of_bags_is_searched_recursively(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    bag(root / "2024-05-01" / "drive_a")
    bag(root / "2024-05-01" / "deep" / "deeper" / "drive_b", storage="sqlite3")
    lone_mcap(root / "loose.mcap", tmp_path)
    bag(root / ".trash" / "old")  # hidden: skipped
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a bag\n")
    inner = bag(root / "drive_c")
    bag(inner / "nested_bag")  # inside a bag folder: not searched

    found = collect_inputs([root])
    assert [b.name for b in found] == ["drive_b", "drive_a", "drive_c", "loose"]
    named = by_name(found)
    assert named["drive_b"].path == root / "2024-05-01" / "deep" / "deeper" / "drive_b"
    assert named["loose"].path == root / "loose.mcap"
    for b in found:
        assert b.path.is_absolute()
        expected = b.path.stat().st_size if b.path.is_file() else files_size(b.path)
        assert b.size == expected > 0
    assert named["drive_c"].size == files_size(inner)  # everything in the folder counts


def test_single_bags_relative_paths_and_duplicates(tmp_path: Path, monkeypatch) -> None:
    one = bag(tmp_path / "one")
    lone = lone_mcap(tmp_path / "two.mcap", tmp_path)
    monkeypatch.chdir(tmp_path)
    found = collect_inputs(["one", str(lone), one / "metadata.yaml", tmp_path / "one", "two.mcap"])
    assert [(b.name, b.path) for b in found] == [("one", one), ("two", lone)]


def test_a_bag_with_corrupt_data_is_still_an_input(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("::: this is { not yaml\n")
    (broken / "broken_0.mcap").write_bytes(os.urandom(500))
    good = bag(tmp_path / "good")
    found = collect_inputs([tmp_path])
    assert [(b.name, b.path) for b in found] == [("broken", broken), ("good", good)]
    assert found[0].size == 500 + len("::: this is { not yaml\n")
    assert frame_count(broken, None) is None


def test_a_list_file(tmp_path: Path) -> None:
    a = bag(tmp_path / "bags" / "a")
    b = bag(tmp_path / "elsewhere" / "b")
    c = bag(tmp_path / "folder" / "x" / "c")
    more = tmp_path / "more.txt"
    more.write_text(f"{b}\n")
    listing = tmp_path / "lists" / "fleet.txt"
    listing.parent.mkdir()
    listing.write_text(
        "# the May drives\n"
        "\n"
        "../bags/a   # relative to the list's folder\n"
        f"   {b}   \n"
        "../folder\n"
        "../more.txt\n"
        "  # indented comment\n"
        "../bags/a/metadata.yaml\n"
    )
    found = collect_inputs([listing])
    assert [(x.name, x.path) for x in found] == [("a", a), ("b", b), ("c", c)]


def test_a_list_that_names_itself_is_read_once(tmp_path: Path) -> None:
    a = bag(tmp_path / "a")
    listing = tmp_path / "self.txt"
    listing.write_text(f"{a}\nself.txt\n")
    assert [x.path for x in collect_inputs([listing, listing])] == [a]


# ---------------------------------------------------------------------------------- names


def test_clashing_names_take_parent_folders(tmp_path: Path) -> None:
    r1 = bag(tmp_path / "run1" / "bag")
    r2 = bag(tmp_path / "run2" / "bag")
    d1 = bag(tmp_path / "site_a" / "day" / "cam")
    d2 = bag(tmp_path / "site_b" / "day" / "cam")
    alone = bag(tmp_path / "other" / "unique")
    found = collect_inputs([r1, r2, d1, d2, alone])
    assert [b.name for b in found] == [
        "run1__bag",
        "run2__bag",
        "site_a__day__cam",
        "site_b__day__cam",
        "unique",
    ]
    # Stable: the same inputs give the same names, in any order of the command line.
    again = by_name(collect_inputs([alone, d2, r2, d1, r1]))
    assert {n: b.path for n, b in again.items()} == {b.name: b.path for b in found}


def test_names_that_clash_only_in_case_or_once_made_safe(tmp_path: Path) -> None:
    upper = bag(tmp_path / "x" / "Drive")
    lower = bag(tmp_path / "y" / "drive")
    spaced = bag(tmp_path / "p" / "my drive")
    underscored = bag(tmp_path / "q" / "my_drive")
    names = [b.name for b in collect_inputs([upper, lower, spaced, underscored])]
    assert names == ["x__Drive", "y__drive", "p__my_drive", "q__my_drive"]


def test_a_file_and_a_folder_of_the_same_name_are_numbered(tmp_path: Path) -> None:
    folder = bag(tmp_path / "drive")
    file = lone_mcap(tmp_path / "drive.mcap", tmp_path / "src")
    found = collect_inputs([folder, file])
    assert [b.name for b in found] == ["drive", "drive__2"]
    assert len({b.name.casefold() for b in found}) == 2


def test_names_are_safe_file_names(tmp_path: Path) -> None:
    assert safe_name(".hidden") == "hidden"
    assert safe_name("a/b\\c d:e") == "a_b_c_d_e"
    assert safe_name("...") == "bag"
    hidden = bag(tmp_path / ".cache bag")
    (found,) = collect_inputs([hidden])  # named explicitly: taken, and named safely
    assert found.name == "cache_bag"
    deep = tmp_path.joinpath(*["level_with_a_long_name"] * 8)
    long_a, long_b = bag(deep / "a" / "bag"), bag(deep / "b" / "bag")
    names = [b.name for b in collect_inputs([long_a, long_b])]
    assert names == ["a__bag", "b__bag"]
    long = bag(tmp_path / ("x" * 200))
    (found,) = collect_inputs([long])
    assert len(found.name) <= 150 and found.name.startswith("x")


# --------------------------------------------------------------------------------- errors


def test_bad_inputs_name_the_path_and_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no inputs given; expected a rosbag2 folder"):
        collect_inputs([])
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match=rf"input {missing} does not exist; expected a rosbag2"):
        collect_inputs([missing])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=rf"folder {empty} holds no bag.*holds nothing"):
        collect_inputs([empty])
    (empty / "sub").mkdir()
    (empty / "sub" / "notes.txt").write_text("x")
    (empty / "image.png").write_bytes(b"x")
    with pytest.raises(InputError, match=r"holds no bag.*\['image.png', 'sub'\]"):
        collect_inputs([empty])


def test_bad_list_files(tmp_path: Path) -> None:
    listing = tmp_path / "bags.txt"
    listing.write_text("# nothing yet\n\n   \n")
    with pytest.raises(InputError, match=rf"list file {listing} lists no bag"):
        collect_inputs([listing])
    bag(tmp_path / "real")
    listing.write_text("real\n\nmissing_bag\n")
    with pytest.raises(InputError) as err:
        collect_inputs([listing])
    assert str(err.value).startswith(
        f"input {tmp_path / 'missing_bag'} (line 3 of list {listing}) does not exist"
    )
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(InputError, match="neither a bag nor a readable text list"):
        collect_inputs([binary])


def test_files_that_are_not_bags(tmp_path: Path) -> None:
    ros1 = tmp_path / "old.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(InputError, match="ROS 1 bag; convert it to rosbag2 first"):
        collect_inputs([ros1])
    sqlite = bag(tmp_path / "s", storage="sqlite3")
    wal = sqlite / "s.db3-wal"
    wal.write_bytes(b"x")
    with pytest.raises(InputError, match=rf"part of a sqlite3 bag.*pass its folder \({sqlite}\)"):
        collect_inputs([wal])


# ---------------------------------------------------------------------------- frame_count


def test_frame_count_from_metadata(tmp_path: Path) -> None:
    one = bag(tmp_path / "one")
    assert frame_count(one, None) == 2
    assert frame_count(one, "/camera/image_raw") == 2
    assert frame_count(one, "/other") is None
    several = tmp_path / "several"  # /cam/image_raw, /cam2/image_raw and /status
    write_bag(several, 3, images=[FRAMES[0]] * 3)
    assert frame_count(several, None) is None
    assert frame_count(several, TOPIC) == 3
    assert frame_count(several, "/status") == 3
    assert frame_count(lone_mcap(tmp_path / "lone.mcap", tmp_path), None) is None
    assert frame_count(tmp_path / "gone", None) is None


def test_frame_count_of_unusable_metadata_is_unknown(tmp_path: Path) -> None:
    folder = bag(tmp_path / "b")
    meta = folder / "metadata.yaml"
    for text in ("{not: [yaml", "- a list\n", "rosbag2_bagfile_information: 3\n", ""):
        meta.write_text(text)
        assert frame_count(folder, None) is None
    meta.write_text(
        "rosbag2_bagfile_information:\n  topics_with_message_count:\n"
        "  - message_count: many\n    topic_metadata: {name: /c, type: sensor_msgs/msg/Image}\n"
    )
    assert frame_count(folder, None) is None
    meta.write_bytes(b"\xff\xfe garbage")
    assert frame_count(folder, "/c") is None


# ---------------------------------------------------------------------------- fingerprint


def test_fingerprint_follows_the_content(tmp_path: Path) -> None:
    folder = bag(tmp_path / "b")
    first = fingerprint(folder)
    assert len(first) == 64 and fingerprint(folder) == first
    copy = tmp_path / "copy" / "b"
    shutil.copytree(folder, copy)
    assert fingerprint(copy) == first  # moved or copied: the same bag
    (data,) = folder.glob("*.mcap")
    original = data.read_bytes()
    seen = {first}

    def changed() -> str:
        now = fingerprint(folder)
        assert now not in seen
        seen.add(now)
        return now

    with data.open("ab") as f:
        f.write(b"appended")
    changed()
    data.write_bytes(original[:-10])  # truncated
    changed()
    data.write_bytes(original)
    assert fingerprint(folder) == first
    (folder / "b_1.mcap").write_bytes(b"a second file")
    changed()
    (folder / "b_1.mcap").rename(folder / "b_2.mcap")
    changed()
    (folder / "b_2.mcap").unlink()
    assert fingerprint(folder) == first
    data.write_bytes(bytes([original[0] ^ 1]) + original[1:])  # re-recorded, same size
    changed()


def test_fingerprint_of_a_big_file_reads_its_ends(tmp_path: Path) -> None:
    big = tmp_path / "big.mcap"
    size = 3 * EDGE + 12345
    content = bytearray(np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes())
    big.write_bytes(content)
    first = fingerprint(big)
    assert fingerprint(big) == first
    for where in (10, EDGE - 1, size - EDGE, size - 1):
        edited = bytearray(content)
        edited[where] ^= 0xFF
        big.write_bytes(edited)
        assert fingerprint(big) != first, where
    middle = bytearray(content)
    middle[EDGE + 10 : EDGE + 20] = b"0123456789"  # neither end: not read, by design
    big.write_bytes(middle)
    assert fingerprint(big) == first
    big.write_bytes(content[:-1])
    assert fingerprint(big) != first


def test_fingerprint_of_an_unreadable_bag(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read input bag .*gone.mcap to fingerprint"):
        fingerprint(tmp_path / "gone.mcap")
