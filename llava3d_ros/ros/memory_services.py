"""Memory services: ``~/save_memory``, ``~/load_memory``, ``~/clear_memory``.

Every request gets a response; a failure says why and never loses the current memory
(load builds the new memory aside and swaps it in only when it is complete).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llava3d_interfaces.srv import ClearMemory, LoadMemory, SaveMemory

from llava3d_ros.core import pipeline as pl


def default_snapshot_path(configured: str) -> str:
    if configured:
        return configured
    home = os.environ.get("ROS_HOME", str(Path.home() / ".ros"))
    return str(Path(home) / "llava3d" / "memory.safetensors")


class MemoryServices:
    """The three memory services of one configuration."""

    def __init__(
        self,
        node: Any,
        pipeline: pl.ScenePipeline,
        snapshot_path: str,
        callback_group: Any,
        on_cleared: Any = None,
    ) -> None:
        self._node = node
        self.pipeline = pipeline
        self.snapshot_path = snapshot_path
        self._on_cleared = on_cleared
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

    def save(self, request: Any, response: Any) -> Any:
        path = request.path or default_snapshot_path(self.snapshot_path)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            response.bytes = int(self.pipeline.save(path))
        except (OSError, ValueError, RuntimeError) as exc:
            response.success, response.message = False, f"save failed: {exc}"
            return response
        response.success, response.path = True, path
        response.num_voxels = len(self.pipeline.memory)
        response.message = f"saved {response.num_voxels} voxels"
        return response

    def load(self, request: Any, response: Any) -> Any:
        path = request.path or default_snapshot_path(self.snapshot_path)
        try:
            response.num_voxels = self.pipeline.load(path)
        except Exception as exc:  # any failure keeps the current memory
            response.success = False
            response.message = f"load failed, memory unchanged: {exc}"
            response.num_voxels = len(self.pipeline.memory)
            return response
        response.success, response.message = True, f"loaded {response.num_voxels} voxels"
        return response

    def clear(self, _request: Any, response: Any) -> Any:
        response.cleared_voxels = self.pipeline.clear()
        if self._on_cleared is not None:
            self._on_cleared()
        response.success, response.message = True, f"cleared {response.cleared_voxels} voxels"
        return response
