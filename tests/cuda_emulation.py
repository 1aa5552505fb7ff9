"""An emulated CUDA device: the product's GPU code paths run on every CI machine.

No GPU is lent to most sessions and none to CI, so without this the code behind
``device: cuda`` would first run on a robot. Inside ``with emulated_cuda():`` torch reports
one CUDA device. A tensor made on it (``device="cuda"``, ``.to("cuda")``, ``.cuda()``,
``module.to("cuda")``, and tensors torch's own operators make there) is an
:class:`EmulatedCudaTensor`: its ``.device`` is ``cuda:0``, and every operator on it runs the
CPU kernel on the CPU tensor it holds. What CUDA refuses, it refuses:

- an operator mixing device tensors with host tensors that are not 0-dim scalars
  ("Expected all tensors to be on the same device");
- ``.numpy()`` and ``np.asarray()`` of a device tensor;
- a host tensor indexed by device indices (a device tensor may take host indices);
- pinning a device tensor.

Copies between the host and the device go through ``copy_`` and scalar reads through
``_local_scalar_dense``, so :class:`llava3d_ros.core.transfers.TransferMeter` counts them as
on a GPU. ``torch.cuda``'s queries (``is_available``, ``get_device_name``, ``mem_get_info``,
``synchronize``, ...) answer as for one 16 GiB device.

What it cannot say: anything about CUDA kernels (numerics, fp16/bf16 support, speed),
streams and asynchronous copies (every copy completes at once), gradients across the
device boundary (copies are made without autograd), memory, CUDA graphs and
``torch.compile``, or libraries that reach device memory without torch (onnxruntime,
open3d, DLPack). It answers "does the code keep its tensors where it says, and cross the
device boundary only where it means to?".
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
_HOST = torch.device("cpu")
DEVICE_NAME = "Emulated CUDA (CPU kernels)"
_MEMORY = 16 * 2**30
_NO_CUDA = "not linked with support for cuda devices"


class EmulatedCudaTensor(torch.Tensor):
    """A tensor that says it is on ``cuda:0`` and computes on the CPU tensor it wraps."""

    host_copy: torch.Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> EmulatedCudaTensor:
        assert type(inner) is torch.Tensor and inner.device.type == "cpu", type(inner)
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            inner.shape,
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            layout=inner.layout,
            device=CUDA,
            requires_grad=inner.requires_grad,
        )
        out.host_copy = inner
        return out

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        return f"EmulatedCudaTensor({self.host_copy!r}, device='{CUDA}')"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("an emulated CUDA tensor cannot be pickled; copy it to the host first")

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = func.__name__.split(".")[0]
        inner_args = tree_map(_to_host, args)
        inner_kwargs = tree_map(_to_host, kwargs)
        if name in _COPIES:
            # Copies may cross devices; the destination keeps its own.
            func(*inner_args, **inner_kwargs)
            return args[0] if name == "copy_" else args[1]
        if name == "_pin_memory":
            raise RuntimeError("cannot pin a CUDA tensor: only dense CPU tensors can be pinned")
        # CUDA takes host tensors only as 0-dim scalars, and as the indices of indexing.
        checked = args[:1] + args[2:] if name in _INDEXING else args
        if _HOST_TENSOR in _devices(checked):
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two "
                f"devices, cuda:0 and cpu! (emulated CUDA, in {func}: {_describe(args)})"
            )
        # The result goes where the operator is told (_to_copy, *_like, new_*), else here.
        target = kwargs.get("device")
        if target is not None:
            inner_kwargs["device"] = _HOST
        out = func(*inner_args, **inner_kwargs)
        if _writes_first(func) and isinstance(args[0], EmulatedCudaTensor):
            return args[0]  # in place: the caller's tensor, not a new wrapper
        if "out" in kwargs:
            return kwargs["out"]
        if target is not None and not _is_cuda(target):
            return out
        if func.is_view and not args[0].is_inference():
            # A view of a normal tensor is a normal tensor, in inference mode too (the
            # wrapper would otherwise be made an inference tensor, and autograd refuses
            # to share the base's version counter with it).
            with torch.inference_mode(False):
                return _wrap(out)
        return _wrap(out)


_COPIES = {"copy_", "_copy_from", "_copy_from_and_resize"}
_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}
_HOST_TENSOR = "host"


def _devices(args: Any) -> set[str]:
    """Where the tensors among ``args`` are: "cuda", or "host" for a host tensor that is
    not a 0-dim scalar."""
    found: set[str] = set()
    for x in tree_flatten(args)[0]:
        if isinstance(x, EmulatedCudaTensor):
            found.add("cuda")
        elif isinstance(x, torch.Tensor) and x.dim() > 0:
            found.add(_HOST_TENSOR)
    return found


def _writes_first(func: Any) -> bool:
    """Whether the operator writes its first argument in place (``add_``, not ``__rshift__``)."""
    schema_args = func._schema.arguments
    alias = schema_args[0].alias_info if schema_args else None
    return alias is not None and alias.is_write


def _describe(args: Any) -> str:
    """The tensor arguments as device:shape, for the error message."""
    out: list[str] = []

    def note(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            out.append(f"{x.device.type}:{tuple(x.shape)}")
        return x

    tree_map(note, args)
    return ", ".join(out)


def _wrap(out: Any) -> Any:
    return tree_map(
        lambda t: EmulatedCudaTensor(t) if type(t) is torch.Tensor else t,
        out,
    )


def _is_cuda(device: Any) -> bool:
    if device is None or isinstance(device, (torch.dtype, torch.Tensor)):
        return False
    try:
        return torch.device(device).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def _to_host(t: Any) -> Any:
    return t.host_copy if isinstance(t, EmulatedCudaTensor) else t


_SCALAR_CASTS: dict[Any, Any] = {
    torch.Tensor.__float__: float,
    torch.Tensor.__int__: int,
    torch.Tensor.__bool__: bool,
    torch.Tensor.__index__: int,
    torch.Tensor.__complex__: complex,
    torch.Tensor.item: lambda x: x,
}


_DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}


class _Placement(TorchFunctionMode):
    """Routes torch calls that name the CUDA device to the CPU and wraps what they make."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return _move(func, args, kwargs)
        if func is torch.Tensor.copy_:
            # The Python binding takes a device guard for the destination, which a CPU
            # build of torch cannot make for CUDA; the operator itself needs none.
            return torch.ops.aten.copy_.default(*args, **kwargs)
        if func is torch.Tensor.__getitem__ or func is torch.Tensor.__setitem__:
            return _index(func, *args)
        if func in _SCALAR_CASTS and isinstance(args[0], EmulatedCudaTensor):
            # A scalar read (what .item() dispatches, so the transfer meter sees it); the
            # bindings would take a device guard.
            return _SCALAR_CASTS[func](torch.ops.aten._local_scalar_dense.default(args[0]))
        if func is torch.Tensor.pin_memory:
            return args[0] if not isinstance(args[0], EmulatedCudaTensor) else func(*args)
        if func is torch.Tensor.is_pinned:
            return False
        if func in (torch.Tensor.tolist, torch.Tensor.__format__):
            return func(_to_host(args[0]), *args[1:], **kwargs)  # a copy to the host
        if func is torch.Tensor.numpy and isinstance(args[0], EmulatedCudaTensor):
            raise TypeError(
                "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy "
                "the tensor to host memory first. (emulated CUDA)"
            )
        if func is torch.Tensor.__array__ and isinstance(args[0], EmulatedCudaTensor):
            raise TypeError("can't convert cuda:0 device type tensor to numpy (emulated CUDA)")
        if func is torch.Tensor.data_ptr and isinstance(args[0], EmulatedCudaTensor):
            return args[0].host_copy.data_ptr()
        if func in (torch.as_tensor, torch.asarray) and isinstance(args[0], torch.Tensor):
            # A tensor passed through: .to() semantics (no copy where nothing changes).
            options = {k: kwargs[k] for k in ("device", "dtype") if kwargs.get(k) is not None}
            return _move(torch.Tensor.to, (args[0],), options)
        if func in _DATA_FACTORIES and _is_cuda(kwargs.get("device")):
            # Host data made into a device tensor: made here, then copied up (the copy
            # the transfer meter must see).
            made = func(*tree_map(_to_host, args), **dict(kwargs, device=_HOST))
            return _move(torch.Tensor.cuda, (made,), {})
        if _is_cuda(kwargs.get("device")) and func is not torch._C._nn._parse_to:
            # A factory (zeros, arange, tensor, as_tensor, new_*, *_like): made on the host
            # and wrapped.
            kwargs = dict(kwargs, device=_HOST)
            return _wrap(func(*args, **kwargs))
        try:
            return func(*args, **kwargs)
        except RuntimeError as err:
            if _NO_CUDA not in str(err):
                raise
        # A hand-written binding (contiguous, ...) took a CUDA device guard before doing
        # anything, which a CPU build cannot make: run it on the host tensors.
        on_cuda = any(isinstance(a, EmulatedCudaTensor) for a in tree_flatten((args, kwargs))[0])
        out = func(*tree_map(_to_host, args), **tree_map(_to_host, kwargs))
        return _wrap(out) if on_cuda else out


