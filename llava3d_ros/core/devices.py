"""One device setting for every stage: encoder, memory (lifting, fusion, grounding,
pooling), geometry (the TSDF and instance layer), the language models.

The top-level ``device`` (auto, cpu, cuda) is what every stage left at ``auto`` runs on;
a stage given its own device keeps it. ``auto`` at the top means CUDA when torch sees a
GPU. The geometry names devices open3d's way (``CUDA:0``); where open3d is a CPU-only
build (its default wheel, every Jetson) the TSDF runs on the GPU through its torch grid
(``core/objects/tsdf_torch.py``) and :func:`plan_devices` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEVICE_CHOICES = ("auto", "cpu", "cuda")

# What the libraries say when memory runs out: torch raises OutOfMemoryError, onnxruntime,
# open3d and cuBLAS a RuntimeError with one of these in the message.
_OUT_OF_MEMORY = re.compile(
    r"out of memory|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation|"
    r"Failed to allocate memory|CUBLAS_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)
OUT_OF_MEMORY_HINT = (
    "lower encoder.max_batch_size, store voxel features as float16 "
    "(memory.feature_dtype), shorten the question, or give the language model its own device"
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a device (or the host)
    running out of memory."""
    import torch

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(current, RuntimeError) and _OUT_OF_MEMORY.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def release_cached_memory() -> None:
    """After running out of memory: hand torch's cached, unused GPU blocks back, so the
    next request (or the other model) can have them."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def open3d_has_cuda() -> bool:
    try:
        import open3d.core as o3c

        return bool(o3c.cuda.is_available())
    except (ImportError, AttributeError):
        return False


def resolve_compute_device(name: str, has_cuda: bool | None = None) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an
    error (a robot configured for its GPU must not silently run 20x slower)."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {name!r}")
    has = cuda_available() if has_cuda is None else has_cuda
    if name == "auto":
        return "cuda" if has else "cpu"
    if name == "cuda" and not has:
        raise ValueError("device is cuda but torch sees no CUDA device (use auto or cpu)")
    return name


@dataclass(frozen=True)
class DevicePlan:
    """Where each stage runs (torch names, open3d's for the geometry) and why."""

    compute: str
    encoder: str
    memory: str
    geometry: str
    lmm: str
    view: str
    notes: tuple[str, ...] = ()
    geometry_backend: str = "auto"  # the TSDF grid: open3d or torch (auto: decided by it)

    def summary(self) -> str:
        grid = "" if self.geometry_backend == "auto" else f" ({self.geometry_backend})"
        text = (
            f"device {self.compute}: encoder {self.encoder}, memory {self.memory}, geometry "
            f"{self.geometry}{grid}, lmm {self.lmm}, view {self.view}"
        )
        return text + "".join(f"; {n}" for n in self.notes)


def plan_devices(
    compute: str,
    *,
    encoder: str = "auto",
    memory: str = "auto",
    geometry: str = "auto",
    lmm: str = "auto",
    view: str = "auto",
    geometry_backend: str = "auto",
    has_cuda: bool | None = None,
    open3d_cuda: bool | None = None,
) -> DevicePlan:
    """Each stage's device: its own setting, or the resolved top-level ``compute`` device
    for a stage left at ``auto``. The geometry follows a CUDA top level onto the GPU with
    open3d where its build has CUDA, else with the torch grid (unless ``geometry_backend``
    insists on open3d: then it stays on the CPU, and a note says why)."""
    top = resolve_compute_device(compute, has_cuda)
    notes: list[str] = []

    def torch_stage(setting: str) -> str:
        return top if setting == "auto" else setting

    grid = geometry_backend
    if geometry != "auto":
        geo = geometry
    elif top == "cuda":
        has_o3d = open3d_has_cuda() if open3d_cuda is None else open3d_cuda
        if has_o3d:
            geo = "CUDA:0"
            grid = "open3d" if grid == "auto" else grid
        elif grid == "open3d":
            geo = "CPU:0"
            notes.append(
                "geometry on CPU:0: geometry.backend is open3d and this open3d build has no "
                "CUDA (the gpu extra's open3d, or geometry.backend auto/torch)"
            )
        else:
            geo, grid = "CUDA:0", "torch"
            notes.append("geometry on CUDA:0 through the torch TSDF: this open3d has no CUDA")
    else:
        geo = "CPU:0"
    return DevicePlan(
        compute=top,
        encoder=torch_stage(encoder),
        memory=torch_stage(memory),
        geometry=geo,
        lmm=torch_stage(lmm),
        view=torch_stage(view),
        notes=tuple(notes),
        geometry_backend=grid,
    )
