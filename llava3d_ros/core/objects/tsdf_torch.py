"""The TSDF's block grid in torch, on any torch device: the geometry layer on a GPU where
open3d has no CUDA (its aarch64 wheels, so every Jetson, and its CPU-only wheel that the
default setup installs), and without open3d at all.

The same model and conventions as open3d's ``VoxelBlockGrid`` (see :mod:`.tsdf`, which
keeps the blocks' bookkeeping and bounds and calls this through :class:`.tsdf.BlockGrid`),
so either grid can load the other's snapshot and the segmentation, tuned on open3d's
surface, sees the same one: blocks of ``R``^3 voxels stored x fastest, voxel ``(x, y, z)``
of block ``b`` at ``(b * R + (x, y, z)) * voxel_size``; KinectFusion running averages of
``depth - z`` (along the optical axis) at the pixel the voxel projects into (coordinates
truncated, as open3d does), colours averaged and truncated the same way; touched blocks
sampled at 4 depths within the truncation band of every 4th pixel in each direction;
surface points at the zero crossings between neighbouring voxels along +x, +y and +z.

Storage is reserved once for ``max_blocks`` (like the patch memory: ``torch.empty``
commits host pages only as blocks get used; a GPU reserves it at once), 11 bytes a voxel:
float32 TSDF, int32 weight, uint8 RGB. A block's slot is found through the package's
:class:`~llava3d_ros.core.memory.hash_table.VoxelHashTable` on the same device.

Per frame the host sends the depth (uint16 millimetres) and the colour image, and gets the
keys of the touched blocks back (the host keeps the LRU bookkeeping): one copy each way.
Finding the touched blocks needs no sort: every block a pixel's truncation band reaches
lies within the frustum's reach of the camera, so they are marked in a dense occupancy
grid around it (67^3 cells for VGA at 4 m with 16 cm blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.memory.hash_table import VoxelHashTable

__all__ = ["TorchBlockGrid", "torch_device_name"]

# Touched blocks: rays through every 4th pixel in each direction, 4 depths across the
# truncation band each (open3d's choice; a block is 8 voxels, several pixels even at 4 m).
TOUCH_STRIDE = 4
TOUCH_SAMPLES = 4
# Occupancy grids larger than this (cells) fall back to a sort (torch.unique): a depth
# range of tens of metres with small blocks.
_MAX_OCCUPANCY_CELLS = 1 << 24
_BYTES_PER_VOXEL = 4 + 4 + 3


def torch_device_name(geometry_device: str) -> str:
    """open3d's device names (``CPU:0``, ``CUDA:1``) as torch's (``cpu``, ``cuda:1``)."""
    kind, _, index = geometry_device.partition(":")
    return "cpu" if kind.upper() == "CPU" else f"cuda:{int(index or 0)}"


@dataclass(frozen=True, eq=False)
class _Frame:
    """What :meth:`TorchBlockGrid.touched` leaves on the device for :meth:`integrate`."""

    keys: torch.Tensor  # (K,) sorted packed block coordinates
    depth: torch.Tensor  # (H, W) float32 metres, 0 = invalid
    t_cam_map: torch.Tensor  # (4, 4) float32
    k: tuple[float, float, float, float]  # fx, fy, cx, cy


class TorchBlockGrid:
    """Block storage and the TSDF kernels in torch (see the module docstring)."""

    name = "torch"

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
        self.voxel_size = float(voxel_size)
        self.res = int(block_resolution)
        self.sdf_trunc = float(sdf_trunc)
        self.max_depth_m = float(max_depth_m)
        self.capacity = int(max_blocks)
        self.device = torch.device(torch_device_name(device))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"geometry device {device} but torch sees no CUDA device")
        r, d, cap = self.res, self.device, self.capacity
        n = r**3
        self._tsdf = torch.empty(cap, n, dtype=torch.float32, device=d)
        self._weight = torch.empty(cap, n, dtype=torch.int32, device=d)
        self._color = torch.empty(cap, n, 3, dtype=torch.uint8, device=d)
        self._slot_keys = torch.full((cap,), -1, dtype=torch.long, device=d)
        self._tpos = torch.empty(cap, dtype=torch.long, device=d)
        self._free = torch.empty(cap, dtype=torch.long, device=d)
        self._table = VoxelHashTable(cap, d)
        self._n_used = 0
        self._n_free = 0
        self._n_live = 0
        # Voxel (x, y, z) of a block at flat index (z * R + y) * R + x, as open3d lays them out.
        ar = torch.arange(r, device=d)
        zz, yy, xx = torch.meshgrid(ar, ar, ar, indexing="ij")
        self._local = torch.stack([xx, yy, zz], -1).reshape(n, 3)
        self._strides = torch.tensor([1, r, r * r], dtype=torch.long, device=d)
        # Neighbour steps, made once (a tensor built per call is a copy to the device):
        # the 27 neighbouring blocks in (x, y, z) order with their code weights, and every
        # voxel step in [-1, 2]^3 at (x + 1) * 16 + (y + 1) * 4 + (z + 1).
        self._offsets27 = torch.tensor(list(np.ndindex(3, 3, 3)), dtype=torch.long, device=d) - 1
        self._code_weights = torch.tensor([9, 3, 1], dtype=torch.long, device=d)
        self._steps = torch.tensor(list(np.ndindex(4, 4, 4)), dtype=torch.long, device=d) - 1
        self._rays: tuple[tuple[Any, ...], torch.Tensor] | None = None

    @property
    def memory_bytes(self) -> int:
        return self.capacity * self.res**3 * _BYTES_PER_VOXEL

    # -- slots --------------------------------------------------------------------------
    def _allocate(self, keys: torch.Tensor) -> torch.Tensor:
        """Slots for absent unique keys, indexed and zeroed (a reused slot holds the last
        block's voxels)."""
        k = int(keys.numel())
        if self._n_live + k > self.capacity:
            raise RuntimeError(
                f"TSDF grid full: {self._n_live} + {k} blocks > {self.capacity} (bookkeeping bug)"
            )
        take = min(k, self._n_free)
        reused = self._free[self._n_free - take : self._n_free].clone()
        self._n_free -= take
        fresh = torch.arange(self._n_used, self._n_used + (k - take), device=self.device)
        self._n_used += k - take
        slots = torch.cat([reused, fresh])
        self._tsdf[slots] = 0.0
        self._weight[slots] = 0
        self._color[slots] = 0
        self._slot_keys[slots] = keys
        self._tpos[slots] = self._table.insert(keys, slots)
        self._n_live += k
        return slots

    def _slots_of(self, keys: NDArray[np.int64]) -> torch.Tensor:
        slots = self._table.lookup(torch.as_tensor(keys, dtype=torch.long).to(self.device))
        if bool((slots < 0).any()):  # pragma: no cover - bookkeeping bug
            raise RuntimeError("TSDF block bookkeeping is out of step with the grid")
        return slots

    def erase(self, keys: NDArray[np.int64]) -> None:
        if keys.size == 0:
            return
        slots = self._slots_of(keys)
        self._table.erase(self._tpos[slots])
        self._slot_keys[slots] = -1
        k = int(slots.numel())
        self._free[self._n_free : self._n_free + k] = slots
        self._n_free += k
        self._n_live -= k
        if self._table.needs_rebuild(self._n_live):
            self._table.clear()
            live = torch.nonzero(self._slot_keys[: self._n_used] >= 0).squeeze(1)
            if live.numel():
                self._tpos[live] = self._table.insert(self._slot_keys[live], live)

    # -- integration --------------------------------------------------------------------
    def _pixel_rays(self, k: tuple[float, float, float, float], h: int, w: int) -> torch.Tensor:
        """(N, 3) rays (x/z, y/z, 1) through every TOUCH_STRIDE-th pixel in each direction,
        cached per camera."""
        key = (*k, h, w)
        if self._rays is None or self._rays[0] != key:
            fx, fy, cx, cy = k
            s = TOUCH_STRIDE
            v, u = torch.meshgrid(
                torch.arange(0, (h // s) * s, s, dtype=torch.float32, device=self.device),
                torch.arange(0, (w // s) * s, s, dtype=torch.float32, device=self.device),
                indexing="ij",
            )
            rays = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], -1)
            self._rays = (key, rays.reshape(-1, 3))
        return self._rays[1]

    def touched(
        self,
        depth_mm: NDArray[np.uint16],
        k_matrix: NDArray[np.float64],
        t_map_camera: NDArray[np.float64],
        t_cam_map: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], _Frame]:
        """Keys (sorted) of the blocks a sampled pixel's ray crosses within ``sdf_trunc`` of
        its depth, and what :meth:`integrate` needs of the frame, already on the device."""
        h, w = depth_mm.shape
        fx, fy, cx, cy = (
            float(k_matrix[0, 0]),
            float(k_matrix[1, 1]),
            float(k_matrix[0, 2]),
            float(k_matrix[1, 2]),
        )
        # uint16 crosses as int16 bits (torch's uint16 lacks most kernels).
        raw = torch.from_numpy(np.ascontiguousarray(depth_mm).view(np.int16)).to(self.device)
        depth = (raw.to(torch.int32) & 0xFFFF).to(torch.float32) * 1e-3
        # Both transforms in one copy.
        both = torch.as_tensor(np.stack([t_map_camera, t_cam_map]), dtype=torch.float32)
        pose, extrinsics = both.to(self.device).unbind(0)
        rays = self._pixel_rays((fx, fy, cx, cy), h, w) @ pose[:3, :3].T
        s = TOUCH_STRIDE
        sparse = depth[: (h // s) * s : s, : (w // s) * s : s].reshape(-1, 1)
        valid = ((sparse > 0) & (sparse < self.max_depth_m)).reshape(-1)
        near = torch.clamp(sparse - self.sdf_trunc, min=0.0)
        far = torch.clamp(sparse + self.sdf_trunc, max=self.max_depth_m)
        bs = self.voxel_size * self.res
        samples = []
        for step in range(TOUCH_SAMPLES):
            t = near + (far - near) * (step / (TOUCH_SAMPLES - 1))
            samples.append(torch.floor((rays * t + pose[:3, 3]) / bs).long())

        # Every sampled block lies within `reach` of the camera: the farthest ray to
        # max_depth plus the truncation band.
        ex = max(abs(cx), abs(w - 1 - cx)) / fx
        ey = max(abs(cy), abs(h - 1 - cy)) / fy
        reach = (self.max_depth_m + self.sdf_trunc) * math.sqrt(1.0 + ex * ex + ey * ey)
        radius = math.ceil(reach / bs) + 1
        side = 2 * radius + 1
        origin = np.floor(t_map_camera[:3, 3] / bs).astype(np.int64) - radius
        dense = side**3 <= _MAX_OCCUPANCY_CELLS and bool(
            vk.in_range(np.stack([origin, origin + side - 1]), margin=1).all()
        )
        if dense:
            corner = np.concatenate([origin, [side * side, side, 1]])  # one copy up
            org, sides = torch.as_tensor(corner, dtype=torch.long).to(self.device).split(3)
            cells = side**3
            occupied = torch.zeros(cells + 1, dtype=torch.bool, device=self.device)
            for c in samples:
                local = c - org
                ok = valid & ((local >= 0) & (local < side)).all(dim=1)
                occupied[torch.where(ok, (local * sides).sum(dim=1), cells)] = True
            flat = torch.nonzero(occupied[:cells]).squeeze(1)
            coords = torch.stack([flat // (side * side), (flat // side) % side, flat % side], 1)
            keys = vk.pack(coords + org)  # flat order is x, y, z order: sorted
        else:
            parts = [
                torch.where(
                    valid & vk.in_range(c), vk.pack(c.clamp(vk.COORD_MIN, vk.COORD_MAX)), -1
                )
                for c in samples
            ]
            keys = torch.unique(torch.cat(parts))
            keys = keys[keys >= 0]
        frame = _Frame(
            keys,
            depth,
            extrinsics,
            (fx, fy, cx, cy),
        )
        return keys.cpu().numpy(), frame

    def integrate(self, frame: _Frame, rgb: NDArray[np.uint8] | None) -> None:
        """Fuse the frame into its touched blocks (allocating the new ones)."""
        keys = frame.keys
        if keys.numel() == 0:
            return
        slots = self._table.lookup(keys)
        new = slots < 0
        if bool(new.any()):
            slots = slots.clone()
            slots[new] = self._allocate(keys[new])
        r, vs = self.res, self.voxel_size
        h, w = frame.depth.shape
        fx, fy, cx, cy = frame.k
        voxels = (vk.unpack(keys)[:, None, :] * r + self._local[None]).to(torch.float32) * vs
        cam = voxels @ frame.t_cam_map[:3, :3].T + frame.t_cam_map[:3, 3]
        z = cam[..., 2]
        zs = torch.where(z > 0, z, torch.ones_like(z))
        uf = cam[..., 0] / zs * fx + cx
        vf = cam[..., 1] / zs * fy + cy
        seen = (z > 0) & (uf >= 0) & (uf <= w - 1) & (vf >= 0) & (vf <= h - 1)
        pix = torch.where(seen, vf.long() * w + uf.long(), torch.zeros_like(z, dtype=torch.long))
        d = frame.depth.reshape(-1)[pix]
        sdf = d - z
        upd = seen & (d > 0) & (d <= self.max_depth_m) & (sdf >= -self.sdf_trunc)
        obs = torch.clamp(sdf / self.sdf_trunc, max=1.0)

        weight = self._weight[slots]
        wf = weight.to(torch.float32)
        total = wf + 1.0
        tsdf = self._tsdf[slots]
        self._tsdf[slots] = torch.where(upd, (tsdf * wf + obs) / total, tsdf)
        self._weight[slots] = weight + upd.to(torch.int32)
        if rgb is not None:
            host = np.require(rgb, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])  # torch wants both
            colour = torch.from_numpy(host).to(self.device).reshape(-1, 3)
            old = self._color[slots]
            mixed = (old.to(torch.float32) * wf[..., None] + colour[pix].to(torch.float32)) / total[
                ..., None
            ]
            # Truncated like open3d's (so both grids hold the same colours).
            self._color[slots] = torch.where(upd[..., None], mixed.to(torch.uint8), old)

    def clip_weights(self, keys: NDArray[np.int64], cap: int) -> None:
        slots = self._slots_of(keys)
        self._weight[slots] = self._weight[slots].clamp(max=int(cap))

    # -- snapshots ----------------------------------------------------------------------
    def read(
        self, keys: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.uint16], NDArray[np.uint16]]:
        """(tsdf (M, R^3), weight (M, R^3) uint16, colour (M, R^3, 3) uint16) on the host."""
        slots = self._slots_of(keys)
        tsdf = self._tsdf[slots].cpu().numpy()
        weight = self._weight[slots].clamp(0, 65535).cpu().numpy().astype(np.uint16)
        color = self._color[slots].cpu().numpy().astype(np.uint16)
        return tsdf, weight, color

    def insert(
        self,
        keys: NDArray[np.int64],
        tsdf: NDArray[np.float32],
        weight: NDArray[np.uint16],
        color: NDArray[np.uint16],
    ) -> None:
        """Blocks absent from the grid, with their voxels (shapes as :meth:`read`'s)."""
        m = int(keys.size)
        if m == 0:
            return
        slots = self._allocate(torch.as_tensor(keys, dtype=torch.long).to(self.device))
        n = self.res**3
        self._tsdf[slots] = torch.as_tensor(tsdf.reshape(m, n)).to(self.device)
        self._weight[slots] = torch.as_tensor(weight.reshape(m, n).astype(np.int32)).to(self.device)
        rgb = np.minimum(color.reshape(m, n, 3), 255).astype(np.uint8)
        self._color[slots] = torch.as_tensor(rgb).to(self.device)

    # -- surface ------------------------------------------------------------------------
    def extract(
        self, weight_threshold: float
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Zero crossings between voxels (both weights above the threshold) along +x, +y
        and +z: (points, normals (not normalised), colours 0..1) on the host. Normals are
        the TSDF's central-difference gradient (0 outside allocated blocks), interpolated
        like the point."""
        empty = np.zeros((0, 3), dtype=np.float32)
        live = torch.nonzero(self._slot_keys[: self._n_used] >= 0).squeeze(1)
        if live.numel() == 0:
            return empty, empty.copy(), empty.copy()
        r = self.res
        coords = vk.unpack(self._slot_keys[live])
        # The slot of each block's 27 neighbours (-1: absent): a voxel's neighbour is then
        # two gathers, whichever block it falls in.
        ncoords = (coords[:, None, :] + self._offsets27[None]).reshape(-1, 3)
        inside = vk.in_range(ncoords)
        nkeys = torch.where(inside, vk.pack(ncoords.clamp(vk.COORD_MIN, vk.COORD_MAX)), 0)
        neighbours = torch.where(inside, self._table.lookup(nkeys), -1).reshape(-1, 27)

        def at(
            rows: torch.Tensor, local: torch.Tensor, step: tuple[int, int, int]
        ) -> tuple[torch.Tensor, torch.Tensor]:
            """(slot (-1: no block), flat voxel index) of ``local + step`` in the blocks of
            ``rows``; steps in [-1, 2] reach at most one block away."""
            pos = local + self._steps[(step[0] + 1) * 16 + (step[1] + 1) * 4 + step[2] + 1]
            blk = torch.div(pos, r, rounding_mode="floor")
            pos = pos - blk * r
            code = ((blk + 1) * self._code_weights).sum(dim=-1)
            return neighbours[rows, code], (pos * self._strides).sum(dim=-1)

        def tsdf_at(
            rows: torch.Tensor, local: torch.Tensor, step: tuple[int, int, int]
        ) -> torch.Tensor:
            slot, flat = at(rows, local, step)
            return torch.where(slot >= 0, self._tsdf[slot.clamp(min=0), flat], 0.0)

        def gradient(rows: torch.Tensor, local: torch.Tensor, base: list[int]) -> torch.Tensor:
            parts = []
            for axis in range(3):
                fwd, back = list(base), list(base)
                fwd[axis] += 1
                back[axis] -= 1
                parts.append(
                    tsdf_at(rows, local, (fwd[0], fwd[1], fwd[2]))
                    - tsdf_at(rows, local, (back[0], back[1], back[2]))
                )
            return torch.stack(parts, dim=-1)

        # Only voxels above the threshold can start a crossing.
        rows, vox = torch.nonzero(self._weight[live] > weight_threshold, as_tuple=True)
        t0 = self._tsdf[live[rows], vox]
        local = self._local[vox]
        points, normals, colors = [], [], []
        for axis in range(3):
            step = [0, 0, 0]
            step[axis] = 1
            nslot, nflat = at(rows, local, (step[0], step[1], step[2]))
            ns = nslot.clamp(min=0)
            t1 = self._tsdf[ns, nflat]
            cross = (nslot >= 0) & (self._weight[ns, nflat] > weight_threshold) & (t0 * t1 < 0)
            hit = torch.nonzero(cross).squeeze(1)
            if hit.numel() == 0:
                continue
            hr, hl = rows[hit], local[hit]
            a, b = t0[hit], t1[hit]
            ratio = (a / (a - b))[:, None]
            unit = self._steps[(step[0] + 1) * 16 + (step[1] + 1) * 4 + step[2] + 1]
            g = (coords[hr] * r + hl).to(torch.float32)
            points.append((g + ratio * unit.to(torch.float32)) * self.voxel_size)
            n0 = gradient(hr, hl, [0, 0, 0])
            n1 = gradient(hr, hl, step)
            normals.append((1.0 - ratio) * n0 + ratio * n1)
            c0 = self._color[live[hr], vox[hit]].to(torch.float32)
            c1 = self._color[ns[hit], nflat[hit]].to(torch.float32)
            colors.append(((1.0 - ratio) * c0 + ratio * c1) / 255.0)
        if not points:
            return empty, empty.copy(), empty.copy()
        return (
            torch.cat(points).cpu().numpy(),
            torch.cat(normals).cpu().numpy(),
            torch.cat(colors).cpu().numpy(),
        )
