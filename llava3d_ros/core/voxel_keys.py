"""The one voxel key of the package: an integer voxel coordinate (x, y, z) packed into an
int64, 21 bits per axis after an offset, so a map spans +-2^20 voxels per axis (+-52 km at
5 cm). Keys sort like their coordinates (x, then y, then z) and a neighbour's key is the
key plus :func:`key_delta` of the offset, which is what the sorted-key neighbour searches
rely on. The patch memory, its token pooling, voxel grounding, the TSDF block index and
the instance segmentation all use it; each keeps its own lattice (which cell a point
falls in), not its own packing.

Works on numpy arrays and torch tensors alike (same dtype family out as in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "COORD_MAX",
    "COORD_MIN",
    "KEY_BITS",
    "centred_keys",
    "in_range",
    "key_delta",
    "pack",
    "unpack",
]

KEY_BITS = 21
_OFFSET = 1 << (KEY_BITS - 1)
_MASK = (1 << KEY_BITS) - 1
COORD_MIN = -_OFFSET
COORD_MAX = _OFFSET - 1

Coords = TypeVar("Coords", np.ndarray, torch.Tensor)


def pack(coords: Coords) -> Coords:
    """(N, 3) integer voxel coordinates in [COORD_MIN, COORD_MAX] -> (N,) int64 keys >= 0."""
    c = coords.long() if isinstance(coords, torch.Tensor) else np.asarray(coords, np.int64)
    c = c + _OFFSET
    return (c[:, 0] << (2 * KEY_BITS)) | (c[:, 1] << KEY_BITS) | c[:, 2]


def unpack(keys: Coords) -> Coords:
    """Inverse of :func:`pack`: (N,) keys -> (N, 3) int64 voxel coordinates."""
    parts = ((keys >> (2 * KEY_BITS)) & _MASK, (keys >> KEY_BITS) & _MASK, keys & _MASK)
    if isinstance(keys, torch.Tensor):
        return torch.stack(parts, dim=1) - _OFFSET
    return np.stack(parts, axis=1).astype(np.int64) - _OFFSET


def in_range(coords: Coords, margin: int = 0) -> Coords:
    """(N,) bool: rows whose every coordinate packs, with ``margin`` cells to spare on each
    side (neighbours within ``margin`` then pack too, and :func:`key_delta` finds them)."""
    ok = (coords >= COORD_MIN + margin) & (coords <= COORD_MAX - margin)
    return ok.all(dim=1) if isinstance(ok, torch.Tensor) else np.asarray(ok.all(axis=1))


def key_delta(offset: Sequence[int] | np.ndarray) -> int:
    """Key difference between a voxel and its neighbour at ``offset`` (dx, dy, dz): exact
    whenever both voxels are in range."""
    dx, dy, dz = (int(v) for v in offset)
    return (dx << (2 * KEY_BITS)) + (dy << KEY_BITS) + dz


def centred_keys(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """Keys of the cells centred on multiples of ``voxel_size`` that points (N, 3) fall in:
    the object layer's lattice (the patch memory's cells start at multiples instead).
    floor(x + 0.5), not rint: TSDF surface points lie on the lattice's edges, where rint's
    ties-to-even would split a cloud sampled at half-voxel offsets into alternate cells.
    Points beyond the range land in its border cells."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    ijk = np.clip(np.floor(p / voxel_size + 0.5), COORD_MIN, COORD_MAX).astype(np.int64)
    return pack(ijk)
