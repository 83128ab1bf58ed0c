"""Where model files are found: the working directory, the installed package, the source tree."""

from __future__ import annotations

from pathlib import Path

#: The project's own demo model (synthetic scenes only), a folder under ``models/``.
DEMO_MODEL = "demo"
#: The demo model's object-discovery detector, relative to ``models/``.
DEMO_DETECTOR = f"{DEMO_MODEL}/detector.onnx"


def model_candidates(path: str | Path) -> list[Path]:
    """Where a model file or folder may be, in lookup order.

    The path as given (the current directory, or absolute), then for a relative path the
    installed share folder (``share/segfast_ros/models``, when ament_index is importable) and
    the source tree's ``models/``.
    """
    given = Path(path).expanduser()
    candidates = [given]
    if not given.is_absolute():
        try:
            from ament_index_python.packages import get_package_share_directory

            candidates.append(Path(get_package_share_directory("segfast_ros")) / "models" / given)
        except (ImportError, LookupError, ValueError, OSError):  # no ROS environment
            pass
        candidates.append(Path(__file__).resolve().parents[2] / "models" / given)
    return candidates


def resolve_model_path(path: str | Path) -> Path:
    """A model file or folder: the first of :func:`model_candidates` that exists, or the path
    as given (whose loader then names it in its error)."""
    candidates = model_candidates(path)
    return next((c for c in candidates if c.exists()), candidates[0])
