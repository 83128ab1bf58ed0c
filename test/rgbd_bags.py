"""RGB-D bags for the replay's depth tests (not a test module): colour, depth and both
CameraInfos as an RGB-D driver records them, from :func:`generate_rgbd_sequence`.

Bag order is arrival order: each depth image and its CameraInfo arrive ``depth_delay`` after
the colour frame (alignment takes time), and their header stamps carry a few milliseconds of
jitter, as a real driver's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import Writer

from segfast_ros.bench.scene_depth import RGBDScene, camera_info_fields, generate_rgbd_sequence
from segfast_ros.pipeline.depth import depth_fields
from segfast_ros.pipeline.image_msgs import image_fields
from segfast_ros.replay.bags import CAMERA_INFO, IMAGE, typestore
from segfast_ros.spatial.camera import CameraModel

COLOUR = "/cam/color/image_raw"
COLOUR_INFO = "/cam/color/camera_info"
DEPTH = "/cam/aligned_depth_to_color/image_raw"
DEPTH_INFO = "/cam/aligned_depth_to_color/camera_info"
T0 = 1_700_000_000_000_000_000  # bag time and stamp of the first colour frame (ns)
DT = 100_000_000  # 10 Hz
HW = (240, 320)
SEED = 3


@dataclass
class RGBDBag:
    """How to write the bag; the defaults are a sound recording.

    Attributes:
        frames: colour frames.
        encoding: the depth image's encoding (16UC1 mm, 32FC1 m, or a wrong one).
        depth_delay: bag time from each colour frame to its depth image (ns).
        jitter: each depth stamp's offset from its colour stamp (ns), cycled.
        stamp_offset: added to every depth stamp (a depth clock that is off).
        depth_scale: the depth image is this fraction of the colour size.
        colour_k_zero, depth_k_zero: write that CameraInfo with K all zero.
        colour_info, depth_info: write that CameraInfo topic at all.
    """

    frames: int = 4
    encoding: str = "16UC1"
    depth_delay: int = 40_000_000
    jitter: tuple[int, ...] = (3_000_000, -4_000_000, 6_000_000, -2_000_000)
    stamp_offset: int = 0
    depth_scale: float = 1.0
    colour_k_zero: bool = False
    depth_k_zero: bool = False
    colour_info: bool = True
    depth_info: bool = True
    scenes: list[RGBDScene] = field(default_factory=list)

    def depth_stamp(self, i: int) -> int:
        return T0 + i * DT + self.jitter[i % len(self.jitter)] + self.stamp_offset


def _header(store: Any, stamp_ns: int, frame_id: str) -> Any:
    types = store.types
    time = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def _info(store: Any, camera: CameraModel, stamp_ns: int, k_zero: bool) -> Any:
    fields = camera_info_fields(camera)
    if k_zero:
        fields["k"] = [0.0] * 9
    roi = store.types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return store.types[CAMERA_INFO](
        header=_header(store, stamp_ns, camera.frame_id),
        **{k: np.asarray(v, dtype=np.float64) if k in "dkrp" else v for k, v in fields.items()},
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def _depth_pixels(spec: RGBDBag, scene: RGBDScene) -> tuple[np.ndarray, CameraModel]:
    """The depth image as written (metres, NaN invalid) and its camera."""
    camera = scene.camera
    depth = scene.depth
    if spec.depth_scale != 1.0:
        h, w = (round(s * spec.depth_scale) for s in depth.shape)
        rows = (np.arange(h) / spec.depth_scale).astype(int)
        cols = (np.arange(w) / spec.depth_scale).astype(int)
        depth = depth[np.ix_(rows, cols)]
        camera = camera.scaled_to((h, w))
    return depth, camera


def _depth_msg(store: Any, spec: RGBDBag, depth: np.ndarray, stamp_ns: int) -> Any:
    header = _header(store, stamp_ns, "camera_color_optical_frame")
    if spec.encoding in ("16UC1", "32FC1"):
        return store.types[IMAGE](header=header, **depth_fields(depth, spec.encoding))
    mono = np.nan_to_num(depth * 50.0).clip(0, 255).astype(np.uint8)  # a wrong encoding
    return store.types[IMAGE](header=header, **image_fields(mono, spec.encoding))


def write_rgbd_bag(path: Path, spec: RGBDBag | None = None) -> RGBDBag:
    """Write the bag; returns ``spec`` with the scenes written (``spec.scenes``)."""
    spec = spec or RGBDBag()
    store = typestore()
    spec.scenes = generate_rgbd_sequence(SEED, spec.frames, HW)
    with Writer(path, version=9) as writer:
        conns = {
            COLOUR: writer.add_connection(COLOUR, IMAGE, typestore=store),
            DEPTH: writer.add_connection(DEPTH, IMAGE, typestore=store),
        }
        for topic, wanted in ((COLOUR_INFO, spec.colour_info), (DEPTH_INFO, spec.depth_info)):
            if wanted:
                conns[topic] = writer.add_connection(topic, CAMERA_INFO, typestore=store)
        for i, scene in enumerate(spec.scenes):
            t, stamp = T0 + i * DT, T0 + i * DT
            depth, depth_camera = _depth_pixels(spec, scene)
            d_stamp = spec.depth_stamp(i)
            messages = [
                (
                    COLOUR,
                    t,
                    store.types[IMAGE](
                        header=_header(store, stamp, scene.camera.frame_id),
                        **image_fields(scene.scene.image, "rgb8"),
                    ),
                ),
                (COLOUR_INFO, t + 1_000, _info(store, scene.camera, stamp, spec.colour_k_zero)),
                (DEPTH, t + spec.depth_delay, _depth_msg(store, spec, depth, d_stamp)),
                (
                    DEPTH_INFO,
                    t + spec.depth_delay + 1_000,
                    _info(store, depth_camera, d_stamp, spec.depth_k_zero),
                ),
            ]
            for topic, bag_time, msg in messages:
                if topic in conns:
                    data = store.serialize_cdr(msg, conns[topic].msgtype)
                    writer.write(conns[topic], bag_time, data)
    return spec
