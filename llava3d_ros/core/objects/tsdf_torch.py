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
# Blocks per pass of the surface extraction (~35 kB of scratch a block at R = 8).
_EXTRACT_CHUNK = 2048


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
        self._local_float = self._local.to(torch.float32)  # voxel offsets in a block, for integrate
        # Surface extraction reads each block with its neighbourhood, padded to P = R + 3
        # voxels a side (local coordinates -1 .. R + 1; flat index (z * P + y) * P + x):
        # for each padded voxel, which of the 27 neighbouring blocks holds it (in
        # _offsets27's order) and where in that block. Made once (a tensor built per call
        # is a copy to the device).
        self._offsets27 = torch.tensor(list(np.ndindex(3, 3, 3)), dtype=torch.long, device=d) - 1
        p = r + 3
        pz, py, px = np.meshgrid(*[np.arange(-1, r + 2)] * 3, indexing="ij")
        padded = np.stack([px, py, pz], -1).reshape(-1, 3)  # (P^3, 3) local x, y, z
        block = np.floor_divide(padded, r)
        inner = padded - block * r
        code = (block + 1) @ np.array([9, 3, 1])
        flat = (inner[:, 2] * r + inner[:, 1]) * r + inner[:, 0]
        self._pad_code = torch.as_tensor(code, dtype=torch.long).to(d)
        self._pad_flat = torch.as_tensor(flat, dtype=torch.long).to(d)
        self._pad_steps = torch.tensor([1, p, p * p], dtype=torch.long, device=d)  # +x, +y, +z
        self._pad_around = torch.tensor([1, -1, p, -p, p * p, -p * p], dtype=torch.long, device=d)
        self._units = torch.eye(3, dtype=torch.float32, device=d)
        self._rays: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self._touch_fractions = torch.tensor(
            [step / (TOUCH_SAMPLES - 1) for step in range(TOUCH_SAMPLES)], device=d
        )

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
        # All TOUCH_SAMPLES depths of every sampled ray at once: (N * TOUCH_SAMPLES, 3).
        t = near + (far - near) * self._touch_fractions
        samples = torch.floor((rays[:, None, :] * t[..., None] + pose[:3, 3]) / bs).long()
        samples = samples.reshape(-1, 3)
        valid = valid[:, None].expand(-1, TOUCH_SAMPLES).reshape(-1)

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
            local = samples - org
            ok = valid & ((local >= 0) & (local < side)).all(dim=1)
            occupied[torch.where(ok, (local * sides).sum(dim=1), cells)] = True
            flat = torch.nonzero(occupied[:cells]).squeeze(1)
            coords = torch.stack([flat // (side * side), (flat // side) % side, flat % side], 1)
            keys = vk.pack(coords + org)  # flat order is x, y, z order: sorted
        else:
            packed = vk.pack(samples.clamp(vk.COORD_MIN, vk.COORD_MAX))
            keys = torch.unique(torch.where(valid & vk.in_range(samples), packed, -1))
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
        # A voxel's camera coordinates are its block corner's plus its offset in the block,
        # each rotated once: K + R^3 products, not K * R^3, and no (K, R^3, 3) tensor.
        rot, trans = frame.t_cam_map[:3, :3], frame.t_cam_map[:3, 3]
        corner = (vk.unpack(keys) * r).to(torch.float32) * vs @ rot.T + trans  # (K, 3)
        offset = (self._local_float * vs) @ rot.T  # (R^3, 3)
        x, y, z = (corner[:, i, None] + offset[:, i] for i in range(3))  # (K, R^3) each
        zs = torch.where(z > 0, z, 1.0)
        uf = x / zs * fx + cx
        vf = y / zs * fy + cy
        seen = (z > 0) & (uf >= 0) & (uf <= w - 1) & (vf >= 0) & (vf <= h - 1)
        pix = (vf.long() * w + uf.long()).masked_fill_(~seen, 0).view(-1)
        d = frame.depth.view(-1).index_select(0, pix).view_as(z)
        sdf = d - z
        upd = seen & (d > 0) & (d <= self.max_depth_m) & (sdf >= -self.sdf_trunc)
        obs = torch.clamp(sdf / self.sdf_trunc, max=1.0)

        weight = self._weight.index_select(0, slots)
        wf = weight.to(torch.float32)
        total = wf + 1.0
        tsdf = self._tsdf.index_select(0, slots)
        self._tsdf.index_copy_(0, slots, torch.where(upd, (tsdf * wf + obs) / total, tsdf))
        self._weight.index_copy_(0, slots, weight + upd.to(torch.int32))
        if rgb is not None:
            host = np.require(rgb, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])  # torch wants both
            colour = torch.from_numpy(host).to(self.device).view(-1, 3)
            seen_colour = colour.index_select(0, pix).view(*z.shape, 3).to(torch.float32)
            old = self._color.index_select(0, slots)
            mixed = (old.to(torch.float32) * wf[..., None] + seen_colour) / total[..., None]
            # Truncated like open3d's (so both grids hold the same colours).
            self._color.index_copy_(
                0, slots, torch.where(upd[..., None], mixed.to(torch.uint8), old)
            )

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
        """Zero crossings between voxels (both weights above the threshold, which is >= 0)
        along +x, +y and +z: (points, normals (not normalised), colours 0..1) on the host,
        ordered by axis, then block, then voxel. Normals are the TSDF's central-difference
        gradient (0 outside allocated blocks), interpolated like the point.

        Each block is read once into a padded (R + 3)^3 neighbourhood (one voxel before it,
        two after: a crossing's far voxel and its gradient), so crossings are slices and
        the gradients a few gathers, whichever block a neighbour lies in."""
        empty = np.zeros((0, 3), dtype=np.float32)
        live = torch.nonzero(self._slot_keys[: self._n_used] >= 0).squeeze(1)
        if live.numel() == 0:
            return empty, empty.copy(), empty.copy()
        coords = vk.unpack(self._slot_keys[live])
        # The slot of each block's 27 neighbours (-1: absent).
        ncoords = (coords[:, None, :] + self._offsets27[None]).reshape(-1, 3)
        inside = vk.in_range(ncoords)
        nkeys = torch.where(inside, vk.pack(ncoords.clamp(vk.COORD_MIN, vk.COORD_MAX)), 0)
        neighbours = torch.where(inside, self._table.lookup(nkeys), -1).reshape(-1, 27)
        parts = [
            self._crossings(
                neighbours[s : s + _EXTRACT_CHUNK],
                coords[s : s + _EXTRACT_CHUNK],
                live[s : s + _EXTRACT_CHUNK],
                weight_threshold,
            )
            for s in range(0, int(live.numel()), _EXTRACT_CHUNK)
        ]
        axis, points, normals, colors = (torch.cat(p) for p in zip(*parts, strict=True))
        if len(parts) > 1:  # chunks come block-major: back to axis-major
            order = torch.argsort(axis, stable=True)
            points, normals, colors = points[order], normals[order], colors[order]
        return points.cpu().numpy(), normals.cpu().numpy(), colors.cpu().numpy()

    def _crossings(
        self,
        neighbours: torch.Tensor,
        coords: torch.Tensor,
        slots: torch.Tensor,
        weight_threshold: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(axis, points, normals, colours) of the crossings in the blocks at ``slots``
        (block coordinates ``coords``, neighbour slots ``neighbours`` (M, 27))."""
        n, r, p = self.res**3, self.res, self.res + 3
        m = int(neighbours.shape[0])
        pad_slot = neighbours.index_select(1, self._pad_code)  # (M, P^3)
        absent = pad_slot < 0
        # In place: this pass's scratch is the padding times M (absent voxels read slot 0's).
        index = pad_slot.clamp_(min=0).mul_(n).add_(self._pad_flat).view(-1)
        tsdf = self._tsdf.view(-1).index_select(0, index).view(m, -1).masked_fill_(absent, 0.0)
        # Absent voxels count as weight 0, which no threshold passes.
        weight = self._weight.view(-1).index_select(0, index).view(m, -1)
        ok = (weight > weight_threshold).masked_fill_(absent, False)
        del pad_slot, index, absent, weight
        # The blocks' own voxels and their +x, +y, +z neighbours are slices of the padding.
        vol, okv = tsdf.view(m, p, p, p), ok.view(m, p, p, p)
        own = (slice(None), slice(1, r + 1), slice(1, r + 1), slice(1, r + 1))
        t0, ok0 = vol[own], okv[own]
        cross = []
        for axis in (2, 1, 0):  # x, y, z: the last, middle and first of (z, y, x)
            shifted = list(own)
            shifted[1 + axis] = slice(2, r + 2)
            t1, ok1 = vol[tuple(shifted)], okv[tuple(shifted)]
            cross.append(ok0 & ok1 & (t0 * t1 < 0))
        axis_of, rows, z, y, x = torch.nonzero(torch.stack(cross), as_tuple=True)
        vox = (z * r + y) * r + x  # storage order, as the blocks hold their voxels
        # Padded index of the crossing's two voxels, and in the whole (M, P^3) scratch.
        near = ((z + 1) * p + (y + 1)) * p + (x + 1)
        beyond = near + self._pad_steps[axis_of]
        first, second = rows * p**3 + near, rows * p**3 + beyond
        flat_tsdf = tsdf.view(-1)
        a, b = flat_tsdf.index_select(0, first), flat_tsdf.index_select(0, second)
        ratio = (a / (a - b))[:, None]
        grid = (coords[rows] * r + torch.stack([x, y, z], 1)).to(torch.float32)
        points = (grid + ratio * self._units[axis_of]) * self.voxel_size
        # Central differences at both ends: (H, 2 ends, 3 axes x forward/back).
        ends = torch.stack([first, second], 1)
        around = flat_tsdf.index_select(0, (ends[:, :, None] + self._pad_around).view(-1))
        around = around.view(-1, 2, 6)
        grad = around[..., 0::2] - around[..., 1::2]
        normals = (1.0 - ratio) * grad[:, 0] + ratio * grad[:, 1]
        colours = self._color.view(-1, 3)
        c0 = colours.index_select(0, slots[rows] * n + vox).to(torch.float32)
        far_slot = neighbours[rows, self._pad_code[beyond]]
        c1 = colours.index_select(0, far_slot * n + self._pad_flat[beyond]).to(torch.float32)
        colors = ((1.0 - ratio) * c0 + ratio * c1) / 255.0
        return axis_of, points, normals, colors
