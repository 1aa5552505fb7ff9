"""Scene tokens for the language model: the memory's voxels pooled into coarser cells
(LLaVA-3D pools at 0.2 m), and a spatially even subset when there are too many cells."""

from __future__ import annotations

import numpy as np
import torch

from llava3d_ros.core import voxel_keys as vk


def _farthest_point_order(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of k rows chosen by farthest-point sampling, seeded at row 0.

    numpy on the CPU: the loop is k small vector ops, where numpy's per-call overhead is
    ~5x below torch's, and the result is the same whatever device the memory is on.
    argmax takes the first maximum, so ties resolve the same way every time."""
    p = np.asarray(points, dtype=np.float32)
    x, y, z = (np.ascontiguousarray(p[:, i]) for i in range(3))
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = 0
    min_d2 = (x - x[0]) ** 2 + (y - y[0]) ** 2 + (z - z[0]) ** 2
    t1, t2 = np.empty_like(x), np.empty_like(x)
    for i in range(1, k):
        j = int(min_d2.argmax())
        chosen[i] = j
        np.subtract(x, x[j], out=t1)
        np.multiply(t1, t1, out=t1)
        np.subtract(y, y[j], out=t2)
        np.multiply(t2, t2, out=t2)
        np.add(t1, t2, out=t1)
        np.subtract(z, z[j], out=t2)
        np.multiply(t2, t2, out=t2)
        np.add(t1, t2, out=t1)
        np.minimum(min_d2, t1, out=min_d2)
    return chosen


def _grid_groups(pos: np.ndarray, size: float) -> np.ndarray:
    """Group id (0..G-1, in key order) of each position on a grid of the given cell size."""
    keys = vk.pack(np.floor(pos / size).astype(np.int64))
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def spatially_fair_subset(
    pos: np.ndarray, weight: np.ndarray, cell_size: float, k: int
) -> np.ndarray:
    """Sorted indices of k of the rows (cells sorted by key), spread evenly in space.

    Farthest-point sampling seeded at row 0 (the smallest cell key). FPS costs O(T k), so
    for T much larger than k the candidates are first thinned to the heaviest cell of
    each cell of a coarser grid that still has >= k occupied cells: coarse cells are
    smaller than the spacing FPS ends at, so coverage is kept."""
    t = pos.shape[0]
    cand = np.arange(t)
    if t > 4 * k:
        groups = None
        size = cell_size
        while True:
            size *= 1.5
            g = _grid_groups(pos, size)
            n = int(g.max()) + 1
            if n >= k:
                groups = g
            if n < 2 * k:
                break
        if groups is not None:
            # per group: heaviest member, ties -> smallest key (row order)
            order = np.lexsort((np.arange(t), -weight, groups))
            sg = groups[order]
            first = np.ones(t, dtype=bool)
            first[1:] = sg[1:] != sg[:-1]
            cand = np.sort(order[first])
    return np.sort(cand[_farthest_point_order(pos[cand], k)])


def pool_cells(
    centroids: torch.Tensor, weights: torch.Tensor, cell_size: float, max_cells: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group voxels (centroids (M, 3) float64, observation counts (M,) float64) into cells
    of ``cell_size``; above ``max_cells`` keep a spatially even subset of the cells
    (:func:`spatially_fair_subset`). Returns the cell of each voxel (M,) (-1: its cell was
    not kept), the cells' count-weighted mean positions (T, 3) float64 and their total
    weights (T,), cells in key order."""
    device = centroids.device
    cell = torch.floor(centroids / cell_size)
    if not bool(vk.in_range(cell).all()):
        raise ValueError(f"pool voxel_size {cell_size} is too small for this map extent")
    uniq, inv = torch.unique(vk.pack(cell.long()), sorted=True, return_inverse=True)
    t = int(uniq.numel())
    wsum = torch.zeros(t, dtype=torch.float64, device=device).index_add_(0, inv, weights)
    pos = torch.zeros(t, 3, dtype=torch.float64, device=device)
    pos.index_add_(0, inv, centroids * weights[:, None])
    pos /= wsum[:, None]
    if t <= max_cells:
        return inv, pos, wsum
    keep = torch.from_numpy(
        spatially_fair_subset(pos.cpu().numpy(), wsum.cpu().numpy(), cell_size, max_cells)
    ).to(device)
    remap = torch.full((t,), -1, dtype=torch.long, device=device)
    remap[keep] = torch.arange(keep.numel(), device=device)
    return remap[inv], pos[keep], wsum[keep]
