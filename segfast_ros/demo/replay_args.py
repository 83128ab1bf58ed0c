"""The flags that say how a bag is replayed, shared by ``segfast replay`` and
``segfast replay-many`` (:mod:`segfast_ros.fleet`), so that a flag means the same in both and
the fleet's workers build their model and options exactly as ``segfast replay`` does
(:func:`~.run.prepare_replay`).

Each command adds its own flags for where the results go (``replay``: an output bag and side
files; ``replay-many``: one folder for everything).
"""

from __future__ import annotations

import argparse

from ..model_args import MODES, PRECISIONS, add_backend_args


def add_replay_options(p: argparse.ArgumentParser) -> None:
    """The model, the frames taken, SegEvery, 3D, the scripted prompts and the output topics;
    and ``--no-progress``."""
    add_backend_args(p, backend=False)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument(
        "--topic", help="image topic (sensor_msgs/Image or CompressedImage; default: the only one)"
    )
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--every", type=int, default=1, help="process every N-th frame (default 1)")
    pick.add_argument(
        "--rate", type=float, help="process at most HZ frames per second of bag time"
    )
    _add_segevery_args(p)
    _add_depth_args(p)
    p.add_argument(
        "--prompts",
        help="YAML file of scripted calls: SegAny points/boxes, and targets to track (track: "
        "true) or drop (untrack: [ids]), at bag times or stamps",
    )
    p.add_argument("--copy-input", action="store_true", help="copy all input topics through")
    p.add_argument("--overlay-topic", action="store_true", help="also write <ns>/overlay images")
    p.add_argument("--namespace", default="/segfast", help="output topic prefix (the node's)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--no-progress", action="store_true", help="no progress line")


def _add_depth_args(p: argparse.ArgumentParser) -> None:
    """The 3D flags: ``--depth-topic``, ``--camera-info-topic``, ``--depth-info-topic``
    (settings: ``--set depth.<field>``)."""
    p.add_argument(
        "--depth-topic",
        help="depth image aligned to the colour image (sensor_msgs/Image, 16UC1 mm or 32FC1 "
        "m): every instance gets its 3D position, and <ns>/detections_3d is written (with "
        "vision_msgs); paired by header stamp within --set depth.sync_tolerance=S (0.03)",
    )
    p.add_argument(
        "--camera-info-topic",
        help="the colour image's sensor_msgs/CameraInfo (default: the image topic's sibling "
        "camera_info, when the bag has it)",
    )
    p.add_argument(
        "--depth-info-topic",
        help="the depth image's CameraInfo, to scale depth of another resolution (default: the "
        "depth topic's sibling camera_info, when the bag has it)",
    )


def _add_segevery_args(p: argparse.ArgumentParser) -> None:
    """The SegEvery flags: ``--mode``, ``--detector``, ``--segevery-rate``, ``--set``."""
    p.add_argument(
        "--mode",
        choices=MODES,
        default="grid",
        help="SegEvery strategy (object_aware needs --detector, except with the demo model)",
    )
    p.add_argument(
        "--detector",
        help="object-discovery detector ONNX (YOLOv8 output layout; default with the demo "
        "model: its own)",
    )
    p.add_argument(
        "--segevery-rate",
        type=float,
        help="SegEvery on at most HZ processed frames per second of bag time (default: every "
        "processed frame; 0: never, only the encoder and --prompts)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="SegEvery strategy option, e.g. points_per_side=16, a tracking setting, e.g. "
        "tracking.max_targets=4, or a depth setting, e.g. depth.erode_px=2 (as the node's "
        "tracking.* and depth.* parameters; repeatable)",
    )
