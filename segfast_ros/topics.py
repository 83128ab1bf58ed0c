"""Topic names as image_transport gives them: standard library only.

The launch files (through :mod:`segfast_ros.ros.launch_args`) and the offline replay both
default a camera's ``camera_info`` topic to the one beside its image topic, as RGB-D drivers
publish them (``/camera/color/image_raw`` and ``/camera/color/camera_info``).
"""

from __future__ import annotations

#: image_transport's sub-topics of a raw image topic (``<image>/compressed``, ...).
TRANSPORT_SUFFIXES: tuple[str, ...] = ("/compressed", "/compressedDepth", "/theora", "/zstd")


def camera_info_sibling(image_topic: str) -> str:
    """The ``camera_info`` topic next to an image topic, as image_transport names it.

    ``/cam/color/image_raw`` and ``/cam/color/image_raw/compressed`` ->
    ``/cam/color/camera_info``; a relative ``image`` -> ``camera_info``.
    """
    topic = image_topic.rstrip("/")
    for suffix in TRANSPORT_SUFFIXES:
        if topic.endswith(suffix):
            topic = topic[: -len(suffix)]
            break
    base, sep, _ = topic.rpartition("/")
    return f"{base}{sep}camera_info" if sep else "camera_info"
