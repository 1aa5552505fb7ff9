"""benchmarks/gpu.py runs end to end (tiny sizes) and prints every stage with a CPU figure,
so the GPU run on a lent machine does not fail on a renamed API first."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_the_gpu_benchmark_prints_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import gpu

    assert gpu.main(["--quick", "--runs", "1", "--frames", "3"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("stage ") :]
    for stage in (
        "dinov2_torch 56px fp32 batch 1",
        "dinov2_torch 56px fp16 batch 4",
        "dinov2_onnx 56px fp32 batch 4",
        "CLIP (tiny) fp16 batch 4",
        "lift + fuse per keyframe",
        "geometry integration (TSDF)",
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
        assert (gpu_ms == "-") == (not torch.cuda.is_available()) or "segmentation" in stage
    assert "keyframe traffic on cpu: 0 host->device" in out
