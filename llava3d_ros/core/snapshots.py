"""Where snapshots may live: one directory, files named by the caller, nothing else.

A memory service reachable over DDS must not become a way to write or probe arbitrary
files. Before this rule, ``save_memory`` overwrote any file the node could write (an
unrelated file, a device node through ``os.replace``, paths relative to the working
directory, new directory trees) and ``load_memory``'s errors told whether a path existed.

Rules (:class:`SnapshotDirectory`):
- a request names a snapshot: 1-64 characters of letters, digits, ``.``, ``_``, ``-``,
  no leading dot (so no ``..`` and no hidden files), no separators; ``.safetensors`` is
  appended when missing;
- the file is ``<dir>/<name>.safetensors``; a symlink there, or anything that is not a
  regular file, is refused, as is a regular file that is not a snapshot (no llava3d_ros
  header): saving never replaces what it did not write;
- writes go to a temporary file in the directory and are renamed over the target
  (atomic on POSIX), so a crash leaves the old snapshot or the new one, never half of one;
- errors name the snapshot, not the file system: "no snapshot 'x'" whether the file is
  missing or unreadable for another reason.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

__all__ = ["SUFFIX", "SnapshotDirectory", "SnapshotNameError", "default_snapshot_dir"]

SUFFIX = ".safetensors"
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
_META_KEY = "llava3d_ros"


class SnapshotNameError(ValueError):
    """A snapshot name that breaks the naming rule, or a file that must not be touched."""


def default_snapshot_dir() -> Path:
    """``$ROS_HOME/llava3d/snapshots`` (ROS_HOME defaults to ``~/.ros``)."""
    home = os.environ.get("ROS_HOME") or str(Path.home() / ".ros")
    return Path(home) / "llava3d" / "snapshots"


def _is_snapshot_file(path: Path) -> bool:
    """A safetensors file whose metadata carries the llava3d_ros header (read cheaply:
    the 8-byte length and the JSON header only)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 100_000_000:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and _META_KEY in meta


class SnapshotDirectory:
    """The node's snapshot directory (created on first use)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(directory) if directory else default_snapshot_dir()
        self.root = Path(os.path.abspath(self.root))

    def path_for(self, name: str) -> Path:
        """The file of snapshot ``name`` (validated; the file need not exist)."""
        name = name or "memory"
        base = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
        if not _NAME.match(base):
            raise SnapshotNameError(
                f"bad snapshot name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                "(no path separators, no leading dot)"
            )
        return self.root / f"{base}{SUFFIX}"

    def for_writing(self, name: str) -> Path:
        """Where to save ``name``: refuses to replace anything but a regular snapshot."""
        path = self.path_for(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return path
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotNameError(f"'{path.name}' exists and is not a regular snapshot file")
        if not _is_snapshot_file(path):
            raise SnapshotNameError(f"'{path.name}' exists and is not a llava3d_ros snapshot")
        return path

    def for_reading(self, name: str) -> Path:
        """The existing regular snapshot file ``name`` (no symlinks)."""
        path = self.path_for(name)
        try:
            st = os.lstat(path)
        except OSError:
            raise SnapshotNameError(f"no snapshot {name or 'memory'!r}") from None
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotNameError(f"no snapshot {name or 'memory'!r}")
        return path

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name[: -len(SUFFIX)]
            for p in self.root.iterdir()
            if p.name.endswith(SUFFIX) and p.is_file() and not p.is_symlink()
        )
