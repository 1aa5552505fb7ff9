"""Rolling 3D patch memory: patch features lifted to the map frame and fused per voxel.

- :mod:`.voxel_memory`: :class:`VoxelPatchMemory` (fusion, bounds, eviction, readers,
  snapshots of itself) and its stats;
- :mod:`.hash_table`: the voxel key -> slot index it looks voxels up in;
- :mod:`.pooling`: the spatially even subset behind the language model's scene tokens;
- :mod:`.snapshot_format`: the checked safetensors file both it and the object layer use
  (reading, atomic writing, the limits a loaded memory must fit).
"""

from llava3d_ros.core.memory.snapshot_format import (
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    MemoryLimits,
    SnapshotError,
    read_snapshot,
    snapshot_section,
)
from llava3d_ros.core.memory.voxel_memory import (
    EVICT_AGE,
    EVICT_MAX_VOXELS,
    EVICT_RADIUS,
    EVICT_REASONS,
    EvictStats,
    IntegrateStats,
    MemoryStats,
    MemoryView,
    VoxelPatchMemory,
)

__all__ = [
    "EVICT_AGE",
    "EVICT_MAX_VOXELS",
    "EVICT_RADIUS",
    "EVICT_REASONS",
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_VERSION",
    "EvictStats",
    "IntegrateStats",
    "MemoryLimits",
    "MemoryStats",
    "MemoryView",
    "SnapshotError",
    "VoxelPatchMemory",
    "read_snapshot",
    "snapshot_section",
]
