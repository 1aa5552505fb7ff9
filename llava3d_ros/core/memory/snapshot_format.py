"""The memory's snapshot file: safetensors with a JSON header in the metadata (no pickle),
a format name and version, named sections (the object layer saves its own), and a sha256
over the header and every tensor. Reading checks all of it before anything is used."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

SNAPSHOT_FORMAT = "llava3d_ros.voxel_patch_memory"
SNAPSHOT_VERSION = 1
META_KEY = "llava3d_ros"


class SnapshotError(RuntimeError):
    """A memory snapshot could not be written or read (missing, corrupt, wrong format...)."""


#: Snapshots larger than this are refused before reading (a hostile or wrong file).
MAX_SNAPSHOT_BYTES = 8 << 30


def read_snapshot(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, tensors) of a snapshot file, checked: a regular file of sane size, the
    format and version, the checksum over header and every tensor. Raises SnapshotError
    with what is wrong."""
    from safetensors import safe_open

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
