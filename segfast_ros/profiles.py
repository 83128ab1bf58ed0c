"""Platform profiles: which ``config/profiles/<name>.yaml`` layer a launch uses.

``profile:=auto`` reads ``/proc/device-tree/model`` (Jetson boards name themselves there, e.g.
``NVIDIA Jetson AGX Orin Developer Kit``) and falls back to ``cpu``. Plain Python, no ROS, so
the launch files import it and tests check the mapping.
"""

from __future__ import annotations

from pathlib import Path

#: Profiles shipped in ``config/profiles/``.
PROFILES = ("cpu", "orin_nano", "orin_nx", "orin_agx", "x86_gpu")
#: Where Linux exposes the board name on device-tree machines (Jetson, Raspberry Pi, ...).
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
FALLBACK = "cpu"

#: Device-tree substrings (lower case) to profile, most specific first: "orin nano" must win
#: over a bare "orin".
_MODEL_PATTERNS = (
    ("agx orin", "orin_agx"),
    ("orin agx", "orin_agx"),
    ("orin nx", "orin_nx"),
    ("orin nano", "orin_nano"),
)


def profile_for_model(model: str) -> str:
    """The profile for a device-tree model string; :data:`FALLBACK` when it is not an Orin.

    Args:
        model: contents of ``/proc/device-tree/model`` (a trailing NUL is allowed).
    """
    text = " ".join(model.replace("\0", " ").lower().split())
    for pattern, profile in _MODEL_PATTERNS:
        if pattern in text:
            return profile
    return FALLBACK


def detect_profile(model_file: str | Path = DEVICE_TREE_MODEL) -> str:
    """The profile for this machine (:func:`profile_for_model` of ``model_file``, if readable)."""
    try:
        return profile_for_model(Path(model_file).read_text(errors="replace"))
    except OSError:  # x86 and other machines without a device tree
        return FALLBACK


def resolve_profile(
    value: str, profiles_dir: str | Path, model_file: str | Path = DEVICE_TREE_MODEL
) -> Path | None:
    """The parameter file a launch ``profile`` argument names.

    Args:
        value: ``auto``, a name in :data:`PROFILES`, a path to a YAML file, or ``""``/``none``
            for no profile layer.
        profiles_dir: the installed ``config/profiles`` folder.
        model_file: device-tree model file for ``auto``.

    Raises:
        ValueError: neither a known name nor an existing file (lists the names).
    """
    value = value.strip()
    if value.lower() in ("", "none"):
        return None
    name = detect_profile(model_file) if value == "auto" else value
    if name in PROFILES:
        return Path(profiles_dir) / f"{name}.yaml"
    path = Path(value).expanduser()
    if path.is_file():
        return path
    raise ValueError(
        f"unknown profile {value!r}: expected auto, none, one of {list(PROFILES)} or a "
        "parameter file path"
    )


def parse_cameras(spec: str) -> list[tuple[str, str]]:
    """``name:topic`` pairs from the multi-camera launch argument.

    Args:
        spec: comma-separated ``name:topic``, e.g.
            ``front:/front/color/image_raw,rear:/rear/color/image_raw``. Each name becomes the
            node's namespace.

    Raises:
        ValueError: an empty list, an entry without ``:``, a name that is not a valid ROS
            namespace token, or a repeated name.
    """
    cameras = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name, sep, topic = entry.partition(":")
        name, topic = name.strip(), topic.strip()
        if not sep or not topic:
            raise ValueError(f"camera {entry!r}: expected name:topic")
        if not (name.replace("_", "a").isalnum() and not name[0].isdigit()):
            raise ValueError(
                f"camera name {name!r} must be letters, digits and _ (not first): it "
                "becomes the node's namespace"
            )
        cameras.append((name, topic))
    names = [n for n, _ in cameras]
    if not cameras:
        raise ValueError("no cameras: expected name:topic[,name:topic...]")
    if len(set(names)) != len(names):
        raise ValueError(f"camera names repeat: {names}")
    return cameras
