"""benchmarks/gpu.py runs end to end (tiny sizes) and prints every stage with a CPU and a
GPU figure, the GPU's from the emulated device where there is no GPU: a GPU session is
rare and short, and must not be spent on a crash in the benchmark's CUDA branches."""

from __future__ import annotations

import re

import pytest

from tests.cuda_emulation import cuda_or_emulated

# No GPU figure by design: open3d's CUDA build is not installed here (its TSDF grid; the
# torch grid has one), and the segmentation runs on the host (docs/decisions/0012).
# dinov2_onnx needs onnxruntime-gpu.
HOST_ONLY = ("geometry integration (TSDF, open3d)", "surface extraction (TSDF, open3d)")
HOST_ONLY += ("segmentation (", "dinov2_onnx")


@pytest.mark.slow
def test_the_gpu_benchmark_prints_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import gpu

    with cuda_or_emulated():
        assert gpu.main(["--quick", "--runs", "1", "--frames", "3"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("stage ") :]
    for stage in (
        "dinov2_torch 56px fp32 batch 1",
        "dinov2_torch 56px fp16 batch 4",
        "dinov2_onnx 56px fp32 batch 4",
        "CLIP (tiny) fp16 batch 4",
        "lift + fuse per keyframe",
        "geometry integration (TSDF, torch)",
        "surface extraction (TSDF, torch)",
        "geometry integration (TSDF, open3d)",
        "surface extraction (TSDF, open3d)",
        "segmentation (",
        "ground at 2e+03 voxels",
        "LMM prefill 64 tokens",
        "LMM decode",
        "whole keyframe",
    ):
        line = next((r for r in table.splitlines() if r.startswith(stage)), None)
        assert line is not None, stage
        cpu, gpu_ms = line.split()[-3:-1]
        assert float(cpu) > 0, line
        if not stage.startswith(HOST_ONLY):
            assert float(gpu_ms) > 0, line
    assert "keyframe traffic on cpu: 0 host->device" in out
    traffic = re.search(r"keyframe traffic on cuda: (\d+) host->device .* (\d+) device->host", out)
    assert traffic is not None, out
    # Lifting's 4 copies up and the torch TSDF's 4; the features' and touched keys' down.
    assert int(traffic[1]) <= 8 and int(traffic[2]) <= 2, traffic[0]
