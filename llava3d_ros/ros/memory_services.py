"""Memory services: ``~/save_memory``, ``~/load_memory``, ``~/clear_memory``, and the
periodic autosave.

Snapshots are named, and live in one directory (``snapshot.dir``; the rule is in
:mod:`llava3d_ros.core.snapshots`). Every request gets a response; a failure says why and
never loses the current memory (load builds the new memory aside and swaps it in only
when it is complete and fits the node's configuration).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from llava3d_interfaces.srv import ClearMemory, LoadMemory, SaveMemory

from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.memory import SnapshotError
from llava3d_ros.core.snapshots import SnapshotDirectory, SnapshotNameError

AUTOSAVE_NAME = "autosave"


class MemoryServices:
    """The memory services of one configuration."""

    def __init__(
        self,
        node: Any,
        pipeline: pl.ScenePipeline,
        directory: SnapshotDirectory,
        callback_group: Any,
    ) -> None:
        self._node = node
        self.pipeline = pipeline
        self.directory = directory
        self._lock = threading.Lock()  # one save or load at a time (autosave included)
        self.last_autosave: float | None = None
        g = callback_group
        self._services = [
            node.create_service(SaveMemory, "~/save_memory", self.save, callback_group=g),
            node.create_service(LoadMemory, "~/load_memory", self.load, callback_group=g),
            node.create_service(ClearMemory, "~/clear_memory", self.clear, callback_group=g),
        ]

    def destroy(self) -> None:
        for srv in self._services:
            self._node.destroy_service(srv)
        self._services = []

    def save_named(self, name: str) -> tuple[int, str]:
        """Save under ``name``; -> (bytes, the snapshot's file name). Raises with a reason."""
        with self._lock:
            path = self.directory.for_writing(name)
            return int(self.pipeline.save(str(path))), path.name

    def load_named(self, name: str) -> int:
        with self._lock:
            return self.pipeline.load(str(self.directory.for_reading(name)))

    def save(self, request: Any, response: Any) -> Any:
        try:
            response.bytes, written = self.save_named(request.name)
        except (SnapshotNameError, SnapshotError, OSError, ValueError, RuntimeError) as exc:
            response.success, response.message = False, f"save failed: {exc}"
            return response
        response.success, response.name = True, written
        response.num_voxels = len(self.pipeline.memory)
        response.message = f"saved {response.num_voxels} voxels to {written}"
        return response

    def load(self, request: Any, response: Any) -> Any:
        try:
            response.num_voxels = self.load_named(request.name)
        except Exception as exc:  # any failure keeps the current memory
            response.success = False
            response.message = f"load failed, memory unchanged: {exc}"
            response.num_voxels = len(self.pipeline.memory)
            return response
        response.success, response.message = True, f"loaded {response.num_voxels} voxels"
        return response

    def clear(self, _request: Any, response: Any) -> Any:
        response.cleared_voxels = self.pipeline.clear()
        response.success, response.message = True, f"cleared {response.cleared_voxels} voxels"
        return response

    def autosave(self) -> None:
        """Save snapshot 'autosave' (timer callback): after a kill -9 the memory comes
        back minus at most one period (``snapshot.load_on_configure: autosave``)."""
        if len(self.pipeline.memory) == 0:
            return
        t0 = time.monotonic()
        try:
            size, _ = self.save_named(AUTOSAVE_NAME)
        except Exception as exc:
            self._node.get_logger().error(f"autosave failed: {exc}", throttle_duration_sec=60.0)
            return
        self.last_autosave = time.time()
        self._node.get_logger().debug(f"autosaved {size} bytes in {time.monotonic() - t0:.2f} s")
