"""The snapshot directory rule: names only, nothing outside the directory, nothing
replaced that is not a snapshot; and memory snapshots that must fit the configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from llava3d_ros.core.memory import MemoryLimits, SnapshotError, VoxelPatchMemory, read_snapshot
from llava3d_ros.core.snapshots import SnapshotDirectory, SnapshotNameError


def _memory(voxel: float = 0.1, n: int = 5, max_voxels: int = 100) -> VoxelPatchMemory:
    mem = VoxelPatchMemory({"vision": 4}, voxel_size=voxel, max_voxels=max_voxels)
    pts = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    mem.integrate(pts, {"vision": torch.ones(n, 4)}, stamp=1.0)
    return mem


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "a/b", "a\\b", ".hidden", "x" * 65, "bad name", "nul\x00", "é"],
)
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    d = SnapshotDirectory(tmp_path / "snaps")
    with pytest.raises(SnapshotNameError):
        d.path_for(name)


def test_names_map_into_the_directory(tmp_path: Path) -> None:
    d = SnapshotDirectory(tmp_path / "snaps")
    assert d.path_for("") == tmp_path / "snaps" / "memory.safetensors"
    assert d.path_for("kitchen-1.v2") == tmp_path / "snaps" / "kitchen-1.v2.safetensors"
    assert d.path_for("a.safetensors") == tmp_path / "snaps" / "a.safetensors"
    assert not (tmp_path / "snaps").exists()  # nothing is created by asking


def test_writing_never_replaces_what_is_not_a_snapshot(tmp_path: Path) -> None:
    d = SnapshotDirectory(tmp_path / "snaps")
    target = d.for_writing("m")  # creates the directory only
    assert d.root.is_dir() and not target.exists()
    _memory().save(target)
    assert d.for_writing("m") == target  # an existing snapshot may be replaced
    (d.root / "notes.safetensors").write_text("my notes")
    with pytest.raises(SnapshotNameError, match="not a llava3d_ros snapshot"):
        d.for_writing("notes")
    (d.root / "dir.safetensors").mkdir()
    with pytest.raises(SnapshotNameError, match="not a regular"):
        d.for_writing("dir")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    os.symlink(outside, d.root / "link.safetensors")
    with pytest.raises(SnapshotNameError):
        d.for_writing("link")
    with pytest.raises(SnapshotNameError, match="no snapshot 'link'"):
        d.for_reading("link")  # symlinks are not followed, not even into the directory
    assert outside.read_text() == "keep"
    with pytest.raises(SnapshotNameError, match="no snapshot 'missing'"):
        d.for_reading("missing")
    assert d.names() == ["m", "notes"]


def test_loading_fits_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    _memory(voxel=0.1, n=5).save(path)
    header, tensors = read_snapshot(path)
    ok = MemoryLimits(voxel_size=0.1, feature_dims={"vision": 4}, max_voxels=50)
    mem = VoxelPatchMemory.from_snapshot(header, tensors, limits=ok)
    assert len(mem) == 5 and mem.max_voxels == 50  # the configured bound, not the file's
    for limits, match in (
        (MemoryLimits(0.05, {"vision": 4}, 50), "voxel_size"),
        (MemoryLimits(0.1, {"vision": 8}, 50), "features"),
        (MemoryLimits(0.1, {"vision": 4}, 3), "max_voxels"),
    ):
        with pytest.raises(SnapshotError, match=match):
            VoxelPatchMemory.from_snapshot(header, tensors, limits=limits)
    # A header asking for an enormous memory allocates nothing: the limits decide.
    header["bounds"]["max_voxels"] = 50_000_000
    mem = VoxelPatchMemory.from_snapshot(header, tensors, limits=ok)
    assert mem.max_voxels == 50
    half = MemoryLimits(0.1, {"vision": 4}, 50, feature_dtype=torch.float16)
    assert VoxelPatchMemory.from_snapshot(header, tensors, limits=half).feature_dtype == (
        torch.float16
    )


def test_sections_share_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    _memory().save(path, sections={"extra": ({"k": 1}, {"t": torch.arange(4)})})
    header, tensors = read_snapshot(path)
    assert header["sections"]["extra"] == {"k": 1} and tensors["extra/t"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="section name"):
        _memory().save(path, sections={"a/b": ({}, {})})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="checksum"):
        read_snapshot(path)
