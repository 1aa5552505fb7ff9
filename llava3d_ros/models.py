"""Where the project's own small models live: ``models/`` in a source checkout (editable
installs), ``share/llava3d_ros/models`` in an installed package (colcon, pip)."""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_HEAD = Path("default_head") / "head.safetensors"


def models_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "models", Path(sys.prefix) / "share" / "llava3d_ros" / "models"]
    try:  # a ROS install: the package's share directory
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("llava3d_ros")) / "models")
    except Exception:  # not installed with colcon, or no ament_index_python
        pass
    return [p for p in candidates if p.is_dir()]


def default_head_path() -> Path | None:
    """The shipped DINOv2 -> MiniLM alignment head, or None if this install lacks it."""
    for root in models_dirs():
        path = root / DEFAULT_HEAD
        if path.is_file():
            return path
    return None
