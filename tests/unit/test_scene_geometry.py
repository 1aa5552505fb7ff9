"""TSDF map (llava3d_ros.core.objects.tsdf): planted depth, invalid depth, bounds, snapshots,
on both block grids (open3d's and the torch one), and the two grids against each other.

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
from scipy.spatial import cKDTree

from llava3d_ros.core import voxel_keys as vk
from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.core.objects import tsdf as tsdf_module
from llava3d_ros.core.objects import tsdf_torch
from llava3d_ros.core.objects.segmentation import SegmentationConfig
from llava3d_ros.core.objects.tracking import TrackingConfig
from llava3d_ros.core.objects.tsdf import (
    SNAPSHOT_FORMAT,
    GeometryConfig,
    SurfacePoints,
    TsdfMap,
    resolve_backend,
    resolve_device,
)
from llava3d_ros.core.objects.tsdf_open3d import OPEN3D_MISSING, Open3dBlockGrid

K = CameraIntrinsics(fx=200.0, fy=200.0, cx=79.5, cy=59.5, width=160, height=120)
VS = 0.02
# A plane off the voxel lattice (1.51 m is not a multiple of 2 cm): a surface exactly on
# voxel centres has no sign change between them and extracts no points.
DIST = 1.51


BACKENDS = ["torch"] + ([] if OPEN3D_MISSING is not None else ["open3d"])
_backend = {"name": "torch"}


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test runs on each block grid (a test that concerns one names it)."""
    _backend["name"] = request.param
    return str(request.param)


def one_backend(name: str = "torch") -> pytest.MarkDecorator:
    missing = name == "open3d" and OPEN3D_MISSING is not None
    only = pytest.param(name, marks=pytest.mark.skipif(missing, reason="open3d not installed"))
    return pytest.mark.parametrize("backend", [only], indirect=True)


def cfg(**kw: object) -> GeometryConfig:
    return GeometryConfig(**{"device": "CPU:0", "backend": _backend["name"], **kw})  # type: ignore[arg-type]


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


