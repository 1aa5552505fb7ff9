"""One device setting: every stage left at auto follows the top-level device; explicit
stage devices stay; a GPU asked for and absent fails loudly; open3d without CUDA keeps the
geometry on the CPU and says so. GPU presence is injected, so this runs on any machine."""

from __future__ import annotations

import pytest

from llava3d_ros.core.devices import plan_devices, resolve_compute_device
from llava3d_ros.core.pipeline import PipelineConfig
from llava3d_ros.ros.params import (
    NODE_PARAMS,
    apply_device_plan,
    encoder_config_from_params,
    encoder_option_defaults,
    node_settings_from_params,
    pipeline_config_from_params,
)


def test_auto_follows_the_gpu_and_cuda_without_one_is_an_error() -> None:
    assert resolve_compute_device("auto", has_cuda=True) == "cuda"
    assert resolve_compute_device("auto", has_cuda=False) == "cpu"
    assert resolve_compute_device("cpu", has_cuda=True) == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_compute_device("cuda", has_cuda=False)
    with pytest.raises(ValueError, match="device must be"):
        resolve_compute_device("tpu", has_cuda=True)


def test_every_auto_stage_goes_to_the_gpu_and_explicit_ones_stay() -> None:
    plan = plan_devices("auto", has_cuda=True, open3d_cuda=True)
    assert (plan.encoder, plan.memory, plan.geometry, plan.lmm, plan.view) == (
        "cuda",
        "cuda",
        "CUDA:0",
        "cuda",
        "cuda",
    )
    assert not plan.notes
    mixed = plan_devices("cuda", memory="cpu", geometry="CPU:0", has_cuda=True, open3d_cuda=True)
    assert (mixed.encoder, mixed.memory, mixed.geometry) == ("cuda", "cpu", "CPU:0")
    assert plan.geometry_backend == "open3d"
    # A CPU-only open3d (its default wheel, a Jetson): the TSDF goes to the GPU on the
    # torch grid, and the plan says why; insisting on open3d keeps it on the CPU.
    cpu_o3d = plan_devices("cuda", has_cuda=True, open3d_cuda=False)
    assert (cpu_o3d.geometry, cpu_o3d.geometry_backend) == ("CUDA:0", "torch")
    assert "geometry CUDA:0 (torch)" in cpu_o3d.summary() and "open3d" in cpu_o3d.summary()
    forced = plan_devices("cuda", geometry_backend="open3d", has_cuda=True, open3d_cuda=False)
    assert forced.geometry == "CPU:0" and "geometry.backend is open3d" in forced.summary()
    torch_grid = plan_devices("cuda", geometry_backend="torch", has_cuda=True, open3d_cuda=True)
    assert (torch_grid.geometry, torch_grid.geometry_backend) == ("CUDA:0", "torch")
    everything_cpu = plan_devices("cpu", has_cuda=True, open3d_cuda=True)
    assert {everything_cpu.encoder, everything_cpu.memory, everything_cpu.lmm} == {"cpu"}
    assert everything_cpu.geometry == "CPU:0"


@pytest.mark.parametrize("backend", ["dinov2_onnx", "dinov2_torch", "hf_clip"])
def test_the_node_configuration_carries_the_plan(backend: str) -> None:
    values = {p.name: p.default for p in NODE_PARAMS}
    settings = node_settings_from_params(values)
    assert settings.compute.device == "auto"
    encoder = encoder_config_from_params(backend, encoder_option_defaults(backend))
    config = pipeline_config_from_params(values, encoder)
    plan, enc, cfg, s = apply_device_plan(
        "auto", encoder, config, settings, has_cuda=True, open3d_cuda=True
    )
    assert plan.compute == "cuda" and plan.encoder == "cuda"
    assert enc["device"] == "cuda" and cfg.memory.device == "cuda"
    assert cfg.geometry.device == "CUDA:0" and s.lmm.device == "cuda" and s.view.device == "cuda"
    assert cfg.geometry.backend == "open3d"
    _, _, on_torch, _ = apply_device_plan(
        "auto", encoder, config, settings, has_cuda=True, open3d_cuda=False
    )
    assert (on_torch.geometry.device, on_torch.geometry.backend) == ("CUDA:0", "torch")
    if backend == "dinov2_onnx":  # the default CPU provider becomes CUDA (then CPU)
        assert enc["providers"] == ["cuda", "cpu"]
    assert isinstance(cfg, PipelineConfig)
    # On a machine without a GPU the same defaults put everything on the CPU.
    _, enc, cfg, s = apply_device_plan("auto", encoder, config, settings, has_cuda=False)
    assert enc["device"] == "cpu" and cfg.memory.device == "cpu" and s.lmm.device == "cpu"
    assert cfg.geometry.device == "CPU:0"
    if backend == "dinov2_onnx":
        assert enc["providers"] == ["cpu"]


def test_out_of_memory_is_recognised_through_wrappers_and_library_messages() -> None:
    import torch

    from llava3d_ros.core.devices import is_out_of_memory
    from llava3d_ros.core.encoders.base import EncoderError

    torch_oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(torch_oom)
    assert is_out_of_memory(MemoryError())
    try:  # an encoder wraps the library's error in its own
        try:
            raise torch_oom
        except torch.OutOfMemoryError as inner:
            raise EncoderError("dinov2_onnx: inference failed") from inner
    except EncoderError as wrapped:
        assert is_out_of_memory(wrapped)
    for message in (
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested "
        "buffer of size 2097152",
        "[Open3D Error] CUDA runtime error: out of memory",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    ):
        assert is_out_of_memory(RuntimeError(message)), message
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not a runtime failure
    loop = RuntimeError("a")
    loop.__context__ = RuntimeError("b")
    loop.__context__.__context__ = loop  # a cycle ends the walk
    assert not is_out_of_memory(loop)
