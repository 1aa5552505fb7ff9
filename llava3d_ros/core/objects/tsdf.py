"""TSDF map of the scene geometry, beside the feature memory.

Depth frames are fused into a truncated signed distance field (KinectFusion-style
running average per voxel) held in a block grid: a hash map from block coordinates to
dense ``block_resolution``^3 blocks of voxels with a TSDF (float32, distance /
truncation), a weight and a colour. Two grids implement :class:`BlockGrid` with the same
conventions, so they fuse the same field (``tests/unit/test_scene_geometry.py`` compares
them) and load each other's snapshots: open3d's tensor ``VoxelBlockGrid``
(:mod:`.tsdf_open3d`; the default on the CPU, 1.2-2x faster there) and a torch one
(:mod:`.tsdf_torch`; any torch device, so the geometry runs on a GPU where open3d has no
CUDA, as on every Jetson, and without open3d at all). ``geometry.backend`` chooses;
``auto`` takes open3d where it runs on the geometry device. This module keeps what both
share: the blocks' bookkeeping, the bounds, the surface's post-processing, snapshots. The
fused
surface (zero crossings, with TSDF-gradient normals and colours) is what instance
segmentation reads (:mod:`llava3d_ros.core.objects.segmentation`). Averaging many views
is the point: a point map of the same noisy frames broke into hundreds of fragments.

API: :meth:`TsdfMap.integrate` (depth in metres, 0/NaN/inf invalid; RGB; intrinsics;
``T_map_camera``; stamp; robot position for the radius bound) -> :class:`IntegrationStats`;
:meth:`TsdfMap.surface` -> :class:`SurfacePoints` (a copy); :meth:`TsdfMap.state` /
:meth:`TsdfMap.from_state` (JSON header + numpy arrays for the caller's safetensors
snapshot; no pickle); :meth:`TsdfMap.clear`, ``num_blocks``, ``bounds``.

Choices (measured on rendered rooms, 100 VGA frames, Kinect-like noise; this 2-core CPU):

- uint16 depth (mm, the 16UC1 format itself) + uint8 colour inputs with uint16
  weight/colour storage: 12 bytes a voxel (6 KiB a block of 8^3) instead of 20 with
  float32, and ~5 ms instead of 8-11 ms per frame. Weights are capped at ``max_weight``
  (clipped, with a slack of 16 frames, in the blocks whose weight bound passed it), which
  keeps uint16 from wrapping and lets the map follow moved objects (a capped running mean
  forgets at a rate 1/max_weight). Clipping every touched block every frame cost 32 ms.
- ``sdf_trunc`` 3 voxels (6 cm at 2 cm), measured on 36 rooms with the final segmentation
  (objects' box IoU >= 0.25 / >= 0.5 / over-segmented, clean depth; noisy alike):
  2 voxels 0.981 / 0.935 / 19, 3 voxels 0.991 / 0.958 / 6, 4 voxels 0.963 / 0.847 / 5.
  Longer truncation makes small objects blobby, shorter fragments surfaces. 6 cm is
  still 4x the per-pixel noise at 3 m (sigma 14 mm).
- Bounds: ``max_blocks`` (least recently updated first), ``max_radius_m`` around the
  robot and ``max_age_s`` since a block was last updated. Room is made *before* a frame
  is integrated, so the grid holds at most ``max_blocks`` blocks; open3d's storage starts
  at 2048 blocks and doubles when full (open3d preallocates and zeroes its whole capacity:
  176 MiB and 0.9 s for 30k blocks); the torch grid reserves ``max_blocks`` at once with
  ``torch.empty`` (11 bytes a voxel; host pages are committed as blocks are used).
  Evicted blocks are erased from the hash map; open3d hands an erased block's buffer to
  the next new block unchanged (measured: weights carried over), so it is zeroed first
  (the torch grid zeroes a slot when it hands it out).
- Block bookkeeping (last update stamp, weight bound per block) lives in host numpy arrays
  keyed by the packed block coordinate (sorted, ``searchsorted``), not in open3d buffer
  indices, which change when a table rehashes.
- open3d's ``extract_point_cloud`` keeps voxels with weight *above* its threshold, so
  ``min_weight`` (whole observations) is passed as ``min_weight - 0.5``; a surface lying
  exactly on voxel centres has no sign change between them and yields no points.

Measured (``benchmarks/segmentation.py``, 36 rooms, open3d's grid): integration 5-7 ms per
VGA frame (p50), surface extraction 37-45 ms for 90-250 k points (3-6 k blocks, 18-36
MiB). The torch grid on this CPU (held-out seeds 2000-2011, noisy): 10.9 ms per frame and
56 ms per extraction against open3d's 5.6 and 46 ms, with the same segmentation scores.

One lock guards the grid: the ingest thread integrates, a segmentation worker reads
:meth:`TsdfMap.surface` (a copy) while integration goes on. No ROS imports.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.devices import cuda_available, open3d_has_cuda
from llava3d_ros.core.geometry import CameraIntrinsics, invert_transform, validate_transform
from llava3d_ros.core.objects.tsdf_open3d import OPEN3D_MISSING, Open3dBlockGrid
from llava3d_ros.core.objects.tsdf_torch import TorchBlockGrid
from llava3d_ros.core.options import check_options, option

__all__ = [
    "BACKENDS",
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_VERSION",
    "BlockGrid",
    "GeometryConfig",
    "IntegrationStats",
    "SurfacePoints",
    "TsdfMap",
    "resolve_backend",
    "resolve_device",
    "validate_config",
]

SNAPSHOT_FORMAT = "llava3d_ros.tsdf_map"
SNAPSHOT_VERSION = 1

# Block coordinates are indexed by their voxel key (core/voxel_keys.py): +-2^20 blocks
# per axis, +-168 km with 16 cm blocks.
_DEVICE_RE = re.compile(r"^(auto|CPU:0|CUDA:\d+)$")
BACKENDS = ("auto", "open3d", "torch")
_UINT16_MAX = 65535


def validate_config(obj: Any) -> None:
    """Coerce a frozen config dataclass's numbers to their field types (an integral float
    from YAML for an int field, an int for a float field) and check every documented
    range and choice (:func:`llava3d_ros.core.options.check_options`)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind not in ("int", "float"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{f.name} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{f.name} must be finite, got {value!r}")
        if kind == "int":
            if float(value) != int(value):
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
            object.__setattr__(obj, f.name, int(value))
        else:
            object.__setattr__(obj, f.name, float(value))
    check_options(obj, type(obj).__name__)


@dataclass(frozen=True)
class GeometryConfig:
    """TSDF map settings. Field metadata (``help``, ``min``, ``max``) is what the ROS layer
    turns into node parameters."""

    voxel_size: float = option(
        0.02,
        "TSDF voxel edge (m); objects thinner than ~2 voxels merge with what they stand on",
        0.005,
        0.2,
    )
    block_resolution: int = option(8, "voxels per block edge (the hash map's unit)", 4, 32)
    sdf_trunc: float = option(
        0.06,
        "truncation distance (m); 3 voxels measured best of 2/3/4 (thin objects stay "
        "thin, 4x the depth noise at 3 m)",
        0.01,
        1.0,
    )
    min_depth_m: float = option(0.2, "depth readings nearer than this are ignored (m)", 0.0, 10.0)
    max_depth_m: float = option(
        4.0,
        "depth readings farther than this are ignored (m); noise grows with the square "
        "of the distance",
        0.1,
        50.0,
    )
    max_blocks: int = option(
        30000,
        "capacity: blocks kept (6 KiB each: 180 MiB), least recently updated evicted first",
        16,
        10_000_000,
    )
    max_radius_m: float = option(
        0.0, "evict blocks farther than this from the robot (m); 0 = off", 0.0, 1e4
    )
    max_age_s: float = option(0.0, "evict blocks not updated for this long (s); 0 = off", 0.0, 1e7)
    max_weight: int = option(
        100,
        "cap on a voxel's fused weight (observations): the map forgets at 1/max_weight per frame",
        1,
        60000,
    )
    min_weight: float = option(
        2.0, "surface extraction keeps voxels seen at least this many times", 0.0, 60000.0
    )
    device: str = option(
        "auto",
        "geometry device: auto (the top-level device), CPU:0 or CUDA:<n>",
    )
    backend: str = option(
        "auto",
        "TSDF implementation: auto (open3d where this build runs on the device, else "
        "torch), open3d or torch",
        choices=BACKENDS,
    )

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise ValueError(f"device must be auto, CPU:0 or CUDA:<n>, got {self.device!r}")
        validate_config(self)
        if self.min_depth_m >= self.max_depth_m:
            raise ValueError("min_depth_m must be below max_depth_m")
        if self.sdf_trunc < self.voxel_size:
            raise ValueError("sdf_trunc must be at least one voxel")

    @property
    def block_size(self) -> float:
        """Edge of a block in metres."""
        return self.voxel_size * self.block_resolution


def resolve_device(name: str, backend: str = "auto") -> str:
    """``auto`` -> ``CUDA:0`` when a GPU can run the TSDF: open3d with CUDA, or torch
    (unless the backend is open3d) seeing a CUDA device; else ``CPU:0``."""
    if name != "auto":
        return name
    if open3d_has_cuda() or (backend != "open3d" and cuda_available()):
        return "CUDA:0"
    return "CPU:0"


def resolve_backend(backend: str, device: str) -> str:
    """``auto`` -> ``open3d`` where it is installed and runs on ``device`` (its CPU kernels
    are the fastest measured here), else ``torch``. ``open3d`` on a CUDA device with a
    CPU-only open3d is an error, not a silent move to the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"geometry backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = device.upper().startswith("CUDA")
    if backend == "auto":
        if OPEN3D_MISSING is not None or (on_cuda and not open3d_has_cuda()):
            return "torch"
        return "open3d"
    if backend == "open3d" and OPEN3D_MISSING is None and on_cuda and not open3d_has_cuda():
        raise ValueError(
            f"geometry.backend open3d on {device}, but this open3d build has no CUDA "
            "(use geometry.backend torch or auto, or the gpu extra's open3d)"
        )
    return backend


class BlockGrid(Protocol):
    """The TSDF's voxel storage and kernels (:mod:`.tsdf_open3d`, :mod:`.tsdf_torch`).
    Blocks are named by their packed block coordinate (``core/voxel_keys.py``); the map
    asks only about blocks it holds, and erases before a frame needs room."""

    name: str

    @property
    def memory_bytes(self) -> int: ...

    def touched(
        self,
        depth_mm: NDArray[np.uint16],
        k_matrix: NDArray[np.float64],
        t_map_camera: NDArray[np.float64],
        t_cam_map: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], Any]:
        """(sorted keys of the blocks a frame updates, the frame as :meth:`integrate`
        takes it); the camera pose and its inverse are both given (each grid needs one or
        both, the map has both)."""
        ...

    def integrate(self, frame: Any, rgb: NDArray[np.uint8] | None) -> None: ...

    def clip_weights(self, keys: NDArray[np.int64], cap: int) -> None: ...

    def erase(self, keys: NDArray[np.int64]) -> None: ...

    def read(
        self, keys: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.uint16], NDArray[np.uint16]]:
        """(tsdf (M, R^3), weight (M, R^3), colour (M, R^3, 3)) of held blocks."""
        ...

    def insert(
        self,
        keys: NDArray[np.int64],
        tsdf: NDArray[np.float32],
        weight: NDArray[np.uint16],
        color: NDArray[np.uint16],
    ) -> None: ...

    def extract(
        self, weight_threshold: float
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Surface points, normals and colours (0..1) of voxels whose weight is above the
        threshold."""
        ...


@dataclass(frozen=True, eq=False)
class SurfacePoints:
    """The fused surface in the map frame: zero crossings of the TSDF."""

    points: NDArray[np.float32]  # (N, 3) metres
    normals: NDArray[np.float32]  # (N, 3) unit, pointing out of the surface (to free space)
    colors: NDArray[np.float32]  # (N, 3) RGB 0..1
    stamp_s: float = 0.0  # stamp of the newest integrated frame
    voxel_size: float = 0.02

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @classmethod
    def from_arrays(
        cls,
        points: Any,
        normals: Any,
        colors: Any | None = None,
        stamp_s: float = 0.0,
        voxel_size: float = 0.02,
    ) -> SurfacePoints:
        """Validated float32 copies (tests and tools build surfaces from point clouds)."""
        p = np.array(points, dtype=np.float32).reshape(-1, 3)
        n = np.array(normals, dtype=np.float32).reshape(-1, 3)
        c = (
            np.full_like(p, 0.5)
            if colors is None
            else np.array(colors, dtype=np.float32).reshape(-1, 3)
        )
        if not (len(p) == len(n) == len(c)):
            raise ValueError(f"points/normals/colors differ in length: {len(p)}/{len(n)}/{len(c)}")
        if not (np.isfinite(p).all() and np.isfinite(n).all()):
            raise ValueError("surface points and normals must be finite")
        return cls(p, n, c, float(stamp_s), float(voxel_size))


@dataclass(frozen=True)
class IntegrationStats:
    """What one :meth:`TsdfMap.integrate` call did."""

    valid_pixels: int = 0
    blocks_touched: int = 0
    blocks_new: int = 0
    num_blocks: int = 0
    evicted_capacity: int = 0
    evicted_radius: int = 0
    evicted_age: int = 0
    integrate_ms: float = 0.0

    @property
    def evicted(self) -> int:
        return self.evicted_capacity + self.evicted_radius + self.evicted_age


class TsdfMap:
    """A bounded TSDF map in the map frame. Thread-safe (one lock).

    ``integrate`` fuses a depth frame (metres; 0/NaN/inf invalid) and its RGB image;
    ``surface`` returns the fused surface as a copy; bounds evict whole blocks.
    """

    weight_slack = 16  # frames a block's weights may run past max_weight before clipping

    def __init__(self, config: GeometryConfig | None = None) -> None:
        self.config = config or GeometryConfig()
        self.device = resolve_device(self.config.device, self.config.backend)
        self.backend = resolve_backend(self.config.backend, self.device)
        self._lock = threading.RLock()
        self._reset()

    # -- state ------------------------------------------------------------------------
    def _reset(self) -> None:
        cfg = self.config
        grid_type = Open3dBlockGrid if self.backend == "open3d" else TorchBlockGrid
        self._grid: BlockGrid = grid_type(
            voxel_size=cfg.voxel_size,
            block_resolution=cfg.block_resolution,
            sdf_trunc=cfg.sdf_trunc,
            max_depth_m=cfg.max_depth_m,
            max_blocks=cfg.max_blocks,
            device=self.device,
        )
        self._keys = np.zeros(0, dtype=np.int64)  # sorted packed block coordinates
        self._stamps = np.zeros(0, dtype=np.float64)  # last update per key
        self._wbound = np.zeros(0, dtype=np.int64)  # upper bound on the block's weights
        self._newest = -math.inf
        self._frames = 0
        self._evicted = {"capacity": 0, "radius": 0, "age": 0}

    def clear(self) -> None:
        """Forget everything (the grid is rebuilt empty; eviction totals restart)."""
        with self._lock:
            self._reset()

    @property
    def num_blocks(self) -> int:
        with self._lock:
            return int(self._keys.shape[0])

    @property
    def frames_integrated(self) -> int:
        with self._lock:
            return self._frames

    @property
    def evicted_total(self) -> dict[str, int]:
        """Blocks evicted since construction / :meth:`clear`, by bound."""
        with self._lock:
            return dict(self._evicted)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the grid's block storage (its capacity, not just live blocks)."""
        with self._lock:
            return self._grid.memory_bytes

    @property
    def bounds(self) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """(min corner, max corner) of the allocated blocks in metres; None when empty."""
        with self._lock:
            if self._keys.size == 0:
                return None
            c = vk.unpack(self._keys).astype(np.float64) * self.config.block_size
            return c.min(axis=0), c.max(axis=0) + self.config.block_size

    def block_stamps(self) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
        """(block coordinates (M, 3), last update stamps (M,)), for tools and tests."""
        with self._lock:
            return vk.unpack(self._keys).astype(np.int32), self._stamps.copy()

    # -- integration ------------------------------------------------------------------
    def integrate(
        self,
        depth_m: NDArray[np.floating],
        rgb: NDArray[np.uint8] | None,
        intrinsics: CameraIntrinsics,
        t_map_camera: NDArray[np.float64],
        stamp_s: float,
        robot_position: NDArray[np.float64] | None = None,
    ) -> IntegrationStats:
        """Fuse one frame. ``depth_m`` (H, W) metres along the optical axis, 0/NaN/inf
        invalid; ``rgb`` (H, W, 3) uint8 registered to depth (None: depth only);
        ``t_map_camera`` 4x4 map <- camera optical; ``robot_position`` (3,) map frame for
        the radius bound (None: that bound is skipped this frame)."""
        start = time.perf_counter()
        cfg = self.config
        depth = np.asarray(depth_m)
        if depth.ndim != 2 or depth.shape != intrinsics.shape:
            raise ValueError(f"depth must be {intrinsics.shape}, got {depth.shape}")
        if rgb is not None:
            rgb = np.asarray(rgb)
            if rgb.shape != (*intrinsics.shape, 3) or rgb.dtype != np.uint8:
                raise ValueError(
                    f"rgb must be uint8 {(*intrinsics.shape, 3)}, got {rgb.dtype} {rgb.shape}"
                )
        t_map_cam = validate_transform(t_map_camera, "t_map_camera")
        t_cam_map = invert_transform(t_map_cam)
        stamp = float(stamp_s)
        if not math.isfinite(stamp):
            raise ValueError(f"stamp must be finite, got {stamp_s}")
        robot = None
        if robot_position is not None:
            robot = np.asarray(robot_position, dtype=np.float64).reshape(-1)
            if robot.shape != (3,) or not np.isfinite(robot).all():
                raise ValueError(f"robot_position must be a finite (3,), got {robot_position}")

        # Millimetres as uint16: the 16UC1 format itself; 1 mm steps are far below a voxel.
        with np.errstate(invalid="ignore"):
            d = depth.astype(np.float32, copy=False)
            ok = np.isfinite(d) & (d >= cfg.min_depth_m) & (d <= cfg.max_depth_m)
        mm = np.zeros(d.shape, dtype=np.uint16)
        mm[ok] = np.minimum(np.rint(d[ok] * 1000.0), _UINT16_MAX).astype(np.uint16)
        valid = int(ok.sum())
        with self._lock:
            self._newest = max(self._newest, stamp)
            ev = {"capacity": 0, "radius": 0, "age": 0}
            touched = new = 0
            if valid:
                keys, frame = self._grid.touched(mm, intrinsics.as_matrix(), t_map_cam, t_cam_map)
                touched = int(keys.size)
                pos = np.searchsorted(self._keys, keys)
                found = pos < self._keys.size
                found[found] = self._keys[pos[found]] == keys[found]
                new = int((~found).sum())
                overflow = self._keys.size + new - cfg.max_blocks
                if overflow > 0:
                    ev["capacity"] += self._evict_lru(overflow, protect=keys[found])
                self._grid.integrate(frame, rgb)
                self._touch(keys, stamp)
                self._cap_weights()
                self._frames += 1
            ev["age"] += self._evict_age()
            if robot is not None:
                ev["radius"] += self._evict_radius(robot)
            for key, n in ev.items():
                self._evicted[key] += n
            num = int(self._keys.size)
        return IntegrationStats(
            valid_pixels=valid,
            blocks_touched=touched,
            blocks_new=new,
            num_blocks=num,
            evicted_capacity=ev["capacity"],
            evicted_radius=ev["radius"],
            evicted_age=ev["age"],
            integrate_ms=(time.perf_counter() - start) * 1e3,
        )

    def _cap_weights(self) -> None:
        """Clip weights at ``max_weight`` in the blocks whose bound passed it by the slack.

        A frame adds at most 1 to a voxel's weight, so ``_wbound`` (frames that touched a
        block since it was last clipped, plus the clip value) bounds the block's weights
        without reading them. Clipping with a slack of :attr:`weight_slack` frames costs
        one read-modify-write per block every ``slack`` frames instead of every frame
        (32 ms a frame for 4 k blocks when done on every touched block)."""
        over = self._wbound > self.config.max_weight + self.weight_slack
        if not over.any():
            return
        cap = self.config.max_weight
        self._grid.clip_weights(self._keys[over], cap)
        self._wbound[over] = cap

    def _touch(self, keys: NDArray[np.int64], stamp: float) -> None:
        pos = np.searchsorted(self._keys, keys)
        found = pos < self._keys.size
        found[found] = self._keys[pos[found]] == keys[found]
        hit = pos[found]
        self._stamps[hit] = np.maximum(self._stamps[hit], stamp)
        self._wbound[hit] += 1
        fresh = keys[~found]
        if fresh.size:
            all_keys = np.concatenate([self._keys, fresh])
            order = np.argsort(all_keys, kind="stable")
            self._keys = all_keys[order]
            self._stamps = np.concatenate([self._stamps, np.full(fresh.size, stamp)])[order]
            self._wbound = np.concatenate([self._wbound, np.ones(fresh.size, np.int64)])[order]

    # -- eviction ---------------------------------------------------------------------
    def _erase(self, drop: NDArray[np.bool_]) -> int:
        """Erase the blocks where ``drop`` (aligned with ``self._keys``) is set."""
        n = int(drop.sum())
        if n == 0:
            return 0
        self._grid.erase(self._keys[drop])
        self._keys, self._stamps = self._keys[~drop], self._stamps[~drop]
        self._wbound = self._wbound[~drop]
        return n

    def _evict_lru(self, count: int, protect: NDArray[np.int64]) -> int:
        """Evict ``count`` least recently updated blocks, sparing ``protect`` (the blocks
        the incoming frame updates) unless there is nothing else left."""
        spare = np.isin(self._keys, protect)
        order = np.lexsort((spare, self._stamps))  # oldest first, protected ones last
        order = np.concatenate([order[~spare[order]], order[spare[order]]])
        drop = np.zeros(self._keys.size, dtype=bool)
        drop[order[: min(count, self._keys.size)]] = True
        return self._erase(drop)

    def _evict_age(self) -> int:
        if self.config.max_age_s <= 0 or self._keys.size == 0:
            return 0
        return self._erase(self._stamps < self._newest - self.config.max_age_s)

    def _evict_radius(self, robot: NDArray[np.float64]) -> int:
        if self.config.max_radius_m <= 0 or self._keys.size == 0:
            return 0
        bs = self.config.block_size
        centres = (vk.unpack(self._keys).astype(np.float64) + 0.5) * bs
        far = np.linalg.norm(centres - robot, axis=1) > self.config.max_radius_m
        return self._erase(far)

    # -- reading ----------------------------------------------------------------------
    def surface(self) -> SurfacePoints:
        """The fused surface (a copy; safe to use while integration goes on)."""
        with self._lock:
            if self._keys.size == 0:
                empty = np.zeros((0, 3), dtype=np.float32)
                return SurfacePoints(empty, empty.copy(), empty.copy(), 0.0, self.config.voxel_size)
            # Voxels with weight > threshold are kept; weights are whole counts.
            points, normals, colors = self._grid.extract(max(self.config.min_weight - 0.5, 0.0))
            stamp = self._newest
        norm = np.linalg.norm(normals, axis=1, keepdims=True)
        normals /= np.maximum(norm, 1e-12)
        np.clip(colors, 0.0, 1.0, out=colors)
        return SurfacePoints(points, normals, colors, float(stamp), self.config.voxel_size)

    # -- snapshots --------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        """(JSON-able header, named numpy arrays) for the caller's safetensors snapshot.

        Arrays: ``block_coords`` (M, 3) int32, ``tsdf`` (M, R, R, R) float32, ``weight``
        (M, R, R, R) uint16, ``color`` (M, R, R, R, 3) uint16, ``last_update_s`` (M,)
        float64 - rows in the order of ``block_coords``."""
        cfg = self.config
        r = cfg.block_resolution
        with self._lock:
            m = int(self._keys.size)
            coords = vk.unpack(self._keys).astype(np.int32)
            if m:
                tsdf, weight, color = self._grid.read(self._keys)
            else:
                tsdf = np.zeros((0, r**3), np.float32)
                weight = np.zeros((0, r**3), np.uint16)
                color = np.zeros((0, r**3, 3), np.uint16)
            header: dict[str, Any] = {
                "format": SNAPSHOT_FORMAT,
                "version": SNAPSHOT_VERSION,
                "voxel_size": cfg.voxel_size,
                "block_resolution": r,
                "sdf_trunc": cfg.sdf_trunc,
                "num_blocks": m,
                "newest_stamp_s": self._newest if math.isfinite(self._newest) else None,
                "frames_integrated": self._frames,
            }
            tensors: dict[str, NDArray[Any]] = {
                "block_coords": coords,
                "tsdf": np.ascontiguousarray(tsdf.reshape(m, r, r, r)),
                "weight": np.ascontiguousarray(weight.reshape(m, r, r, r)),
                "color": np.ascontiguousarray(color.reshape(m, r, r, r, 3)),
                "last_update_s": self._stamps.copy(),
            }
        return header, tensors

    @classmethod
    def from_state(
        cls,
        header: Mapping[str, Any],
        tensors: Mapping[str, NDArray[Any]],
        config: GeometryConfig | None = None,
    ) -> TsdfMap:
        """Rebuild a map from :meth:`state` output. Raises ValueError for anything
        malformed (format, version, geometry other than ``config``'s, shapes, dtypes,
        non-finite or out-of-range values, duplicate blocks). A snapshot with more blocks
        than ``config.max_blocks`` keeps the most recently updated ones (the rest count as
        capacity evictions): the config's capacity always wins."""
        cfg = config or GeometryConfig()
        if not isinstance(header, Mapping):
            raise ValueError("TSDF snapshot header must be a mapping")
        if header.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a TSDF snapshot (format {header.get('format')!r})")
        if header.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported TSDF snapshot version {header.get('version')!r}")
        try:
            voxel = float(header["voxel_size"])
            res = int(header["block_resolution"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"TSDF snapshot header lacks voxel_size/block_resolution: {exc}"
            ) from exc
        if not math.isclose(voxel, cfg.voxel_size, rel_tol=1e-6) or res != cfg.block_resolution:
            raise ValueError(
                f"TSDF snapshot has voxel {voxel} m x {res}^3 blocks, the config "
                f"{cfg.voxel_size} m x {cfg.block_resolution}^3"
            )
        want = {
            "block_coords": (np.int32, (3,)),
            "tsdf": (np.float32, (res, res, res)),
            "weight": (np.uint16, (res, res, res)),
            "color": (np.uint16, (res, res, res, 3)),
            "last_update_s": (np.float64, ()),
        }
        arrays: dict[str, NDArray[Any]] = {}
        m = None
        for name, (dtype, tail) in want.items():
            if name not in tensors:
                raise ValueError(f"TSDF snapshot lacks the tensor {name!r}")
            a = np.asarray(tensors[name])
            if a.dtype != dtype:
                raise ValueError(f"TSDF tensor {name!r} is {a.dtype}, expected {np.dtype(dtype)}")
            if a.ndim != 1 + len(tail) or tuple(a.shape[1:]) != tail:
                raise ValueError(f"TSDF tensor {name!r} has shape {a.shape}, expected (M, *{tail})")
            if m is None:
                m = a.shape[0]
            elif a.shape[0] != m:
                raise ValueError(f"TSDF tensor {name!r} has {a.shape[0]} rows, expected {m}")
            arrays[name] = a
        assert m is not None
        if header.get("num_blocks", m) != m:
            raise ValueError(
                f"TSDF header says {header.get('num_blocks')} blocks, tensors hold {m}"
            )
        tsdf, stamps = arrays["tsdf"], arrays["last_update_s"]
        if not (np.isfinite(tsdf).all() and np.isfinite(stamps).all()):
            raise ValueError("TSDF snapshot holds non-finite values")
        if tsdf.size and (tsdf.min() < -1.0 - 1e-4 or tsdf.max() > 1.0 + 1e-4):
            raise ValueError("TSDF values must lie in [-1, 1]")
        # A snapshot from a config with a higher cap is clipped to this one's, not refused.
        arrays["weight"] = np.minimum(arrays["weight"], np.uint16(cfg.max_weight))
        coords = arrays["block_coords"]
        if coords.size and not vk.in_range(coords).all():
            raise ValueError("TSDF block coordinates out of range")
        keys = vk.pack(coords)
        order = np.argsort(keys, kind="stable")
        if np.any(np.diff(keys[order]) == 0):
            raise ValueError("TSDF snapshot holds duplicate blocks")
        newest = header.get("newest_stamp_s")
        if newest is not None and not (isinstance(newest, (int, float)) and math.isfinite(newest)):
            raise ValueError(f"bad newest_stamp_s {newest!r}")

        out = cls(cfg)
        dropped = 0
        keep = order
        if m > cfg.max_blocks:
            # Most recently updated first; then back into key order.
            recent = np.argsort(-stamps, kind="stable")[: cfg.max_blocks]
            keep = recent[np.argsort(keys[recent], kind="stable")]
            dropped = m - cfg.max_blocks
        if keep.size:
            out._grid.insert(keys[keep], tsdf[keep], arrays["weight"][keep], arrays["color"][keep])
        out._keys, out._stamps = keys[keep], stamps[keep].astype(np.float64)
        out._wbound = arrays["weight"][keep].reshape(keep.size, -1).max(axis=1, initial=0)
        out._wbound = out._wbound.astype(np.int64)
        if newest is not None:
            out._newest = float(newest)
        elif out._stamps.size:
            out._newest = float(out._stamps.max())
        out._frames = int(header.get("frames_integrated", 0) or 0)
        out._evicted["capacity"] = dropped
        return out
