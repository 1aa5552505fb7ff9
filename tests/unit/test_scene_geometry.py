"""TSDF map (llava3d_ros.core.objects.tsdf): planted depth, invalid depth, bounds, snapshots.

No rclpy. Depth images are planted analytically (a plane at a known distance), so the
fused surface can be checked against the true one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import threading

import numpy as np
import pytest

from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.core.objects.segmentation import SegmentationConfig
from llava3d_ros.core.objects.tracking import TrackingConfig
from llava3d_ros.core.objects.tsdf import (
    SNAPSHOT_FORMAT,
    GeometryConfig,
    SurfacePoints,
    TsdfMap,
    resolve_device,
)

K = CameraIntrinsics(fx=200.0, fy=200.0, cx=79.5, cy=59.5, width=160, height=120)
VS = 0.02
# A plane off the voxel lattice (1.51 m is not a multiple of 2 cm): a surface exactly on
# voxel centres has no sign change between them and extracts no points.
DIST = 1.51


def cfg(**kw: object) -> GeometryConfig:
    return GeometryConfig(**{"device": "CPU:0", **kw})  # type: ignore[arg-type]


def pose(t: tuple[float, float, float] = (0.0, 0.0, 0.0), yaw: float = 0.0) -> np.ndarray:
    """T_map_camera: camera optical axes (x right, y down, z forward) turned about map y."""
    c, s = math.cos(yaw), math.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    m[:3, 3] = t
    return m


def plane_depth(dist: float = DIST) -> np.ndarray:
    return np.full(K.shape, dist, dtype=np.float32)


def grey() -> np.ndarray:
    return np.full((*K.shape, 3), 128, dtype=np.uint8)


def fuse(m: TsdfMap, n: int = 3, dist: float = DIST, t0: float = 0.0, **kw: object) -> None:
    for i in range(n):
        m.integrate(plane_depth(dist), grey(), K, pose(**kw), t0 + 0.1 * i)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- TSDF


def test_planted_plane_is_fused_within_a_voxel() -> None:
    m = TsdfMap(cfg())
    fuse(m, 3)
    s = m.surface()
    assert len(s) > 2000  # the 160x120 view covers ~1.2 x 0.9 m at 1.51 m: ~2.7k voxels
    assert np.abs(s.points[:, 2] - DIST).max() < VS
    assert np.median(np.abs(s.points[:, 2] - DIST)) < 0.005
    # Normals point back at the camera (-z), colours are the grey that went in.
    assert np.mean(s.normals[:, 2] < -0.9) > 0.95
    assert np.allclose(np.median(s.colors, axis=0), 128 / 255, atol=0.02)
    assert s.points.dtype == np.float32 and s.colors.max() <= 1.0


def test_pose_places_the_surface_in_the_map_frame() -> None:
    # Camera at (1, 0, 0.5) turned 90 degrees about map y: optical z -> map +x.
    m = TsdfMap(cfg())
    fuse(m, 3, t=(1.0, 0.0, 0.5), yaw=math.pi / 2)
    s = m.surface()
    assert len(s) > 2000
    assert np.abs(s.points[:, 0] - (1.0 + DIST)).max() < VS
    assert np.mean(s.normals[:, 0] < -0.9) > 0.95


def test_invalid_depth_is_ignored() -> None:
    depth = plane_depth()
    depth[:, :40] = np.nan  # left quarter
    depth[:, 40:80] = 0.0
    depth[:30, 80:] = np.inf
    depth[30:40, 80:] = -1.0
    m = TsdfMap(cfg())
    for i in range(3):
        stats = m.integrate(depth, grey(), K, pose(), 0.1 * i)
    assert stats.valid_pixels == 80 * 80
    s = m.surface()
    assert len(s) > 500
    assert np.abs(s.points[:, 2] - DIST).max() < VS
    # Nothing left of the image centre (u < 80 <=> x < 0) or in the top rows (v < 40).
    assert s.points[:, 0].min() > -VS
    top = (40 - K.cy) / K.fy * DIST
    assert s.points[:, 1].min() > top - 2 * VS


def test_all_invalid_frame_changes_nothing() -> None:
    m = TsdfMap(cfg())
    st = m.integrate(np.full(K.shape, np.nan, np.float32), grey(), K, pose(), 0.0)
    assert st.valid_pixels == 0 and st.blocks_touched == 0 and m.num_blocks == 0
    assert len(m.surface()) == 0 and m.bounds is None


def test_depth_range_limits() -> None:
    m = TsdfMap(cfg(max_depth_m=1.0))
    st = m.integrate(plane_depth(), grey(), K, pose(), 0.0)
    assert st.valid_pixels == 0 and m.num_blocks == 0


def test_bad_inputs_are_rejected() -> None:
    m = TsdfMap(cfg())
    with pytest.raises(ValueError, match="depth"):
        m.integrate(np.ones((10, 10), np.float32), grey(), K, pose(), 0.0)
    with pytest.raises(ValueError, match="rgb"):
        m.integrate(plane_depth(), np.zeros((*K.shape, 3), np.float32), K, pose(), 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.integrate(plane_depth(), grey(), K, np.eye(3), 0.0)
    with pytest.raises(ValueError, match="robot_position"):
        m.integrate(plane_depth(), grey(), K, pose(), 0.0, np.array([np.nan, 0, 0]))


def test_depth_only_integration() -> None:
    m = TsdfMap(cfg())
    for i in range(2):
        m.integrate(plane_depth(), None, K, pose(), 0.1 * i)
    s = m.surface()
    assert len(s) > 2000 and np.abs(s.points[:, 2] - DIST).max() < VS


def test_capacity_evicts_least_recently_updated_blocks() -> None:
    m = TsdfMap(cfg(max_blocks=100))  # one plane: ~48 blocks
    fuse(m, 2, dist=1.51)
    first = m.num_blocks
    assert 0 < first <= 100
    # Two more planes elsewhere: the first one's blocks go first.
    fuse(m, 2, dist=1.51, t0=10.0, t=(3.0, 0.0, 0.0))
    fuse(m, 2, dist=1.51, t0=20.0, t=(6.0, 0.0, 0.0))
    assert m.num_blocks <= 100
    assert m.evicted_total["capacity"] > 0
    s = m.surface()
    # The newest plane is intact; none of the oldest is left.
    newest = np.abs(s.points[:, 0] - 6.0) < 0.7
    assert newest.sum() > 2000
    assert not np.any(np.abs(s.points[:, 0]) < 0.6)
    _, stamps = m.block_stamps()
    assert stamps.min() >= 10.0


def test_radius_bound_evicts_far_blocks() -> None:
    m = TsdfMap(cfg(max_radius_m=2.0))
    fuse(m, 2)  # plane 1.51 m ahead of the robot at the origin: inside
    n0 = m.num_blocks
    st = m.integrate(plane_depth(), grey(), K, pose(), 1.0, np.zeros(3))
    assert st.evicted_radius == 0 and m.num_blocks == n0
    robot = np.array([1.5, 0.0, DIST])  # beside the plane's right half
    st = m.integrate(plane_depth(), grey(), K, pose(), 2.0, robot)
    assert 0 < st.evicted_radius < n0
    coords, _ = m.block_stamps()
    centres = (coords + 0.5) * cfg().block_size
    assert np.linalg.norm(centres - robot, axis=1).max() <= 2.0
    s = m.surface()
    assert s.points[:, 0].min() > 1.5 - 2.0 - cfg().block_size


def test_age_bound_evicts_old_blocks() -> None:
    m = TsdfMap(cfg(max_age_s=1.0))
    fuse(m, 2, t0=0.0)
    fuse(m, 2, t0=5.0, t=(4.0, 0.0, 0.0))
    assert m.evicted_total["age"] > 0
    s = m.surface()
    assert len(s) > 2000 and s.points[:, 0].min() > 3.0


def test_evicted_blocks_start_empty_when_reused() -> None:
    # open3d hands an erased block's buffer to the next new block unchanged; the map
    # zeroes it, so re-observed space starts from weight 0, not the old weights.
    m = TsdfMap(cfg(max_radius_m=2.0))
    fuse(m, 5)
    _, t = m.state()
    assert int(t["weight"].max()) == 5
    m.integrate(plane_depth(), grey(), K, pose(), 1.0, np.array([0.0, 0.0, -10.0]))
    assert m.num_blocks == 0
    m.integrate(plane_depth(), grey(), K, pose(), 2.0)
    _, t = m.state()
    assert int(t["weight"].max()) == 1


def test_weights_are_capped() -> None:
    m = TsdfMap(cfg(max_weight=4))
    fuse(m, 4 + TsdfMap.weight_slack + 3)
    _, t = m.state()
    assert int(t["weight"].max()) <= 4 + TsdfMap.weight_slack


def test_state_round_trip() -> None:
    m = TsdfMap(cfg())
    fuse(m, 3)
    fuse(m, 2, t0=5.0, t=(0.5, 0.0, 0.2))
    header, tensors = m.state()
    json.dumps(header)  # JSON-able
    m2 = TsdfMap.from_state(header, tensors, cfg())
    assert m2.num_blocks == m.num_blocks
    a, b = m.surface(), m2.surface()
    assert len(a) == len(b) > 0
    oa, ob = np.lexsort(a.points.T), np.lexsort(b.points.T)
    assert np.array_equal(a.points[oa], b.points[ob])
    assert np.array_equal(a.colors[oa], b.colors[ob])
    ca, sa = m.block_stamps()
    cb, sb = m2.block_stamps()
    assert np.array_equal(ca, cb) and np.array_equal(sa, sb)
    # It keeps integrating like the original.
    m.integrate(plane_depth(1.7), grey(), K, pose(), 9.0)
    m2.integrate(plane_depth(1.7), grey(), K, pose(), 9.0)
    assert len(m.surface()) == len(m2.surface())


def test_state_larger_than_capacity_keeps_the_newest_blocks() -> None:
    m = TsdfMap(cfg())
    fuse(m, 2, t0=0.0)
    fuse(m, 2, t0=10.0, t=(3.0, 0.0, 0.0))
    header, tensors = m.state()
    small = TsdfMap.from_state(header, tensors, cfg(max_blocks=m.num_blocks // 2))
    assert small.num_blocks == m.num_blocks // 2
    assert small.evicted_total["capacity"] == m.num_blocks - m.num_blocks // 2
    _, stamps = small.block_stamps()
    assert stamps.min() >= 10.0


def _malformed(header: dict, tensors: dict) -> list[tuple[str, dict, dict]]:
    def h(**kw: object) -> dict:
        return {**header, **kw}

    def t(**kw: object) -> dict:
        return {**tensors, **kw}

    nan_tsdf = tensors["tsdf"].copy()
    nan_tsdf[0, 0, 0, 0] = np.nan
    big_tsdf = tensors["tsdf"].copy()
    big_tsdf[0, 0, 0, 0] = 3.0
    dup = tensors["block_coords"].copy()
    dup[1] = dup[0]
    return [
        ("format", h(format="something.else"), tensors),
        ("version", h(version=99), tensors),
        ("voxel size", h(voxel_size=0.05), tensors),
        ("block resolution", h(block_resolution=16), tensors),
        ("missing tensor", header, {k: v for k, v in tensors.items() if k != "weight"}),
        ("dtype", header, t(tsdf=tensors["tsdf"].astype(np.float64))),
        ("shape", header, t(color=tensors["color"][..., :2].copy())),
        ("row count", header, t(last_update_s=tensors["last_update_s"][:-1].copy())),
        ("non-finite", header, t(tsdf=nan_tsdf)),
        ("out of range", header, t(tsdf=big_tsdf)),
        ("duplicate blocks", header, t(block_coords=dup)),
        ("num_blocks", h(num_blocks=3), tensors),
        ("stamp", h(newest_stamp_s="yesterday"), tensors),
    ]


def test_malformed_states_are_rejected() -> None:
    m = TsdfMap(cfg())
    fuse(m, 2)
    header, tensors = m.state()
    assert header["format"] == SNAPSHOT_FORMAT
    for what, h, t in _malformed(header, tensors):
        with pytest.raises(ValueError):
            TsdfMap.from_state(h, t, cfg())
        assert what  # (named for the traceback)


def test_clear_and_bounds() -> None:
    m = TsdfMap(cfg())
    fuse(m, 2)
    lo, hi = m.bounds  # type: ignore[misc]
    assert lo[2] <= DIST <= hi[2] and np.all(hi > lo)
    m.clear()
    assert m.num_blocks == 0 and len(m.surface()) == 0


def test_surface_can_be_read_while_integrating() -> None:
    m = TsdfMap(cfg())
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for i in range(30):
                m.integrate(plane_depth(1.31 + 0.02 * (i % 5)), grey(), K, pose(), 0.1 * i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    th = threading.Thread(target=ingest)
    th.start()
    sizes = []
    while th.is_alive():
        s = m.surface()
        sizes.append(len(s))
        assert s.points.shape == s.normals.shape == s.colors.shape
    th.join()
    assert not errors and m.frames_integrated == 30 and max(sizes) > 0


def test_config_validation_and_metadata() -> None:
    with pytest.raises(ValueError):
        GeometryConfig(voxel_size=-0.02)
    with pytest.raises(ValueError):
        GeometryConfig(device="GPU")
    with pytest.raises(ValueError):
        GeometryConfig(min_depth_m=5.0, max_depth_m=4.0)
    with pytest.raises(ValueError):
        GeometryConfig(block_resolution=8.5)  # type: ignore[arg-type]
    assert resolve_device("CPU:0") == "CPU:0"
    assert resolve_device("auto") in ("CPU:0", "CUDA:0")
    for cls in (GeometryConfig, SegmentationConfig, TrackingConfig):
        for f in dataclasses.fields(cls):
            assert set(f.metadata) <= {"help", "min", "max", "choices"}, (cls, f.name)
            assert f.metadata.get("help"), (cls, f.name)
            if f.name != "device":
                assert "min" in f.metadata and "max" in f.metadata, (cls, f.name)


def test_surface_points_from_arrays_validates() -> None:
    s = SurfacePoints.from_arrays(np.zeros((3, 3)), np.tile([0, 0, 1.0], (3, 1)))
    assert len(s) == 3 and s.colors.shape == (3, 3)
    with pytest.raises(ValueError):
        SurfacePoints.from_arrays(np.zeros((3, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        SurfacePoints.from_arrays(np.full((1, 3), np.nan), np.zeros((1, 3)))


def test_grid_grows_past_its_first_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    # open3d rehashes a full table (buffer indices change); bookkeeping is by block key.
    monkeypatch.setattr(TsdfMap, "initial_blocks", 16)
    m = TsdfMap(cfg(max_blocks=150))
    assert m.memory_bytes == 16 * 8**3 * 12
    for k in range(4):  # ~48 blocks a plane: grows, then evicts
        fuse(m, 2, t0=10.0 * k, t=(3.0 * k, 0.0, 0.0))
    assert m.num_blocks <= 150 and m.evicted_total["capacity"] > 0
    assert m.memory_bytes > 16 * 8**3 * 12
    _, tensors = m.state()  # every tracked block is in the grid
    assert len(tensors["block_coords"]) == m.num_blocks
    s = m.surface()
    assert np.abs(s.points[:, 2] - DIST).max() < VS
    assert np.sum(np.abs(s.points[:, 0] - 9.0) < 0.6) > 2000


def test_without_open3d_only_the_tsdf_is_missing_and_it_says_how_to_fix_it() -> None:
    """open3d is the object layer's dependency alone: where it cannot be installed (a GPU
    image, some Jetson setups) the package imports, a pipeline without the object layer
    runs, and asking for the TSDF names the package and the parameter."""
    script = """
import sys
sys.modules["open3d"] = None  # import open3d fails as if it were not installed
sys.modules["open3d.core"] = None
import numpy as np
from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.geometry import CameraIntrinsics, make_transform
from llava3d_ros.core.objects.tsdf import TsdfMap
try:
    TsdfMap()
except RuntimeError as exc:
    print("TSDF:", exc)
cfg = pl.PipelineConfig.from_dict({"objects": {"enabled": False}})
pipe = pl.ScenePipeline(cfg, create_encoders({"backend": "dinov2_onnx"}))
depth = np.full((120, 160), 1.5, np.float32)
rgb = np.zeros((120, 160, 3), np.uint8)
out = pipe.process_frame(
    rgb, depth, CameraIntrinsics(100.0, 100.0, 80.0, 60.0, 160, 120),
    make_transform([0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]), 0.0, force=True,
)
pipe.stop()
print("patches", out.patches)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TSDF: the object layer's TSDF needs open3d" in done.stdout
    assert "objects.enabled: false" in done.stdout
    assert int(done.stdout.split("patches")[-1]) > 0
