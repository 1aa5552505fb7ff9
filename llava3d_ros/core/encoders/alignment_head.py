"""Alignment head: maps image patch features into a text encoder's embedding space.

The offline default pairs DINOv2 patch tokens (no text tower) with MiniLM sentence
embeddings; the two spaces are unrelated, so grounding needs a small learned map. This
module defines that map and its file format; the project trains it elsewhere.

File format (one ``.safetensors`` file, no pickle):

- metadata key ``"llava3d_ros"``: a JSON object
  ``{"format": "llava3d_ros.alignment_head", "version": 1, "in_dim": 384, "out_dim": 384,
  "hidden": 0, "layernorm": true, ...}``; ``hidden == 0`` means a single linear layer,
  otherwise Linear(in, hidden) -> GELU -> Linear(hidden, out). Optional string fields
  ``image_encoder`` / ``text_encoder`` name the spaces it was trained between (checked by
  backends when present); any other keys are kept in :attr:`AlignmentHead.metadata`.
- tensors (float, any precision; loaded as float32): ``norm.weight``/``norm.bias`` when
  ``layernorm``; ``proj.weight`` (out, in)/``proj.bias`` (out) when linear; otherwise
  ``fc1.weight`` (hidden, in), ``fc1.bias``, ``fc2.weight`` (out, hidden), ``fc2.bias``.

Outputs are L2-normalised: they are compared to unit-length text embeddings by cosine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import EncoderError

FORMAT_NAME = "llava3d_ros.alignment_head"
FORMAT_VERSION = 1
METADATA_KEY = "llava3d_ros"


class AlignmentHead(nn.Module):
    """Per-patch map ``(..., in_dim) -> (..., out_dim)``, unit-length output."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 0,
        layernorm: bool = True,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0 or hidden < 0:
            raise ValueError(f"bad head dims in={in_dim} out={out_dim} hidden={hidden}")
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim)
        self.hidden = int(hidden)
        self.layernorm = bool(layernorm)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.norm: nn.Module = nn.LayerNorm(in_dim) if layernorm else nn.Identity()
        if hidden == 0:
            self.proj = nn.Linear(in_dim, out_dim)
        else:
            self.fc1 = nn.Linear(in_dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"alignment head expects {self.in_dim}-d features, got {x.shape[-1]}")
        h = self.norm(x)
        h = self.proj(h) if self.hidden == 0 else self.fc2(self.act(self.fc1(h)))
        return nn.functional.normalize(h, dim=-1)

    def header(self) -> dict[str, Any]:
        head = {k: v for k, v in self.metadata.items() if k not in _RESERVED}
        head.update(
            format=FORMAT_NAME,
            version=FORMAT_VERSION,
            in_dim=self.in_dim,
            out_dim=self.out_dim,
            hidden=self.hidden,
            layernorm=self.layernorm,
        )
        return head

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the head (atomically: a crash never leaves a half-written file)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in self.state_dict().items()
        }
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(self.header())})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        expected_in_dim: int | None = None,
        expected_out_dim: int | None = None,
    ) -> AlignmentHead:
        """Read a head file; every way it can be wrong raises :class:`EncoderError`."""
        return load_alignment_head(path, expected_in_dim, expected_out_dim)


_RESERVED = {"format", "version", "in_dim", "out_dim", "hidden", "layernorm"}


def _expected_shapes(in_dim: int, out_dim: int, hidden: int, layernorm: bool) -> dict:
    shapes: dict[str, tuple[int, ...]] = {}
    if layernorm:
        shapes["norm.weight"] = (in_dim,)
        shapes["norm.bias"] = (in_dim,)
    if hidden == 0:
        shapes["proj.weight"] = (out_dim, in_dim)
        shapes["proj.bias"] = (out_dim,)
    else:
        shapes["fc1.weight"] = (hidden, in_dim)
        shapes["fc1.bias"] = (hidden,)
        shapes["fc2.weight"] = (out_dim, hidden)
        shapes["fc2.bias"] = (out_dim,)
    return shapes


def _read_header(raw: Mapping[str, str] | None, where: str) -> dict[str, Any]:
    if not raw or METADATA_KEY not in raw:
        raise EncoderError(f"{where}: no '{METADATA_KEY}' metadata; not an alignment head file")
    try:
        header = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise EncoderError(f"{where}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise EncoderError(f"{where}: metadata format is not {FORMAT_NAME!r}")
    version = header.get("version")
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise EncoderError(
            f"{where}: format version {version!r} not supported (this build reads <= "
            f"{FORMAT_VERSION}); upgrade llava3d_ros"
        )
    for key in ("in_dim", "out_dim", "hidden"):
        value = header.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise EncoderError(f"{where}: metadata {key!r} must be a non-negative integer")
    if header["in_dim"] == 0 or header["out_dim"] == 0:
        raise EncoderError(f"{where}: in_dim/out_dim must be positive")
    if not isinstance(header.get("layernorm", False), bool):
        raise EncoderError(f"{where}: metadata 'layernorm' must be true/false")
    return header


def load_alignment_head(
    path: str | os.PathLike[str],
    expected_in_dim: int | None = None,
    expected_out_dim: int | None = None,
) -> AlignmentHead:
    from safetensors import safe_open

    path = Path(path).expanduser()
    where = f"alignment head {str(path)!r}"
    if not path.is_file():
        raise EncoderError(f"{where}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = _read_header(f.metadata(), where)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except EncoderError:
        raise
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise EncoderError(f"{where}: not a readable safetensors file ({exc})") from exc

    in_dim, out_dim, hidden = header["in_dim"], header["out_dim"], header["hidden"]
    layernorm = bool(header.get("layernorm", False))
    want = _expected_shapes(in_dim, out_dim, hidden, layernorm)
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise EncoderError(
            f"{where}: tensors do not match header (missing {missing}, unexpected {extra})"
        )
    for name, shape in want.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise EncoderError(f"{where}: tensor {name!r} has shape {got}, header says {shape}")
        if not tensors[name].is_floating_point():
            raise EncoderError(f"{where}: tensor {name!r} is {tensors[name].dtype}, not float")
        if not bool(torch.isfinite(tensors[name]).all()):
            raise EncoderError(f"{where}: tensor {name!r} contains NaN/inf")
    if expected_in_dim is not None and in_dim != expected_in_dim:
        raise EncoderError(
            f"{where}: takes {in_dim}-d features, the image encoder gives {expected_in_dim}-d"
        )
    if expected_out_dim is not None and out_dim != expected_out_dim:
        raise EncoderError(
            f"{where}: outputs {out_dim}-d, the text encoder gives {expected_out_dim}-d"
        )

    extra_meta = {k: v for k, v in header.items() if k not in _RESERVED}
    head = AlignmentHead(in_dim, out_dim, hidden, layernorm, metadata=extra_meta)
    head.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    head.eval()
    return head