@one_backend()
def test_config_validation_and_metadata() -> None:
    with pytest.raises(ValueError):
        GeometryConfig(voxel_size=-0.02)
    with pytest.raises(ValueError):
        GeometryConfig(device="GPU")
    with pytest.raises(ValueError):
        GeometryConfig(min_depth_m=5.0, max_depth_m=4.0)
    with pytest.raises(ValueError):
        GeometryConfig(block_resolution=8.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        GeometryConfig(backend="vdb")
    assert resolve_device("CPU:0") == "CPU:0"
    assert resolve_device("auto") in ("CPU:0", "CUDA:0")
    for cls in (GeometryConfig, SegmentationConfig, TrackingConfig):
        for f in dataclasses.fields(cls):
            assert set(f.metadata) <= {"help", "min", "max", "choices"}, (cls, f.name)
            assert f.metadata.get("help"), (cls, f.name)
            if f.name not in ("device", "backend"):
                assert "min" in f.metadata and "max" in f.metadata, (cls, f.name)


@one_backend()
def test_surface_points_from_arrays_validates() -> None:
    s = SurfacePoints.from_arrays(np.zeros((3, 3)), np.tile([0, 0, 1.0], (3, 1)))
    assert len(s) == 3 and s.colors.shape == (3, 3)
    with pytest.raises(ValueError):
        SurfacePoints.from_arrays(np.zeros((3, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        SurfacePoints.from_arrays(np.full((1, 3), np.nan), np.zeros((1, 3)))


@one_backend("open3d")
def test_grid_grows_past_its_first_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    # open3d rehashes a full table (buffer indices change); bookkeeping is by block key.
    monkeypatch.setattr(Open3dBlockGrid, "initial_blocks", 16)
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


@one_backend()
def test_without_open3d_the_object_layer_runs_on_the_torch_grid() -> None:
    """open3d is optional: where it cannot be installed (a GPU image, a Jetson) the TSDF
    runs on the torch grid and the object layer works; asking for open3d by name says
    what to install and which parameter to change."""
    script = """
import sys
sys.modules["open3d"] = None  # import open3d fails as if it were not installed
sys.modules["open3d.core"] = None
import numpy as np
from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.geometry import CameraIntrinsics, make_transform
from llava3d_ros.core.objects.tsdf import GeometryConfig, TsdfMap
print("backend", TsdfMap(GeometryConfig(device="CPU:0")).backend)
try:
    TsdfMap(GeometryConfig(device="CPU:0", backend="open3d"))
except RuntimeError as exc:
    print("TSDF:", exc)
cfg = pl.PipelineConfig.from_dict({"geometry": {"device": "CPU:0"}})
pipe = pl.ScenePipeline(cfg, create_encoders({"backend": "dinov2_onnx"}))
depth = np.full((120, 160), 1.51, np.float32)
rgb = np.zeros((120, 160, 3), np.uint8)
for i in range(3):
    out = pipe.process_frame(
        rgb, depth, CameraIntrinsics(100.0, 100.0, 80.0, 60.0, 160, 120),
        make_transform([0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]), float(i), force=True,
    )
blocks = pipe.objects.tsdf.num_blocks
surface = len(pipe.objects.tsdf.surface())
pipe.stop()
print("patches", out.patches, "blocks", blocks, "surface", surface)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend torch" in done.stdout
    assert "TSDF: geometry.backend open3d needs open3d" in done.stdout
    assert "geometry.backend: torch" in done.stdout
    words = done.stdout.split()
    assert int(words[words.index("patches") + 1]) > 0
    assert int(words[words.index("blocks") + 1]) > 0
    assert int(words[words.index("surface") + 1]) > 1000


# ------------------------------------------------------------------- the two grids


def _scene_depth(t_map_camera: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slanted wall with a ball in front of it, ray-cast, with 2 mm noise."""
    h, w = K.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], -1)
    rays = rays @ t_map_camera[:3, :3].T
    origin = t_map_camera[:3, 3]
    normal, offset = np.array([0.3, 0.0, 1.0]), 2.0  # wall: n . p = offset
    wall = (offset - origin @ normal) / (rays @ normal)
    centre, radius = np.array([0.2, 0.1, 1.4]), 0.2
    oc = origin - centre
    a, b = (rays * rays).sum(-1), rays @ oc
    disc = b * b - a * (oc @ oc - radius * radius)
    ball = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0.0))) / a, np.inf)
    scale = np.where((ball > 0) & (ball < wall), ball, wall)  # rays have z = 1 in the camera
    return (scale + rng.normal(0.0, 0.002, scale.shape)).astype(np.float32)


