"""The TSDF's block grid in open3d's tensor ``VoxelBlockGrid`` (CPU:0, or CUDA:<n> with an
open3d build that has CUDA): the default on the CPU, where its kernels are the fastest
measured here (see :mod:`.tsdf` for the numbers).

Called by :class:`.tsdf.TsdfMap` through :class:`.tsdf.BlockGrid`; the map keeps the
blocks' bookkeeping (keys, stamps, weight bounds) and decides what to evict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

try:
    import open3d as o3d
    import open3d.core as o3c
except ImportError as exc:  # the torch grid runs without it
    o3d = o3c = None
    OPEN3D_MISSING: ImportError | None = exc
else:
    OPEN3D_MISSING = None

from llava3d_ros.core import voxel_keys as vk

__all__ = ["OPEN3D_MISSING", "Open3dBlockGrid"]

_ATTRS = ("tsdf", "weight", "color")


class Open3dBlockGrid:
    """open3d's VoxelBlockGrid with float32 TSDF, uint16 weight and uint16 colour."""

    name = "open3d"
    initial_blocks = 2048  # first capacity of the grid (12 MiB); it grows to max_blocks

    def __init__(
        self,
        *,
        voxel_size: float,
        block_resolution: int,
        sdf_trunc: float,
        max_depth_m: float,
        max_blocks: int,
        device: str,
    ) -> None:
        if OPEN3D_MISSING is not None:
            raise RuntimeError(
                f"geometry.backend open3d needs open3d ({OPEN3D_MISSING}); install "
                "open3d-cpu==0.20.0 (or open3d with CUDA), or set geometry.backend: torch"
            )
        self.voxel_size = float(voxel_size)
        self.res = int(block_resolution)
        self.trunc_mult = float(sdf_trunc) / float(voxel_size)
        self.max_depth_m = float(max_depth_m)
        self._dev = o3c.Device(device)
        # open3d allocates (and zeroes) the whole capacity up front: 176 MiB and 0.9 s for
        # 30k blocks. Start small; its hash map doubles when full, and room is made before
        # each frame, so the capacity stays below 2 x max_blocks.
        self._grid = o3d.t.geometry.VoxelBlockGrid(
            list(_ATTRS),
            [o3c.float32, o3c.uint16, o3c.uint16],
            [[1], [1], [3]],
            self.voxel_size,
            self.res,
            min(int(max_blocks), self.initial_blocks),
            self._dev,
        )

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the grid's block storage (its capacity, not just live blocks)."""
        return int(self._grid.hashmap().capacity()) * self.res**3 * (4 + 2 + 6)

    def _indices(self, keys: NDArray[np.int64]) -> Any:
        coords = o3c.Tensor(vk.unpack(keys), o3c.int32, self._dev)
        buf, mask = self._grid.hashmap().find(coords)
        if not bool(mask.cpu().numpy().all()):  # pragma: no cover - bookkeeping bug
            raise RuntimeError("TSDF block bookkeeping is out of step with the grid")
        return buf.to(o3c.int64)

    def touched(
        self,
        depth_mm: NDArray[np.uint16],
        k_matrix: NDArray[np.float64],
        t_map_camera: NDArray[np.float64],
        t_cam_map: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], Any]:
        k = o3c.Tensor(k_matrix, o3c.float64)
        ext = o3c.Tensor(t_cam_map, o3c.float64)
        dimg = o3d.t.geometry.Image(o3c.Tensor(depth_mm, device=self._dev))
        coords = self._grid.compute_unique_block_coordinates(
            dimg, k, ext, 1000.0, self.max_depth_m, self.trunc_mult
        )
        keys = np.unique(vk.pack(coords.cpu().numpy()))
        return keys, (coords, dimg, k, ext)

    def integrate(self, frame: Any, rgb: NDArray[np.uint8] | None) -> None:
        coords, dimg, k, ext = frame
        depth_max, trunc = self.max_depth_m, self.trunc_mult
        if rgb is not None:
            cimg = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(rgb), device=self._dev))
            self._grid.integrate(coords, dimg, cimg, k, ext, 1000.0, depth_max, trunc)
        else:
            self._grid.integrate(coords, dimg, k, ext, 1000.0, depth_max, trunc)

    def clip_weights(self, keys: NDArray[np.int64], cap: int) -> None:
        idx = self._indices(keys)
        w = self._grid.attribute("weight")
        if self._dev.get_type() == o3c.Device.DeviceType.CPU:
            wn = w.numpy()  # shares the grid's memory on the CPU
            sel = idx.numpy()
            wn[sel] = np.minimum(wn[sel], cap)
        else:
            n, r = int(idx.shape[0]), self.res
            # open3d's indexer takes at most 5 dims: clip a 2-D view, write it back.
            clipped = w[idx].reshape((n, r * r * r)).clip(0, cap)
            w[idx] = clipped.reshape((n, r, r, r, 1))

    def erase(self, keys: NDArray[np.int64]) -> None:
        if keys.size == 0:
            return
        coords = o3c.Tensor(vk.unpack(keys), o3c.int32, self._dev)
        hm = self._grid.hashmap()
        buf, mask = hm.find(coords)
        idx = buf[mask].to(o3c.int64)
        if int(idx.shape[0]):
            # open3d hands an erased block's buffer to the next new block as it is:
            # zero it so the next block starts empty, not with the old block's TSDF.
            r = self.res
            for name in _ATTRS:
                attr = self._grid.attribute(name)
                ch = 3 if name == "color" else 1
                zeros = o3c.Tensor.zeros((int(idx.shape[0]), r, r, r, ch), attr.dtype, self._dev)
                attr[idx] = zeros
        hm.erase(coords)

    def read(
        self, keys: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.uint16], NDArray[np.uint16]]:
        m, n = int(keys.size), self.res**3
        idx = self._indices(keys)
        vals = {name: self._grid.attribute(name)[idx].cpu().numpy() for name in _ATTRS}
        return (
            vals["tsdf"].reshape(m, n),
            vals["weight"].reshape(m, n),
            vals["color"].reshape(m, n, 3),
        )

    def insert(
        self,
        keys: NDArray[np.int64],
        tsdf: NDArray[np.float32],
        weight: NDArray[np.uint16],
        color: NDArray[np.uint16],
    ) -> None:
        m, r, dev = int(keys.size), self.res, self._dev
        if m == 0:
            return
        self._grid.hashmap().insert(
            o3c.Tensor(vk.unpack(keys), o3c.int32, dev),
            [
                o3c.Tensor(np.ascontiguousarray(tsdf.reshape(m, r, r, r, 1)), device=dev),
                o3c.Tensor(np.ascontiguousarray(weight.reshape(m, r, r, r, 1)), device=dev),
                o3c.Tensor(np.ascontiguousarray(color.reshape(m, r, r, r, 3)), device=dev),
            ],
        )

    def extract(
        self, weight_threshold: float
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        pcd = self._grid.extract_point_cloud(weight_threshold)
        if "positions" not in pcd.point or int(pcd.point.positions.shape[0]) == 0:
            empty = np.zeros((0, 3), dtype=np.float32)
            return empty, empty.copy(), empty.copy()
        return (
            np.array(pcd.point.positions.cpu().numpy(), dtype=np.float32),
            np.array(pcd.point.normals.cpu().numpy(), dtype=np.float32),
            np.array(pcd.point.colors.cpu().numpy(), dtype=np.float32),
        )
