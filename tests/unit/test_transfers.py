"""The transfer meter sees copies between devices, scalar reads and data-dependent sizes;
a keyframe's hot path stays within a small, fixed number of them (a regression that adds a
per-patch ``.item()`` or a round trip through the host fails here). On the CPU "device"
copies are made visible with the meta device; the CUDA test runs on the GPU where there
is one, else on the emulated device (tests/cuda_emulation.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.geometry import CameraIntrinsics, make_transform
from llava3d_ros.core.transfers import TransferMeter
from tests.cuda_emulation import cuda_or_emulated
from tests.model_fixtures import make_tiny_clip

H, W = 120, 160
K = CameraIntrinsics(100.0, 100.0, 80.0, 60.0, W, H)
# Scalar reads + data-dependent sizes of a keyframe through lift + fuse + the object layer
# (the CPU count is the GPU's: the same torch calls). 8 on these frames today: 1 in
# lifting, the rest in the voxel hash and fusion (21 before the hash probed in masked
# rounds); a per-patch .item() would add hundreds.
MAX_SYNCS_PER_KEYFRAME = 10
# Operators doing device work per keyframe, the tiny CLIP and the torch TSDF grid included
# (each one a kernel launch on a GPU, ~5 us of host time): 533 on these frames today
# (954 before the hash table read its probes in windows and the TSDF sampled its rays'
# depths at once).
MAX_LAUNCHES_PER_KEYFRAME = 640


def test_copies_between_host_and_a_device_are_counted_with_their_size() -> None:
    x = torch.ones(10, dtype=torch.float32)
    with TransferMeter() as meter:
        x.to("meta")
        torch.empty(10, device="meta").copy_(x)
        x.to(torch.float64)  # same device: not a transfer
        x.clone()
    c = meter.counts
    assert (c.h2d, c.h2d_bytes, c.d2h) == (2, 80, 0)
    assert c.where == {"h2d _to_copy": 1, "h2d copy_": 1}
    assert c.syncs == 0


def test_scalar_reads_and_data_dependent_sizes_are_syncs() -> None:
    x = torch.arange(6.0)
    with TransferMeter() as meter:
        x.sum().item()
        bool(x.any())
        int(x[0])
        torch.nonzero(x)
        torch.unique(x)
        x[x > 2]  # boolean indexing: nonzero inside
        x + 1  # neither
    c = meter.counts
    assert c.scalar_reads == 3
    assert c.data_dependent == 3
    assert c.syncs == 6
    assert "3 scalar reads, 3 data-dependent sizes" in c.summary()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    clip = make_tiny_clip(tmp_path_factory.mktemp("m") / "clip")
    return create_encoders({"backend": "hf_clip", "model": str(clip)})


def _keyframe_counts(bundle, device: str, frames: int = 4, grid: str = "auto"):  # type: ignore[no-untyped-def]
    cfg = pl.PipelineConfig.from_dict(
        {
            "memory": {"voxel_size": 0.1, "device": device},
            "geometry": {"device": "CUDA:0" if device == "cuda" else "CPU:0", "backend": grid},
            "keyframes": {"max_interval_s": 0.0},
            "objects": {"update_period_s": 3600.0},
        }
    )
    pipe = pl.ScenePipeline(cfg, bundle)
    rng = np.random.default_rng(0)
    counts = []
    for i in range(frames):
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        depth = np.full((H, W), 2.0 + 0.3 * i, np.float32)
        depth[:, : W // 3] = 1.2  # a step: more than one voxel layer
        pose = make_transform([0.2 * i, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])
        with TransferMeter() as meter:
            out = pipe.process_frame(rgb, depth, K, pose, float(i), force=True)
        assert out.keyframe is not None and out.patches > 0
        counts.append(meter.counts)
    pipe.stop()
    return counts


def test_a_keyframe_on_the_cpu_needs_few_syncs(bundle) -> None:  # type: ignore[no-untyped-def]
    for c in _keyframe_counts(bundle, "cpu"):
        assert 0 < c.syncs <= MAX_SYNCS_PER_KEYFRAME, c
        assert c.h2d == c.d2h == 0


def test_a_keyframe_launches_a_bounded_number_of_operators(bundle) -> None:  # type: ignore[no-untyped-def]
    for c in _keyframe_counts(bundle, "cpu", grid="torch"):
        assert 0 < c.launches <= MAX_LAUNCHES_PER_KEYFRAME, c.summary()


def test_views_and_allocations_launch_nothing() -> None:
    x = torch.arange(12.0)
    with TransferMeter() as meter:
        y = x.view(3, 4).t()[1:]  # views
        torch.empty(5)
        torch.empty_like(x)
    assert meter.counts.launches == 0
    with TransferMeter() as meter:
        (y + 1).sum()
        x.clone()
    assert meter.counts.launches == 3
    assert "3 operator launches" in meter.counts.summary()


def test_a_keyframe_on_cuda_copies_only_one_way(tmp_path: Path) -> None:
    """Encoder, memory and TSDF (the torch grid) on the GPU: the frame, its depth and pose
    go up (lifting and the TSDF run on the device), the object layer's fp16 copy of the
    patch features and the keys of the blocks the frame touched (the host keeps the
    blocks' bookkeeping) come down once; nothing makes a round trip, and the syncs are the
    CPU run's. On the real GPU where there is one, else on the emulated one (placement and
    traffic, not kernels)."""
    clip = make_tiny_clip(tmp_path / "clip")
    cpu = create_encoders({"backend": "hf_clip", "model": str(clip), "device": "cpu"})
    on_cpu = _keyframe_counts(cpu, "cpu", grid="torch")
    with cuda_or_emulated():
        gpu = create_encoders({"backend": "hf_clip", "model": str(clip), "device": "cuda"})
        on_gpu = _keyframe_counts(gpu, "cuda", grid="torch")
    for g, c in zip(on_gpu[1:], on_cpu[1:], strict=True):
        assert g.d2h <= 2, g.where  # the feature copy, the touched blocks' keys
        # Lifting: pixels, depth, pose, robot position; the TSDF: depth (uint16), colour,
        # its two transforms in one, the occupancy grid's corner.
        assert g.h2d <= 8, g.where
        assert g.scalar_reads + g.data_dependent == c.scalar_reads + c.data_dependent