def _fuse_scene(m: TsdfMap, frames: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(frames):
        t = pose((0.05 * i - 0.2, 0.02 * i, 0.0), yaw=0.05 * i - 0.2)
        rgb = rng.integers(0, 256, (*K.shape, 3), dtype=np.uint8)
        m.integrate(_scene_depth(t, rng), rgb, K, t, 0.1 * i)


@one_backend("open3d")
def test_the_torch_grid_fuses_what_open3d_fuses() -> None:
    """Same blocks, weights, TSDF and surface as open3d's grid (the segmentation was tuned
    on open3d's surface): only float rounding at pixel edges differs."""
    o3, tc = TsdfMap(cfg(backend="open3d")), TsdfMap(cfg(backend="torch"))
    _fuse_scene(o3)
    _fuse_scene(tc)
    (_, a), (_, b) = o3.state(), tc.state()
    assert np.array_equal(a["block_coords"], b["block_coords"]) and len(a["block_coords"]) > 300
    assert np.mean(a["weight"] == b["weight"]) > 0.999
    seen = (a["weight"] > 0) & (b["weight"] > 0)
    assert np.mean(np.abs(a["tsdf"][seen] - b["tsdf"][seen]) < 1e-4) > 0.999
    # open3d leaves the colour of voxels seen in the image's first row unset; elsewhere
    # the colours agree to the truncation.
    assert np.mean(np.abs(a["color"][seen].astype(int) - b["color"][seen]).max(-1) <= 1) > 0.95
    sa, sb = o3.surface(), tc.surface()
    assert abs(len(sa) - len(sb)) <= len(sa) // 1000 and len(sa) > 10000
    dist, nearest = cKDTree(sa.points).query(sb.points)
    assert np.quantile(dist, 0.999) < 1e-4
    assert np.mean(np.sum(sb.normals * sa.normals[nearest], axis=1) > 0.99) > 0.99


@one_backend("open3d")
def test_snapshots_load_into_either_grid() -> None:
    for src, dst in (("open3d", "torch"), ("torch", "open3d")):
        m = TsdfMap(cfg(backend=src))
        _fuse_scene(m, frames=3)
        header, tensors = m.state()
        back = TsdfMap.from_state(header, tensors, cfg(backend=dst))
        assert back.backend == dst
        _, again = back.state()
        for name in tensors:
            assert np.array_equal(tensors[name], again[name]), (src, dst, name)
        a, b = m.surface(), back.surface()
        assert abs(len(a) - len(b)) <= len(a) // 1000 and len(a) > 1000
        dist, _ = cKDTree(a.points).query(b.points)
        assert np.quantile(dist, 0.999) < 1e-4, (src, dst)


@one_backend()
def test_touched_blocks_by_occupancy_grid_and_by_sort_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sort is the fallback for occupancy grids too large to hold (long depth ranges)."""
    dense = TsdfMap(cfg())
    _fuse_scene(dense, frames=3)
    monkeypatch.setattr(tsdf_torch, "_MAX_OCCUPANCY_CELLS", 0)
    sorted_ = TsdfMap(cfg())
    _fuse_scene(sorted_, frames=3)
    (_, a), (_, b) = dense.state(), sorted_.state()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@one_backend()
def test_surface_extraction_in_passes_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large maps are extracted a few blocks at a time: same points, same order."""
    m = TsdfMap(cfg())
    _fuse_scene(m, frames=3)
    whole = m.surface()
    monkeypatch.setattr(tsdf_torch, "_EXTRACT_CHUNK", 7)
    passes = m.surface()
    assert m.num_blocks > 10 * 7 and len(whole) > 1000
    for name in ("points", "normals", "colors"):
        assert np.array_equal(getattr(whole, name), getattr(passes, name)), name


@one_backend()
def test_torch_grid_reserves_its_capacity_and_reuses_freed_slots() -> None:
    m = TsdfMap(cfg(max_blocks=100))
    assert m.memory_bytes == 100 * 8**3 * (4 + 4 + 3)
    for k in range(6):  # ~48 blocks a plane: evicts, slots are reused
        fuse(m, 2, t0=10.0 * k, t=(3.0 * k, 0.0, 0.0))
    assert m.num_blocks <= 100 and m.evicted_total["capacity"] > 150
    s = m.surface()
    assert np.sum(np.abs(s.points[:, 0] - 15.0) < 0.6) > 2000
    assert not np.any(s.points[:, 0] < 8.0)


@one_backend()
def test_backend_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("vdb", "CPU:0")
    assert resolve_backend("torch", "CUDA:0") == "torch"
    monkeypatch.setattr(tsdf_module, "open3d_has_cuda", lambda: False)
    assert resolve_backend("auto", "CUDA:0") == "torch"
    if OPEN3D_MISSING is None:
        assert resolve_backend("auto", "CPU:0") == "open3d"
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_backend("open3d", "CUDA:0")
        monkeypatch.setattr(tsdf_module, "open3d_has_cuda", lambda: True)
        assert resolve_backend("auto", "CUDA:0") == "open3d"
    monkeypatch.setattr(tsdf_module, "OPEN3D_MISSING", ImportError("no open3d"))
    assert resolve_backend("auto", "CPU:0") == "torch"
    monkeypatch.setattr(tsdf_module, "open3d_has_cuda", lambda: False)
    monkeypatch.setattr(tsdf_module, "cuda_available", lambda: True)
    assert resolve_device("auto", "auto") == "CUDA:0"
    assert resolve_device("auto", "open3d") == "CPU:0"
    assert tsdf_torch.torch_device_name("CUDA:1") == "cuda:1"
    assert tsdf_torch.torch_device_name("CPU:0") == "cpu"
    assert vk.KEY_BITS == 21  # block keys pack as the package's voxel keys
