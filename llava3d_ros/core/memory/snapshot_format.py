"""The memory's snapshot file: safetensors with a JSON header in the metadata (no pickle),
a format name and version, named sections (the object layer saves its own), and a sha256
over the header and every tensor. Reading checks all of it before anything is used."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SNAPSHOT_FORMAT = "llava3d_ros.voxel_patch_memory"
SNAPSHOT_VERSION = 1
META_KEY = "llava3d_ros"


class SnapshotError(RuntimeError):
    """A memory snapshot could not be written or read (missing, corrupt, wrong format...)."""


#: Snapshots larger than this are refused before reading (a hostile or wrong file).
MAX_SNAPSHOT_BYTES = 8 << 30


@dataclass(frozen=True)
class MemoryLimits:
    """The configuration a loaded snapshot must fit (see :func:`checked_limits`)."""

    voxel_size: float
    feature_dims: Mapping[str, int]
    max_voxels: int
    max_radius: float | None = None
    max_age_s: float | None = None
    feature_dtype: torch.dtype = torch.float32


def write_snapshot(
    path: str | os.PathLike[str],
    header: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    sections: Mapping[str, tuple[dict[str, Any], Mapping[str, torch.Tensor]]] | None = None,
) -> int:
    """Write ``header`` + ``tensors`` (+ named ``sections``, stored as ``<name>/<tensor>``
    under the same checksum) to ``path``; returns the file's size. The file is written next
    to the target and renamed into place, so a crash never leaves a half-written snapshot
    under ``path``. Raises SnapshotError when it cannot be written."""
    path = Path(path)
    header = {**header, "sections": {}}
    tensors = dict(tensors)
    for name, (sec_header, sec_tensors) in (sections or {}).items():
        if "/" in name or not name:
            raise ValueError(f"bad snapshot section name {name!r}")
        header["sections"][name] = sec_header
        for key, t in sec_tensors.items():
            tensors[f"{name}/{key}"] = t.detach().cpu().contiguous()
    header["checksum"] = "sha256:" + checksum(header, tensors)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={META_KEY: json.dumps(header)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise SnapshotError(f"cannot write snapshot {path}: {exc}") from exc
    return path.stat().st_size


def checked_limits(
    header: Mapping[str, Any],
    tensors: dict[str, torch.Tensor],
    limits: MemoryLimits | None,
) -> tuple[int, float | None, float | None, torch.dtype, dict[str, torch.Tensor]]:
    """(max_voxels, max_radius, max_age_s, feature dtype, tensors) a memory loaded from
    this snapshot lives within. With ``limits`` (the node's configuration) the snapshot
    must have the configured voxel size and feature widths and fit in its ``max_voxels``;
    the configured bounds are kept, never the file's (a crafted header asking for 5e7
    voxels allocates nothing), and features are converted to the configured dtype.
    Without, the file's own bounds. Raises ValueError saying what does not fit."""
    dtype = getattr(torch, str(header["feature_dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"bad feature_dtype {header['feature_dtype']!r}")
    bounds = header["bounds"]
    dims = {str(k): int(d) for k, d in header["feature_dims"]}
    voxel_size = float(header["voxel_size"])
    m = int(header["num_voxels"])
    if limits is None:
        max_voxels = int(bounds["max_voxels"])
        if m > max_voxels:
            raise ValueError(f"{m} voxels exceed max_voxels {max_voxels}")
        return max_voxels, bounds["max_radius"], bounds["max_age_s"], dtype, tensors
    if abs(voxel_size - limits.voxel_size) > 1e-9:
        raise ValueError(
            f"it was made with voxel_size {voxel_size} m; this node uses "
            f"{limits.voxel_size} m (set memory.voxel_size to load it)"
        )
    if dims != dict(limits.feature_dims):
        raise ValueError(
            f"its features {dims} do not match this encoder's {dict(limits.feature_dims)}"
        )
    if m > limits.max_voxels:
        raise ValueError(
            f"it holds {m} voxels, more than this node's memory.max_voxels {limits.max_voxels}"
        )
    if tensors["features"].dtype != limits.feature_dtype:  # converted, not adopted
        tensors = {**tensors, "features": tensors["features"].to(limits.feature_dtype)}
    return (
        limits.max_voxels,
        limits.max_radius,
        limits.max_age_s,
        limits.feature_dtype,
        tensors,
    )


def read_snapshot(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, tensors) of a snapshot file, checked: a regular file of sane size, the
    format and version, the checksum over header and every tensor. Raises SnapshotError
    with what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"snapshot not found: {path}")
    size = path.stat().st_size
    if size > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"snapshot {path} is {size} bytes, over the {MAX_SNAPSHOT_BYTES} limit")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise SnapshotError(
            f"snapshot {path} is unreadable (truncated or corrupt file?): {exc}"
        ) from exc
    if META_KEY not in meta:
        raise SnapshotError(
            f"{path} is not a llava3d_ros memory snapshot: no '{META_KEY}' header "
            f"(expected format {SNAPSHOT_FORMAT!r})"
        )
    try:
        header = json.loads(meta[META_KEY])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except ValueError as exc:
        raise SnapshotError(f"snapshot {path}: header is not valid JSON ({exc})") from exc
    fmt = header.get("format")
    if fmt != SNAPSHOT_FORMAT:
        raise SnapshotError(f"snapshot {path}: wrong format {fmt!r}, expected {SNAPSHOT_FORMAT!r}")
    version = header.get("version")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"snapshot {path}: unsupported version {version!r}, expected {SNAPSHOT_VERSION}"
        )
    stored = header.pop("checksum", None)
    actual = "sha256:" + checksum(header, tensors)
    if stored != actual:
        raise SnapshotError(
            f"snapshot {path}: checksum mismatch (stored {stored}, computed {actual}); "
            "the file is corrupt"
        )
    return header, tensors


def snapshot_section(
    header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """A section saved with ``save(..., sections=...)``, or None when absent."""
    sections = header.get("sections") or {}
    if not isinstance(sections, dict) or name not in sections:
        return None
    prefix = f"{name}/"
    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    sec = sections[name]
    if not isinstance(sec, dict):
        raise SnapshotError(f"snapshot section {name!r} has no header")
    return sec, own


def checksum(header: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the canonical JSON header (without the checksum) and every tensor's
    name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # a view, no copy
    return h.hexdigest()
