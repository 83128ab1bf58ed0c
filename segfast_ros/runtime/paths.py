"""Where model files are found: the working directory, the installed package, the source tree."""

from __future__ import annotations

from pathlib import Path

#: The project's own demo model (synthetic scenes only), a folder under ``models/``.
DEMO_MODEL = "demo"
#: The demo model's object-discovery detector, relative to ``models/``.
DEMO_DETECTOR = "demo/detector.onnx"


def resolve_model_path(path: str | Path) -> Path:
    """A model file or folder: as given if it exists, else under the package's ``models/``.

    Looks in the current directory (or the absolute path), the installed share folder
    (``share/segfast_ros/models``, when ament_index is importable) and the source tree's
    ``models/``; returns the first that exists, or the path as given (whose loader then names
    it in its error).
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
    return next((c for c in candidates if c.exists()), given)
