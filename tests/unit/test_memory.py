"""Unit tests of the rolling voxel patch memory (no rclpy)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from llava3d_ros.core.memory import (
    EVICT_AGE,
    EVICT_MAX_VOXELS,
    EVICT_RADIUS,
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    SnapshotError,
    VoxelPatchMemory,
)

DIMS = {"vision": 4, "ground": 2}


def feats(rows: list[list[float]] | np.ndarray, dims: dict[str, int] = DIMS) -> dict:
    """Split full-width feature rows into the named kinds (in dims order)."""
    arr = torch.as_tensor(np.asarray(rows, dtype=np.float32))
    out, start = {}, 0
    for kind, d in dims.items():
        out[kind] = arr[:, start : start + d]
        start += d
    return out


def random_frame(rng: np.random.Generator, n: int, extent: float, dims=DIMS, grid=None):
    pts = rng.uniform(-extent, extent, size=(n, 3))
    if grid is not None:  # snap to a lattice so voxels repeat across frames
        pts = np.round(pts / grid) * grid + 0.01
    f = rng.normal(size=(n, sum(dims.values()))).astype(np.float32)
    return pts.astype(np.float32), feats(f, dims)


def by_coord(mem: VoxelPatchMemory) -> dict[tuple[int, int, int], dict]:
    """Memory contents keyed by voxel coordinate (row order is not stable)."""
    v = mem.snapshot_view()
    out = {}
    for i, c in enumerate(v.coords.tolist()):
        out[tuple(c)] = {
            "count": int(v.counts[i]),
            "centroid": v.centroids[i].double(),
            "last_seen": float(v.last_seen[i]),
            "features": {k: f[i].double() for k, f in v.features.items()},
        }
    return out


def counts_by_coord(mem: VoxelPatchMemory) -> dict[tuple[int, int, int], tuple[float, int]]:
    v = mem.snapshot_view(kinds=[])
    return {
        tuple(c): (ls, n)
        for c, ls, n in zip(v.coords.tolist(), v.last_seen.tolist(), v.counts.tolist(), strict=True)
    }


def sorted_view(mem: VoxelPatchMemory):
    v = mem.snapshot_view()
    order = np.lexsort(v.coords.numpy().T[::-1])
    o = torch.from_numpy(order)
    return {
        "coords": v.coords[o],
        "centroids": v.centroids[o],
        "counts": v.counts[o],
        "last_seen": v.last_seen[o],
        **{f"f_{k}": f[o] for k, f in v.features.items()},
    }


# ---------------------------------------------------------------- fusion maths


def test_running_means_and_centroid_exact_by_hand() -> None:
    mem = VoxelPatchMemory(DIMS, voxel_size=0.25)
    # voxel (0,0,0) gets 2 points in frame 1 and 1 in frame 2; voxel (1,0,0) one point
    st1 = mem.integrate(
        np.array([[0.05, 0.10, 0.20], [0.15, 0.05, 0.00], [0.30, 0.0, 0.0]]),
        feats([[1, 2, 3, 4, 5, 6], [3, 2, 1, 0, -1, 2], [9, 9, 9, 9, 9, 9]]),
        stamp=10.0,
    )
    assert (st1.new_voxels, st1.updated_voxels) == (2, 0)
    st2 = mem.integrate(np.array([[0.20, 0.20, 0.05]]), feats([[8, 8, 8, 8, 8, 8]]), stamp=11.5)
    assert (st2.new_voxels, st2.updated_voxels) == (0, 1)
    got = by_coord(mem)
    assert set(got) == {(0, 0, 0), (1, 0, 0)}
    v0 = got[(0, 0, 0)]
    assert v0["count"] == 3
    assert v0["last_seen"] == 11.5
    expect_f = np.array([1 + 3 + 8, 2 + 2 + 8, 3 + 1 + 8, 4 + 0 + 8, 5 - 1 + 8, 6 + 2 + 8]) / 3
    np.testing.assert_allclose(v0["features"]["vision"].numpy(), expect_f[:4], rtol=1e-6)
    np.testing.assert_allclose(v0["features"]["ground"].numpy(), expect_f[4:], rtol=1e-6)
    expect_c = np.array([0.05 + 0.15 + 0.20, 0.10 + 0.05 + 0.20, 0.20 + 0.0 + 0.05]) / 3
    np.testing.assert_allclose(v0["centroid"].numpy(), expect_c, atol=1e-7)
    v1 = got[(1, 0, 0)]
    assert v1["count"] == 1 and v1["last_seen"] == 10.0
    np.testing.assert_allclose(v1["features"]["vision"].numpy(), [9, 9, 9, 9])
    np.testing.assert_allclose(v1["centroid"].numpy(), [0.30, 0.0, 0.0], atol=1e-7)


def test_voxel_assignment_at_boundaries_and_negative_coords() -> None:
    mem = VoxelPatchMemory({"vision": 1}, voxel_size=0.25)  # binary-exact edge
    pts = np.array(
        [
            [0.0, 0.0, 0.0],  # lower edge belongs to voxel 0
            [0.25, 0.5, 0.75],  # exact edges -> next voxel
            [-0.25, -0.5, -1.0],  # negative exact edges
            [-1e-9, -0.2499, 0.2499],  # just below 0 -> -1; just below the edge stays
            [-3.0, 100.0, -100.125],
        ]
    )
    mem.integrate(pts, {"vision": np.zeros((5, 1))}, stamp=0.0)
    got = {tuple(c) for c in mem.coords.tolist()}
    assert got == {(0, 0, 0), (1, 2, 3), (-1, -2, -4), (-1, -1, 0), (-12, 400, -401)}


def test_duplicates_within_one_frame_are_aggregated() -> None:
    mem = VoxelPatchMemory({"vision": 2}, voxel_size=1.0)
    pts = np.array([[0.1, 0.1, 0.1], [0.9, 0.9, 0.9], [0.5, 0.5, 0.5], [5.5, 0.5, 0.5]])
    st = mem.integrate(pts, {"vision": [[1, 0], [2, 0], [6, 3], [7, 7]]}, stamp=1.0)
    assert st.new_voxels == 2 and len(mem) == 2
    got = by_coord(mem)
    assert got[(0, 0, 0)]["count"] == 3
    np.testing.assert_allclose(got[(0, 0, 0)]["features"]["vision"].numpy(), [3, 1])
    np.testing.assert_allclose(got[(0, 0, 0)]["centroid"].numpy(), [0.5, 0.5, 0.5], atol=1e-7)


def test_incremental_integrate_equals_one_batch() -> None:
    rng = np.random.default_rng(3)
    frames = [random_frame(rng, 400, 1.0, grid=0.1) for _ in range(6)]
    inc = VoxelPatchMemory(DIMS, voxel_size=0.2)
    for pts, f in frames:
        inc.integrate(pts, f, stamp=5.0)
    batch = VoxelPatchMemory(DIMS, voxel_size=0.2)
    batch.integrate(
        np.concatenate([p for p, _ in frames]),
        {k: torch.cat([f[k] for _, f in frames]) for k in DIMS},
        stamp=5.0,
    )
    a, b = sorted_view(inc), sorted_view(batch)
    assert len(inc) == len(batch) < 6 * 400  # voxels were revisited
    assert torch.equal(a["coords"], b["coords"])
    assert torch.equal(a["counts"], b["counts"])
    assert a["counts"].max() > 3
    for key in ("centroids", "f_vision", "f_ground"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert inc.stats().frames_integrated == 6 and batch.stats().frames_integrated == 1
    assert inc.stats().points_received == batch.stats().points_received == 2400


def test_non_finite_and_out_of_range_points_are_rejected_and_counted() -> None:
    mem = VoxelPatchMemory({"vision": 3}, voxel_size=0.1)
    pts = np.array(
        [
            [0.0, 0.0, 0.0],
            [np.nan, 0.0, 0.0],
            [0.0, np.inf, 0.0],
            [0.5, 0.5, 0.5],  # its feature has a NaN
            [1.0, 1.0, 1.0],  # its feature has -inf
            [1e9, 0.0, 0.0],  # beyond the 2^20-voxel range at 10 cm
            [2.0, 2.0, 2.0],  # finite features whose row sum overflows float32: kept
        ]
    )
    f = np.ones((7, 3), dtype=np.float32)
    f[3, 1] = np.nan
    f[4, 2] = -np.inf
    f[6] = [3e38, 3e38, 3e38]
    st = mem.integrate(pts, {"vision": f}, stamp=1.0)
    assert st.points == 7
    assert st.rejected_nonfinite == 4
    assert st.rejected_out_of_range == 1
    assert st.points_accepted == 2 and st.new_voxels == 2
    assert {tuple(c) for c in mem.coords.tolist()} == {(0, 0, 0), (20, 20, 20)}
    assert torch.isfinite(mem.features("vision")).all()
    s = mem.stats()
    assert (s.points_received, s.points_rejected_nonfinite, s.points_rejected_out_of_range) == (
        7,
        4,
        1,
    )
    assert s.points_rejected == 5


def test_input_validation() -> None:
    mem = VoxelPatchMemory(DIMS)
    pts = np.zeros((2, 3))
    with pytest.raises(ValueError, match="missing"):
        mem.integrate(pts, {"vision": np.zeros((2, 4))}, stamp=0.0)
    with pytest.raises(ValueError, match="expected"):
        mem.integrate(pts, {"vision": np.zeros((2, 5)), "ground": np.zeros((2, 2))}, 0.0)
    with pytest.raises(ValueError, match="rows"):
        mem.integrate(pts, {"vision": np.zeros((3, 4)), "ground": np.zeros((3, 2))}, 0.0)
    with pytest.raises(ValueError, match="stamp"):
        mem.integrate(pts, feats(np.zeros((2, 6))), stamp=math.nan)
    with pytest.raises(ValueError):
        VoxelPatchMemory({})
    assert len(mem) == 0
    # (H, W, C) grids are accepted and flattened consistently with (H, W, 3) points
    grid_pts = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    st = mem.integrate(
        grid_pts, {"vision": np.ones((2, 3, 4)), "ground": np.ones((2, 3, 2))}, stamp=0.0
    )
    assert st.points == 6 and len(mem) == 6


# ---------------------------------------------------------------------- bounds


def test_lru_eviction_order_least_recent_then_lowest_count() -> None:
    mem = VoxelPatchMemory({"vision": 1}, voxel_size=1.0, max_voxels=3, evict_headroom=0.0)

    def see(x: float, t: float, n: int = 1) -> None:
        mem.integrate(np.full((n, 3), [x, 0.5, 0.5]), {"vision": np.zeros((n, 1))}, stamp=t)

    see(0.5, 1.0)  # A
    see(1.5, 2.0)  # B
    see(2.5, 3.0)  # C
    see(0.5, 4.0)  # A seen again: B is now the least recently seen
    see(3.5, 5.0)  # D -> evicts B
    xs = sorted(c[0] for c in mem.coords.tolist())
    assert xs == [0, 2, 3]
    # equal last-seen: the one with fewer observations goes first
    mem.clear()
    mem.integrate(
        np.array([[0.5, 0.5, 0.5]] * 3 + [[1.5, 0.5, 0.5]] + [[2.5, 0.5, 0.5]] * 2),
        {"vision": np.zeros((6, 1))},
        stamp=10.0,
    )
    st = mem.integrate(np.array([[9.5, 0.5, 0.5]]), {"vision": np.zeros((1, 1))}, stamp=11.0)
    assert st.evicted.max_voxels == 1
    assert sorted(c[0] for c in mem.coords.tolist()) == [0, 2, 9]
    assert mem.stats().evictions[EVICT_MAX_VOXELS] == 2


def test_max_voxels_never_exceeded_and_hash_stays_consistent_over_long_stream() -> None:
    """Long random stream with heavy eviction (tombstones, slot reuse, table rebuilds),
    checked after every frame against counts kept in a Python dict."""
    rng = np.random.default_rng(7)
    max_voxels = 300
    mem = VoxelPatchMemory(DIMS, voxel_size=0.5, max_voxels=max_voxels, evict_headroom=0.05)
    new_total = 0
    for t in range(300):
        pts, f = random_frame(rng, int(rng.integers(1, 120)), 6.0)
        before = counts_by_coord(mem)
        observed: dict[tuple[int, int, int], int] = {}
        for c in map(tuple, np.floor(pts.astype(np.float64) / 0.5).astype(int).tolist()):
            observed[c] = observed.get(c, 0) + 1
        st = mem.integrate(pts, f, stamp=float(t))
        new_total += st.new_voxels
        assert len(mem) <= max_voxels
        got = {c: n for c, (_, n) in counts_by_coord(mem).items()}
        assert len(got) == len(mem)  # no coordinate stored twice
        assert set(observed) <= set(got)
        assert st.new_voxels == len(set(observed) - set(before))
        # survivors add this frame's points; new voxels start from them
        for c, n in got.items():
            assert n == (before[c][1] if c in before else 0) + observed.get(c, 0), c
        # evicted voxels are never more recent (last_seen, count) than surviving ones
        evicted = [before[c] for c in before if c not in got]
        kept = [before[c] for c in before if c in got and c not in observed]
        if evicted and kept:
            assert max(evicted) <= min(kept)
    s = mem.stats()
    assert s.evictions[EVICT_MAX_VOXELS] > 1000  # the bound was exercised hard
    assert len(mem) == new_total - s.voxels_evicted
    assert s.evictions[EVICT_RADIUS] == s.evictions[EVICT_AGE] == 0


def test_frame_with_more_new_voxels_than_the_bound_keeps_the_best_observed() -> None:
    mem = VoxelPatchMemory({"vision": 1}, voxel_size=1.0, max_voxels=5, evict_headroom=0.0)
    xs = [0, 1, 2, 3, 4, 5, 6, 7, 1, 3, 5, 5]  # voxels 1, 3 seen twice, 5 three times
    pts = np.array([[x + 0.5, 0.5, 0.5] for x in xs])
    st = mem.integrate(pts, {"vision": np.zeros((len(xs), 1))}, stamp=0.0)
    assert len(mem) == 5 and st.new_voxels == 5 and st.evicted.max_voxels == 3
    kept = sorted(c[0] for c in mem.coords.tolist())
    assert {1, 3, 5} <= set(kept)
    assert kept == [0, 1, 2, 3, 5]  # equal counts: lower coordinate key first


def test_radius_bound_holds_and_is_counted() -> None:
    mem = VoxelPatchMemory({"vision": 1}, voxel_size=0.1, max_radius=2.0, evict_headroom=0.0)
    pts = np.array([[0.55, 0.05, 0.05], [1.55, 0.05, 0.05], [2.55, 0.05, 0.05]])
    st = mem.integrate(pts, {"vision": np.zeros((3, 1))}, stamp=0.0, robot_position=[0, 0, 0])
    assert st.new_voxels == 2 and st.evicted.radius == 1  # 2.55 m away: never stored
    # robot moves +x by 1 m: the voxel at 0.55 is still inside, nothing to evict
    st = mem.integrate(
        np.array([[2.55, 0.05, 0.05]]), {"vision": np.zeros((1, 1))}, 1.0, robot_position=[1, 0, 0]
    )
    assert st.evicted.radius == 0 and len(mem) == 3
    # robot moves to x=3: the 0.55 voxel (2.45 m) goes, 1.55 (1.45 m) stays
    ev = mem.evict(robot_position=np.array([3.0, 0.0, 0.0]))
    assert ev.radius == 1 and len(mem) == 2
    d = torch.linalg.vector_norm(mem.centroids.double() - torch.tensor([3.0, 0, 0]), dim=1)
    assert bool((d <= 2.0).all())
    assert mem.stats().evictions[EVICT_RADIUS] == 2


def test_radius_bound_holds_along_a_random_walk() -> None:
    rng = np.random.default_rng(11)
    mem = VoxelPatchMemory(DIMS, voxel_size=0.25, max_radius=3.0)
    robot = np.zeros(3)
    for t in range(60):
        robot = robot + rng.normal(scale=0.3, size=3)
        pts, f = random_frame(rng, 100, 4.0)
        mem.integrate(pts + robot.astype(np.float32), f, float(t), robot_position=robot)
        d = torch.linalg.vector_norm(mem.centroids.double() - torch.from_numpy(robot), dim=1)
        assert bool((d <= 3.0 + 1e-9).all())
    assert mem.stats().evictions[EVICT_RADIUS] > 0


def test_age_bound_holds_and_is_counted() -> None:
    mem = VoxelPatchMemory({"vision": 1}, voxel_size=1.0, max_age_s=5.0, evict_headroom=0.0)
    for t in range(10):
        mem.integrate(np.array([[t + 0.5, 0.5, 0.5]]), {"vision": np.zeros((1, 1))}, float(t))
    # newest stamp 9: voxels last seen before t=4 are gone
    assert sorted(c[0] for c in mem.coords.tolist()) == [4, 5, 6, 7, 8, 9]
    assert bool((mem.last_seen >= 4.0).all())
    assert mem.stats().evictions[EVICT_AGE] == 4
    # a revisit refreshes a voxel; a late frame older than the window is not stored
    mem.integrate(np.array([[4.5, 0.5, 0.5]]), {"vision": np.zeros((1, 1))}, 9.5)
    st = mem.integrate(np.array([[20.5, 0.5, 0.5]]), {"vision": np.zeros((1, 1))}, 3.0)
    assert st.new_voxels == 0 and st.evicted.age == 1
    # evict() with a later clock ages the memory out with no new frames
    ev = mem.evict(now=13.0)
    assert ev.age == 3  # 5, 6, 7 last seen before 8.0
    assert sorted(c[0] for c in mem.coords.tolist()) == [4, 8, 9]
    assert mem.stats().evictions[EVICT_AGE] == 4 + 1 + 3


def test_bound_hysteresis_scans_rarely_and_bounds_still_hold() -> None:
    """With headroom, a bound that fires evicts down to (1 - headroom) of it, so a steady
    stream does not rescan the memory every frame; no voxel ever breaks a bound."""
    scans = {"n": 0}

    class Counting(VoxelPatchMemory):
        def _live_slots(self) -> torch.Tensor:
            scans["n"] += 1
            return super()._live_slots()

    mem = Counting({"vision": 1}, voxel_size=0.1, max_age_s=10.0, evict_headroom=0.2)
    for t in range(100):  # one new voxel per second
        mem.integrate(np.array([[t * 0.1 + 0.05, 0, 0]]), {"vision": np.zeros((1, 1))}, t)
        assert float(mem.last_seen.min()) >= t - 10.0
        scans["n"] -= 1  # the read just above
    assert scans["n"] <= 100 // 2  # a scan at most every 2 s (20 % of 10 s), not every frame
    assert 8 <= len(mem) <= 11
    # radius: points stay within 1 m of a robot walking +x; radius 3 m, headroom 0.2
    mem = Counting({"vision": 1}, voxel_size=0.1, max_radius=3.0, evict_headroom=0.2)
    scans["n"] = 0
    for t in range(100):
        x = 0.1 * t
        mem.integrate(
            np.array([[x + 0.55, 0.05, 0.05]]),
            {"vision": np.zeros((1, 1))},
            t,
            robot_position=[x, 0, 0],
        )
        d = torch.linalg.vector_norm(mem.centroids.double() - torch.tensor([x, 0, 0]), dim=1)
        assert bool((d <= 3.0).all())
        scans["n"] -= 1
    assert 0 < scans["n"] <= 100 // 3
    assert mem.stats().evictions[EVICT_RADIUS] > 50


def test_clear_and_len() -> None:
    mem = VoxelPatchMemory({"vision": 1}, voxel_size=1.0)
    mem.integrate(np.array([[0.5, 0, 0], [1.5, 0, 0]]), {"vision": np.zeros((2, 1))}, 1.0)
    assert len(mem) == 2
    assert mem.clear() == 2
    assert len(mem) == 0 and mem.snapshot_view().coords.shape == (0, 3)
    assert mem.stats().frames_integrated == 1  # lifetime counters survive clear
    mem.integrate(np.array([[0.5, 0, 0]]), {"vision": np.ones((1, 1))}, 2.0)
    assert len(mem) == 1 and int(mem.counts[0]) == 1


def test_accessors_agree_row_by_row_and_stats() -> None:
    rng = np.random.default_rng(5)
    mem = VoxelPatchMemory(DIMS, voxel_size=0.3, max_voxels=1000)
    for t in range(5):
        mem.integrate(*random_frame(rng, 200, 2.0), stamp=float(t))
    v = mem.snapshot_view()
    assert torch.equal(v.coords, mem.coords)
    assert torch.equal(v.counts, mem.counts)
    assert torch.equal(v.centroids, mem.centroids)
    assert torch.equal(v.features["ground"], mem.features("ground"))
    assert torch.equal(torch.floor(v.centroids.double() / 0.3).long(), v.coords)
    only = mem.snapshot_view(kinds=["ground"])
    assert list(only.features) == ["ground"] and len(only) == len(mem)
    with pytest.raises(KeyError):
        mem.features("depth")
    s = mem.stats()
    assert s.num_voxels == len(mem) and s.max_voxels == 1000
    assert s.memory_bytes >= 1000 * (4 * 6 + 8 + 8 + 12)
    lo, hi = mem.bounds()
    assert bool((lo <= hi).all())


# ------------------------------------------------------------------- snapshots


@pytest.fixture
def filled() -> VoxelPatchMemory:
    rng = np.random.default_rng(21)
    mem = VoxelPatchMemory(DIMS, voxel_size=0.2, max_voxels=2000, max_radius=50.0, max_age_s=100)
    for t in range(8):
        mem.integrate(*random_frame(rng, 300, 3.0, grid=0.2), stamp=1.7e9 + t * 0.1)
    mem.integrate(np.array([[np.nan, 0, 0]]), feats(np.zeros((1, 6))), stamp=1.7e9 + 1)
    return mem


def assert_same_memory(a: VoxelPatchMemory, b: VoxelPatchMemory) -> None:
    va, vb = sorted_view(a), sorted_view(b)
    assert va.keys() == vb.keys()
    for k in va:
        assert va[k].dtype == vb[k].dtype
        assert torch.equal(va[k], vb[k]), k


def test_snapshot_round_trip_is_exact(filled: VoxelPatchMemory, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "memory.safetensors"
    size = filled.save(path)
    assert size == path.stat().st_size > 0
    loaded = VoxelPatchMemory.load(path)
    assert_same_memory(filled, loaded)
    assert loaded.stats() == filled.stats()
    assert (loaded.voxel_size, loaded.max_voxels, loaded.max_radius, loaded.max_age_s) == (
        0.2,
        2000,
        50.0,
        100.0,
    )
    assert loaded.feature_dims == DIMS
    # the reloaded memory keeps working exactly like the original
    rng = np.random.default_rng(99)
    frame = random_frame(rng, 300, 3.0, grid=0.2)
    st_a = filled.integrate(*frame, stamp=1.7e9 + 2)
    st_b = loaded.integrate(*frame, stamp=1.7e9 + 2)
    assert st_a == st_b and st_a.updated_voxels > 0
    assert_same_memory(filled, loaded)
    # pooled tokens are bit-identical too
    pa, fa = filled.pool("vision", 0.6, max_tokens=20)
    pb, fb = loaded.pool("vision", 0.6, max_tokens=20)
    assert torch.equal(pa, pb) and torch.equal(fa, fb)


def test_snapshot_bfloat16_and_empty_round_trip(tmp_path: Path) -> None:
    mem = VoxelPatchMemory({"vision": 3}, voxel_size=0.5, feature_dtype=torch.bfloat16)
    mem.save(tmp_path / "empty.safetensors")
    assert len(VoxelPatchMemory.load(tmp_path / "empty.safetensors")) == 0
    mem.integrate(np.array([[0.1, 0.2, 0.3]]), {"vision": [[1.5, -2.0, 3.25]]}, stamp=4.0)
    mem.save(tmp_path / "bf16.safetensors")
    loaded = VoxelPatchMemory.load(tmp_path / "bf16.safetensors")
    assert loaded.feature_dtype == torch.bfloat16
    assert_same_memory(mem, loaded)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _header_len(path: Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("missing", "not found"),
        ("tensor_byte", "checksum mismatch"),
        ("last_byte", "checksum mismatch"),
        ("header_byte", "unreadable|not valid JSON|checksum|format|version|not a llava3d"),
        ("truncated", "unreadable"),
        ("garbage", "unreadable"),
        ("version", r"unsupported version 2, expected 1"),
        ("format", "wrong format 'something.else'"),
        ("no_header", "not a llava3d_ros memory snapshot"),
        ("config_edit", "checksum mismatch"),
    ],
)
def test_bad_snapshots_raise_snapshot_error_and_leave_memory_intact(
    filled: VoxelPatchMemory, tmp_path: Path, damage: str, match: str
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    filled.save(path)
    raw = path.read_bytes()
    hlen = _header_len(path)
    if damage == "missing":
        path = tmp_path / "nope.safetensors"
    elif damage == "tensor_byte":
        _flip_byte(path, 8 + hlen + (len(raw) - 8 - hlen) // 2)
    elif damage == "last_byte":
        _flip_byte(path, len(raw) - 1)
    elif damage == "header_byte":
        _flip_byte(path, 8 + hlen // 2)
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) - 100])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    else:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads(f.metadata()["llava3d_ros"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if damage == "version":
            header["version"] = SNAPSHOT_VERSION + 1
        elif damage == "format":
            header["format"] = "something.else"
        elif damage == "config_edit":
            header["voxel_size"] = 0.25  # valid JSON, but not what was checksummed
        meta = {} if damage == "no_header" else {"llava3d_ros": json.dumps(header)}
        save_file(tensors, str(path), metadata=meta)
    before = sorted_view(filled)
    stats_before = filled.stats()
    current = filled
    with pytest.raises(SnapshotError, match=match):
        current = VoxelPatchMemory.load(path)
    assert current is filled  # the node keeps its memory
    after = sorted_view(filled)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert filled.stats() == stats_before


def test_snapshot_header_contents(filled: VoxelPatchMemory, tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    filled.save(path)
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["llava3d_ros"])
    assert header["format"] == SNAPSHOT_FORMAT and header["version"] == SNAPSHOT_VERSION
    assert header["feature_dims"] == [["vision", 4], ["ground", 2]]
    assert header["bounds"]["max_voxels"] == 2000
    assert header["counters"]["points_rejected_nonfinite"] == 1
    assert header["checksum"].startswith("sha256:") and len(header["checksum"]) == 7 + 64


# --------------------------------------------------------------------- pooling


def test_pool_means_are_exact_count_weighted() -> None:
    mem = VoxelPatchMemory({"vision": 2, "ground": 1}, voxel_size=0.1)
    # cell (0,0,0) at 0.2 m holds voxel a (count 3) and voxel b (count 1)
    pts = np.array([[0.05, 0.05, 0.05]] * 3 + [[0.15, 0.05, 0.05], [0.45, 0.05, 0.05]])
    mem.integrate(
        pts,
        {"vision": [[3, 0], [3, 0], [3, 0], [7, 4], [1, 1]], "ground": [[1], [1], [1], [5], [2]]},
        stamp=0.0,
    )
    pos, f = mem.pool("vision", voxel_size=0.2)
    assert pos.shape == (2, 3) and f.shape == (2, 2)
    # rows sorted by cell key: x=0 cell first, then x=2 (0.45 m)
    np.testing.assert_allclose(f[0].numpy(), [(3 * 3 + 7) / 4, (0 * 3 + 4) / 4], rtol=1e-6)
    np.testing.assert_allclose(pos[0].numpy(), [(0.05 * 3 + 0.15) / 4, 0.05, 0.05], atol=1e-7)
    np.testing.assert_allclose(f[1].numpy(), [1, 1])
    np.testing.assert_allclose(pos[1].numpy(), [0.45, 0.05, 0.05], atol=1e-7)
    _, g = mem.pool("ground", voxel_size=0.2)
    np.testing.assert_allclose(g[:, 0].numpy(), [(1 * 3 + 5) / 4, 2], rtol=1e-6)
    empty = VoxelPatchMemory({"vision": 2})
    p0, f0 = empty.pool()
    assert p0.shape == (0, 3) and f0.shape == (0, 2)


def _cluster_and_sparse_memory() -> tuple[VoxelPatchMemory, np.ndarray]:
    """A dense 4 m cube of 0.2 m cells (8000) plus 40 isolated cells scattered far away."""
    rng = np.random.default_rng(4)
    g = (np.arange(20) + 0.5) * 0.2
    dense = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    sparse = rng.uniform([10, -30, 0], [40, 30, 3], size=(40, 3))
    sparse = (np.floor(sparse / 0.2) + 0.5) * 0.2
    pts = np.concatenate([dense, sparse]).astype(np.float32)
    mem = VoxelPatchMemory({"vision": 8}, voxel_size=0.2, max_voxels=10_000)
    mem.integrate(pts, {"vision": rng.normal(size=(len(pts), 8))}, stamp=0.0)
    return mem, sparse


def _coverage(all_pos: np.ndarray, chosen: np.ndarray) -> float:
    """Largest distance from any cell to its nearest chosen token."""
    return float(cKDTree(chosen).query(all_pos)[0].max())


def _sparse_distances(sparse: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    return cKDTree(chosen).query(sparse)[0]


def test_pool_cap_is_deterministic_sorted_and_spatially_fair() -> None:
    mem, sparse = _cluster_and_sparse_memory()
    all_pos, all_f = mem.pool("vision", 0.2, max_tokens=100_000)
    assert len(all_pos) == 8040
    cap = 2100  # T <= 4 * cap: plain farthest-point sampling over every cell
    pos, f = mem.pool("vision", 0.2, max_tokens=cap)
    assert pos.shape == (cap, 3) and f.shape == (cap, 8)
    pos2, f2 = mem.pool("vision", 0.2, max_tokens=cap)
    assert torch.equal(pos, pos2) and torch.equal(f, f2)
    # tokens are whole cells (rows of the uncapped pooling), in cell-key order
    dist, idx = cKDTree(all_pos.numpy()).query(pos.numpy())
    assert dist.max() < 1e-6
    assert list(idx) == sorted(idx) and len(set(idx.tolist())) == cap
    torch.testing.assert_close(all_f[idx], f)
    # every isolated far cell keeps its token; a uniform random subset of the same size
    # keeps about cap * 40 / 8040 = 10 of them
    chosen = pos.numpy().astype(np.float64)
    assert bool((_sparse_distances(sparse, chosen) < 1e-4).all())
    rng = np.random.default_rng(0)
    rand = all_pos.numpy()[rng.choice(len(all_pos), cap, replace=False)].astype(np.float64)
    assert (_sparse_distances(sparse, rand) < 1e-4).sum() <= 20
    cov_fps = _coverage(all_pos.numpy(), chosen)
    cov_rand = _coverage(all_pos.numpy(), rand)
    assert cov_fps < 0.5 and cov_rand > 5 * cov_fps


def test_pool_cap_with_candidate_thinning_still_covers_space() -> None:
    # a cap of 60 for 8040 cells takes the coarse-grid thinning path (T > 4 * cap)
    mem, sparse = _cluster_and_sparse_memory()
    all_pos, _ = mem.pool("vision", 0.2, max_tokens=100_000)
    pos, _ = mem.pool("vision", 0.2, max_tokens=60)
    pos2, _ = mem.pool("vision", 0.2, max_tokens=60)
    assert pos.shape == (60, 3) and torch.equal(pos, pos2)
    chosen = pos.numpy().astype(np.float64)
    rng = np.random.default_rng(0)
    rand = all_pos.numpy()[rng.choice(len(all_pos), 60, replace=False)].astype(np.float64)
    cov_fps = _coverage(all_pos.numpy(), chosen)
    cov_rand = _coverage(all_pos.numpy(), rand)
    far_fps = _sparse_distances(sparse, chosen)
    far_rand = _sparse_distances(sparse, rand)
    # measured: FPS leaves no cell farther than ~1.7 m from a token, random ~35 m
    assert cov_fps < 2.5 and cov_rand > 5 * cov_fps
    assert bool((far_fps < 1e-4).all())  # all 40 isolated cells kept
    assert (far_rand < 1e-4).sum() <= 5
    assert (chosen < 4.0).all(axis=1).sum() >= 10  # the cube keeps a share too
