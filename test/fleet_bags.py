"""An archive of bags for the fleet tests, the flags they replay with, and the comparison of a
fleet's outputs with plain ``segfast replay`` runs.

Six bags of demo scenes (the shipped demo model finds their objects) of different lengths, so
that "largest first" has an order; one of them is cut off part-way, as a recording is when the
power goes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from replay_bags import TOPIC, write_bag
from rosbags.rosbag2 import Reader

from segfast_ros.bench.scenes import generate_sequence
from segfast_ros.cli import build_parser
from segfast_ros.replay.bags import typestore

#: name -> frames. "long" is the one a test kills a worker in; "corrupt" is cut off after
#: its first mcap chunk (about 18 frames of 120x160), so it fails part-way.
ARCHIVE = {"long": 60, "a": 3, "b": 5, "c": 4, "d": 6, "corrupt": 30}
#: The replay flags of every fleet test (and of the plain replays they are compared with).
FLAGS = ("--topic", TOPIC, "--mode", "object_aware", "--threads", "1", "--no-progress")
INSTANCE_ARRAY = "segfast_ros/msg/InstanceArray"


def write_archive(root: Path) -> dict[str, Path]:
    """The archive under ``root/site/day*/``: name -> bag folder."""
    bags = {}
    for i, (name, frames) in enumerate(ARCHIVE.items()):
        path = root / "site" / f"day{i % 2}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        images = [f.image for f in generate_sequence(300 + i, frames, (120, 160))]
        write_bag(path, frames, images=images, extra_topics=name != "corrupt")
        bags[name] = path
    (mcap,) = bags["corrupt"].glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: int(mcap.stat().st_size * 0.7)])
    return bags


def fleet_args(*extra: str) -> argparse.Namespace:
    """``segfast replay-many``'s flags as parsed (inputs and --out are given separately)."""
    return build_parser().parse_args(["replay-many", "unused", "--out", "unused", *FLAGS, *extra])


def plain_replay(bag: Path, out: Path) -> Path:
    """``segfast replay`` of one bag into ``out/<bag name>`` with its COCO file beside it;
    returns the output bag."""
    out.mkdir(parents=True, exist_ok=True)
    output = out / bag.name
    argv = ["replay", str(bag), str(output), "--coco", str(out / f"{bag.name}.json"), *FLAGS]
    args = build_parser().parse_args(argv)
    args.func(args)
    return output


def bag_messages(path: Path) -> list[tuple[str, str, int, bytes]]:
    """Every message of a bag as (topic, type, bag time, serialized bytes), with the
    wall-clock timing field (``InstanceArray.segevery_ms``) zeroed first."""
    store = typestore()
    out = []
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            data = bytes(raw)
            if conn.msgtype == INSTANCE_ARRAY:
                msg = store.deserialize_cdr(data, conn.msgtype)
                msg.segevery_ms = 0.0
                data = bytes(store.serialize_cdr(msg, conn.msgtype))
            out.append((conn.topic, conn.msgtype, t, data))
    return out


def same_outputs(fleet_out: Path, name: str, reference: Path) -> None:
    """The fleet's bag and COCO file for ``name`` equal the plain replay's in ``reference``:
    every message byte for byte (timing fields zeroed), the storage file names, and the COCO
    JSON."""
    mine, theirs = fleet_out / "bags" / name, reference / name
    assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in theirs.iterdir())
    ours, expected = bag_messages(mine), bag_messages(theirs)
    assert len(ours) == len(expected) and ours == expected, name
    coco: Any = json.loads((fleet_out / "coco" / f"{name}.json").read_text())
    assert coco == json.loads((reference / f"{name}.json").read_text()), name
