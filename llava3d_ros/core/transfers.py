"""Count host <-> device traffic and synchronisation points of torch code.

:class:`TransferMeter` is a torch dispatch mode: every operator call inside its ``with``
block passes through it, so it sees

- copies between devices (``tensor.to``, ``.cpu()``, ``.cuda()``, ``copy_``): counted
  and sized as host-to-device or device-to-host;
- scalar reads (``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``: the operator
  ``_local_scalar_dense``): on a GPU each one waits for the stream and copies back;
- operators whose output size depends on the data (``nonzero``, ``unique``,
  ``masked_select``, indexing with a boolean mask...): on a GPU they synchronise to learn
  that size;
- every operator that does device work (not a view or a bare allocation): in eager mode
  on a GPU each is at least one kernel launch, a few microseconds of host time whatever
  its size, so small-tensor code such as hash probing is bounded by these, not by the GPU.

On the CPU nothing crosses a device, but the scalar reads and data-dependent operators are
the same calls a GPU run would make, so a CPU count is what the GPU would pay in syncs.
What it cannot see: numpy work and ``Tensor.numpy()`` (not operators), and copies made
inside other libraries (open3d, onnxruntime).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_COPIES = {"_to_copy", "copy_", "_copy_from", "_copy_from_and_resize"}
_SCALAR = "_local_scalar_dense"
_DATA_DEPENDENT = {
    "nonzero",
    "nonzero_static",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "masked_select",
    "repeat_interleave",
}

# Operators that only allocate or describe memory: no kernel runs.
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach"}

# x[mask] and x[mask] = v: a nonzero inside, which torch does not dispatch again.
_MASK_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _has_mask(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


def _is_host(device: torch.device) -> bool:
    return device.type == "cpu"


@dataclass
class TransferCounts:
    h2d: int = 0
    d2h: int = 0
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    scalar_reads: int = 0
    data_dependent: int = 0
    launches: int = 0  # operators doing device work (see the module docstring)
    where: Counter[str] = field(default_factory=Counter)  # op name -> calls (syncs, copies)

    @property
    def syncs(self) -> int:
        """Points where a GPU run waits for the device: scalar reads, data-dependent
        sizes and device-to-host copies."""
        return self.scalar_reads + self.data_dependent + self.d2h

    def summary(self) -> str:
        return (
            f"{self.h2d} host->device ({self.h2d_bytes / 1e6:.2f} MB), {self.d2h} "
            f"device->host ({self.d2h_bytes / 1e6:.2f} MB), {self.scalar_reads} scalar reads, "
            f"{self.data_dependent} data-dependent sizes, {self.launches} operator launches"
        )


class TransferMeter(TorchDispatchMode):
    """``with TransferMeter() as meter: ...`` then ``meter.counts``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = TransferCounts()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        c = self.counts
        if not func.is_view and name not in _NO_KERNEL:
            c.launches += 1
        if name in _COPIES:
            if name == "_to_copy":
                src, dst = args[0], out
            elif name == "copy_":  # dst.copy_(src)
                dst, src = args[0], args[1]
            else:  # src._copy_from(dst)
                src, dst = args[0], args[1]
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
                a, b = src.device, dst.device
                if _is_host(a) != _is_host(b):
                    size = src.numel() * src.element_size()
                    if _is_host(a):
                        c.h2d += 1
                        c.h2d_bytes += size
                        c.where[f"h2d {name}"] += 1
                    else:
                        c.d2h += 1
                        c.d2h_bytes += size
                        c.where[f"d2h {name}"] += 1
        elif name == _SCALAR:
            c.scalar_reads += 1
            c.where[name] += 1
        elif name in _DATA_DEPENDENT or (name in _MASK_INDEXING and _has_mask(args)):
            c.data_dependent += 1
            c.where[name] += 1
        return out
