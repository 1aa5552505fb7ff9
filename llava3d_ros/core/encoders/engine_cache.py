"""TensorRT engines built once per (GPU, TensorRT version, model, input shape, precision).

An engine is only valid for the GPU model and TensorRT release that built it, and for the
graph, shape range and precision it was built from. Building one takes minutes, so every
encoder that uses TensorRT (``dinov2_onnx`` through onnxruntime's TensorRT provider,
``dinov2_torch`` through torch-tensorrt) keeps its engines under
``<cache>/trt/<key digest>/`` with the key written beside them in ``key.json``:

- the key matches an existing directory that holds an engine: it is loaded, never rebuilt
  (Isaac ROS rebuilds on every launch by default);
- any part of the key changes (another GPU, a TensorRT upgrade, new weights, another input
  size or batch range, fp16 <-> fp32): another directory, so a fresh build;
- while building: a log line saying what is built, where and why it takes long, then one
  every ``heartbeat_s`` seconds until it is done, then the time it took.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .base import EncoderError

logger = logging.getLogger(__name__)

KEY_FILE = "key.json"
# Sonames of TensorRT's runtime library, newest first (10.x, 8.x).
_NVINFER_LIBS = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; see the module docstring."""

    builder: str  # "onnxruntime-tensorrt" or "torch-tensorrt"
    gpu: str  # e.g. "NVIDIA H100 80GB HBM3"
    tensorrt: str  # TensorRT version, e.g. "10.3.0"
    model_sha256: str  # of the exact graph or weights compiled
    input_shape: str  # "BminxCxHxW-BmaxxCxHxW", e.g. "1x3x224x224-16x3x224x224"
    precision: str  # "fp16" or "fp32"

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def gpu_name(device_id: int = 0) -> str:
    """The CUDA device's product name, as torch reports it."""
    import torch

    if not torch.cuda.is_available():
        raise EncoderError("TensorRT needs a CUDA device, and torch sees none")
    return str(torch.cuda.get_device_name(device_id))


def tensorrt_version() -> str | None:
    """The installed TensorRT's version: the Python package's, else the runtime library's
    (onnxruntime-gpu loads libnvinfer without the Python package); None when neither."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        pass
    for lib in _NVINFER_LIBS:
        try:
            nvinfer = ctypes.CDLL(lib)
        except OSError:
            continue
        code = int(nvinfer.getInferLibVersion())  # e.g. 100300 for 10.3.0
        major, rest = divmod(code, 10000) if code >= 10000 else divmod(code, 1000)
        minor, patch = divmod(rest, 100)
        return f"{major}.{minor}.{patch}"
    return None


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shape_range(
    min_batch: int, max_batch: int, channels: int, height: int, width: int
) -> tuple[str, str]:
    """(min, max) shapes as TensorRT profiles spell them."""
    return (
        f"{min_batch}x{channels}x{height}x{width}",
        f"{max_batch}x{channels}x{height}x{width}",
    )


class EngineCache:
    """Directories of engines under ``root``, one per :class:`EngineKey`."""

    def __init__(self, root: str | Path, heartbeat_s: float = 30.0) -> None:
        self.root = Path(root).expanduser()
        self.heartbeat_s = float(heartbeat_s)

    def directory(self, key: EngineKey) -> Path:
        """The key's directory, created with its ``key.json`` (a key from another version
        of this code under the same digest is refused rather than trusted)."""
        path = self.root / "trt" / key.digest()
        try:
            path.mkdir(parents=True, exist_ok=True)
            written = path / KEY_FILE
            if written.is_file():
                try:
                    stored = json.loads(written.read_text())
                except (OSError, ValueError):
                    stored = None
                if stored != asdict(key):
                    raise EncoderError(
                        f"TensorRT engine cache {path}: {KEY_FILE} does not match the key "
                        f"{asdict(key)}; remove the directory"
                    )
            else:
                tmp = path / f"{KEY_FILE}.tmp{os.getpid()}"
                tmp.write_text(json.dumps(asdict(key), indent=2, sort_keys=True))
                os.replace(tmp, written)
        except OSError as exc:
            raise EncoderError(f"TensorRT engine cache {path} is not writable: {exc}") from exc
        return path

    @staticmethod
    def engines(directory: Path) -> list[Path]:
        """Engine files in a key's directory (onnxruntime writes ``*.engine``, the
        torch-tensorrt path ``*.ep``)."""
        return sorted(
            p for p in directory.iterdir() if p.suffix in (".engine", ".ep") and p.is_file()
        )

    def is_built(self, key: EngineKey) -> bool:
        directory = self.root / "trt" / key.digest()
        return directory.is_dir() and bool(self.engines(directory))

    @contextmanager
    def building(self, key: EngineKey, what: str) -> Iterator[Path]:
        """Around an engine build: the start line, a heartbeat until done, the end line.
        Yields the key's directory. Nothing is logged when the engine is already there."""
        directory = self.directory(key)
        if self.engines(directory):
            logger.info("%s: TensorRT engine cached in %s, not rebuilt", what, directory)
            yield directory
            return
        logger.warning(
            "%s: building a TensorRT engine for %s, TensorRT %s, %s, input %s: this takes "
            "minutes, once; it is cached in %s",
            what,
            key.gpu,
            key.tensorrt,
            key.precision,
            key.input_shape,
            directory,
        )
        done = threading.Event()
        start = time.monotonic()

        def heartbeat() -> None:
            while not done.wait(self.heartbeat_s):
                logger.warning(
                    "%s: still building the TensorRT engine (%.0f s)",
                    what,
                    time.monotonic() - start,
                )

        beat = threading.Thread(target=heartbeat, name="trt-build-heartbeat", daemon=True)
        beat.start()
        try:
            yield directory
        finally:
            done.set()
            beat.join()
        logger.warning("%s: TensorRT engine built in %.0f s", what, time.monotonic() - start)

    def get_or_build(self, key: EngineKey, what: str, build: Callable[[Path], None]) -> Path:
        """The key's directory holding an engine; ``build(directory)`` runs only when it
        holds none, and must leave one there."""
        with self.building(key, what) as directory:
            if not self.engines(directory):
                build(directory)
                if not self.engines(directory):
                    raise EncoderError(f"{what}: the TensorRT build left no engine in {directory}")
        return directory