class _Factories(TorchDispatchMode):
    """Operators that make a tensor on the CUDA device from no tensor (``empty``, ``full``,
    ... ), also where torch's own composite operators call them (attention, for one)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if _is_cuda(kwargs.get("device")) and not _devices(args) - {_HOST_TENSOR}:
            if func.__name__.split(".")[0] == "_to_copy":  # a host tensor sent up from C++
                return _move(torch.Tensor.cuda, (args[0],), {})
            return _wrap(func(*args, **dict(kwargs, device=_HOST)))
        return func(*args, **kwargs)


def _index(func: Any, t: torch.Tensor, index: Any, *value: Any) -> Any:
    """``t[index]`` / ``t[index] = value``. The bindings take a device guard (see copy_), so
    the indexing runs on the host tensors, after the check CUDA makes: a device tensor may
    be indexed by host indices, a host tensor not by device indices."""
    on_cuda = isinstance(t, EmulatedCudaTensor)
    parts = index if isinstance(index, tuple) else (index,)
    if not on_cuda and any(isinstance(i, EmulatedCudaTensor) for i in parts):
        raise RuntimeError(
            "indices should be either on cpu or on the same device as the indexed tensor "
            "(cpu) (emulated CUDA)"
        )
    inner_index = tree_map(_to_host, index)
    if func is torch.Tensor.__getitem__:
        out = _to_host(t)[inner_index]
        return EmulatedCudaTensor(out) if on_cuda else out
    v = value[0]
    if isinstance(v, torch.Tensor) and v.dim() > 0 and isinstance(v, EmulatedCudaTensor) != on_cuda:
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            "cuda:0 and cpu! (emulated CUDA, in index_put_)"
        )
    _to_host(t)[inner_index] = _to_host(v)
    return None


def _move(func: Any, args: Any, kwargs: Any) -> Any:
    """``Tensor.to`` / ``.cuda()`` / ``.cpu()``: a copy through ``copy_`` where the device
    changes (what the transfer meter counts), the same tensor where nothing changes."""
    t = args[0]
    dtype = None
    if func is torch.Tensor.cpu:
        device: Any = _HOST
    elif func is torch.Tensor.cuda:
        device = CUDA
    else:
        rest = list(args[1:])
        kwargs = {k: v for k, v in kwargs.items() if k != "copy"}
        if rest and isinstance(rest[0], torch.Tensor):  # .to(other)
            device, dtype = rest[0].device, rest[0].dtype
        else:
            device, dtype, _, _ = torch._C._nn._parse_to(*rest, **kwargs)
    on_cuda = isinstance(t, EmulatedCudaTensor)
    to_cuda = on_cuda if device is None else _is_cuda(device)
    inner = _to_host(t)
    converted = inner.to(dtype) if dtype is not None else inner
    if to_cuda == on_cuda:
        if converted is inner:
            return t
        return EmulatedCudaTensor(converted) if on_cuda else converted
    if to_cuda:  # host -> device
        out: torch.Tensor = EmulatedCudaTensor(torch.empty_like(converted))
        with torch.no_grad():  # autograd's copy node would ask for a CUDA device guard
            torch.ops.aten.copy_.default(out, converted)
        return out
    out = torch.empty_like(converted)  # device -> host
    source = t if converted is inner else EmulatedCudaTensor(converted)
    with torch.no_grad():
        torch.ops.aten.copy_.default(out, source)
    return out


class _EmulatedGenerator(torch.Generator):
    """``torch.Generator(device="cuda")``: a host generator (the emulated kernels are the
    CPU's, so that is the one they draw from)."""

    def __new__(cls, device: Any = None) -> _EmulatedGenerator:
        host = "cpu" if _is_cuda(device) else (device or "cpu")
        return torch._C.Generator.__new__(cls, host)  # type: ignore[call-arg]

    def __init__(self, device: Any = None) -> None:
        pass


@contextlib.contextmanager
def emulated_cuda() -> Iterator[None]:
    """torch with one emulated CUDA device for the duration of the block."""
    cuda = torch.cuda
    patches: list[Any] = [
        mock.patch.object(cuda, "is_available", lambda: True),
        mock.patch.object(cuda, "is_initialized", lambda: True),
        mock.patch.object(cuda, "_lazy_init", lambda: None),
        mock.patch.object(cuda, "device_count", lambda: 1),
        mock.patch.object(cuda, "current_device", lambda: 0),
        mock.patch.object(cuda, "synchronize", lambda device=None: None),
        mock.patch.object(cuda, "empty_cache", lambda: None),
        mock.patch.object(cuda, "get_device_name", lambda device=None: DEVICE_NAME),
        mock.patch.object(cuda, "mem_get_info", lambda device=None: (_MEMORY // 2, _MEMORY)),
        mock.patch.object(cuda, "is_bf16_supported", lambda *a, **k: True),
        mock.patch.object(cuda, "memory_allocated", lambda device=None: 0),
        mock.patch.object(cuda, "max_memory_allocated", lambda device=None: 0),
        mock.patch.object(cuda, "reset_peak_memory_stats", lambda device=None: None),
    ]
    # module.to("cuda") must make new Parameter objects (of the emulated class) rather than
    # swap the data under the old ones, which would keep the class that cannot compute.
    patches.append(
        mock.patch.object(
            torch.__future__, "get_overwrite_module_params_on_conversion", lambda: True
        )
    )
    patches.append(mock.patch.object(torch, "Generator", _EmulatedGenerator))
    # torch's modes are per thread, a CUDA device is per process: threads started in the
    # block (the object worker, an executor's) see the device too.
    thread_run = threading.Thread.run

    def run_on_the_device(thread: threading.Thread) -> None:
        with _Placement(), _Factories():
            thread_run(thread)

    patches.append(mock.patch.object(threading.Thread, "run", run_on_the_device))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        stack.enter_context(_Placement())
        stack.enter_context(_Factories())
        yield


@contextlib.contextmanager
def cuda_or_emulated() -> Iterator[str]:
    """The real CUDA device where there is one ("cuda"), else the emulated one
    ("emulated")."""
    if torch.cuda.is_available():
        yield "cuda"
        return
    with emulated_cuda():
        yield "emulated"
