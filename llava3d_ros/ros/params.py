"""Every ROS parameter of the node: name, default, description and valid range, in one
table, so declaration, validation, the documented params file and the README agree.

Names are dotted (``memory.voxel_size``); in a params file they nest as YAML maps.
Encoder options depend on the chosen backend: ``encoder.backend`` is read first and
then that backend's own options are declared as ``encoder.<option>`` with the types of
their defaults (a None default becomes the empty string, meaning "unset").
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llava3d_ros.core.pipeline import PipelineConfig


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = True  # changed by reconfiguring (cleanup -> configure), not live


NODE_PARAMS: tuple[ParamSpec, ...] = (
    # --- inputs
    ParamSpec("color_topic", "/camera/color/image_raw", "RGB image topic (rgb8, bgr8, rgba8, bgra8, mono8)"),
    ParamSpec("depth_topic", "/camera/aligned_depth_to_color/image_raw", "depth registered to colour (16UC1 mm or 32FC1 m)"),
    ParamSpec("camera_info_topic", "/camera/color/camera_info", "CameraInfo of the colour camera"),
    ParamSpec("qos_reliability", "best_effort", "image subscription reliability", choices=("best_effort", "reliable")),
    ParamSpec("qos_depth", 5, "image subscription history depth", 1, 100),
    ParamSpec("map_frame", "map", "fixed frame of the memory and of results"),
    ParamSpec("robot_frame", "base_link", "robot body frame: centre of the radius bound, viewer of spatial answers"),
    ParamSpec("camera_frame", "", "override the images' header frame_id (empty = use the header)"),
    # --- ingest
    ParamSpec("sync.slop_s", 0.02, "max |colour stamp - depth stamp| for a pair", 0.0, 1.0),
    ParamSpec("sync.queue_size", 30, "bounded per-stream queue; overflow is counted as a drop", 1, 1000),
    ParamSpec("tf.timeout_s", 0.5, "how long a frame waits for its transform before it is dropped", 0.0, 30.0),
    ParamSpec("tf.cache_s", 30.0, "history kept by the fallback TF buffer (when tf2_ros is absent)", 1.0, 600.0),
    ParamSpec("ingest.torch_threads", 0, "torch CPU threads (0 = torch default; 1 is fastest on a loaded 2-core CPU)", 0, 256),
    ParamSpec("ingest.period_s", 0.02, "how often the ingest worker retries frames waiting for TF (new images wake it at once)", 0.001, 1.0),
    # --- memory
    ParamSpec("memory.voxel_size", 0.05, "voxel edge (m) of the patch memory", 0.005, 1.0),
    ParamSpec("memory.max_voxels", 100000, "hard bound on voxels (least recently seen evicted)", 1, 50_000_000),
    ParamSpec("memory.max_radius_m", 0.0, "evict voxels farther than this from robot_frame; 0 = off", 0.0, 1000.0),
    ParamSpec("memory.max_age_s", 0.0, "evict voxels not seen for this long; 0 = off", 0.0, 1e7),
    ParamSpec("memory.device", "auto", "torch device of the memory", choices=("auto", "cpu", "cuda")),
    ParamSpec("memory.feature_dtype", "float32", "storage dtype of voxel features", choices=("float32", "float16", "bfloat16")),
    # --- lifting
    ParamSpec("lifting.min_valid_fraction", 0.25, "patches with fewer valid depth pixels are dropped", 0.0, 1.0),
    ParamSpec("lifting.min_depth_m", 0.1, "depth below this is invalid", 0.0, 100.0),
    ParamSpec("lifting.max_depth_m", 8.0, "depth beyond this is invalid", 0.01, 1000.0),
    # --- keyframes
    ParamSpec("keyframes.min_translation_m", 0.10, "integrate when the camera moved this far", 0.0, 100.0),
    ParamSpec("keyframes.min_rotation_deg", 10.0, "... or turned this much", 0.0, 360.0),
    ParamSpec("keyframes.max_interval_s", 2.0, "... or this long passed (0 = never by time)", 0.0, 3600.0),
    ParamSpec("keyframes.min_interval_s", 0.0, "never integrate more often than this", 0.0, 3600.0),
    # --- queries
    ParamSpec("grounding.min_score", 0.5, "default score below which nothing matches (0.5 = beats every background prompt)", 0.0, 1.0),
    ParamSpec("grounding.temperature", 0.01, "sigmoid temperature of query-vs-negative cosine margins", 1e-4, 1.0),
    ParamSpec("grounding.oriented", False, "allow yaw-oriented boxes where they are tighter"),
    ParamSpec("grounding.min_cluster_voxels", 3, "smaller clusters are noise", 1, 100000),
    ParamSpec("query.default_max_results", 5, "objects returned when a goal asks for 0", 1, 1000),
    ParamSpec("query.max_query_chars", 512, "longer queries are rejected as BAD_QUERY", 1, 100000),
    ParamSpec("query.describe_radius_m", 0.15, "describe: a point covers the memory within this radius", 0.01, 10.0),
    ParamSpec("query.describe_vocabulary", ["mug", "cup", "bowl", "plate", "bottle", "can", "box", "book", "pan", "basket", "table", "chair", "cabinet", "shelf", "floor", "wall"], "names a described region is matched against"),
    ParamSpec("query.max_concurrent", 4, "queries executing at once; further goals are rejected", 1, 64),
    # --- outputs
    ParamSpec("stats_period_s", 1.0, "period of ~/memory_stats and /diagnostics", 0.05, 60.0),
    ParamSpec("cloud_period_s", 2.0, "period of ~/memory_cloud (0 = off)", 0.0, 600.0),
    ParamSpec("cloud_max_points", 50000, "voxels per ~/memory_cloud message (subsampled beyond)", 1, 10_000_000),
    ParamSpec("snapshot_path", "", "default file for save/load services (empty = ROS_HOME/llava3d/memory.safetensors)"),
    # --- models
    ParamSpec("encoder.backend", "dinov2_onnx", "encoder backend (see llava3d_ros.core.encoders)"),
    ParamSpec("lmm.checkpoint", "", "LLaVA-3D checkpoint directory (official layout) for open questions and captions (empty = none)"),
    ParamSpec("lmm.device", "auto", "device of the language model (auto = cuda when available)"),
    ParamSpec("lmm.dtype", "auto", "auto (bf16/fp16 on CUDA, fp32 on CPU), bf16, fp16 or fp32", choices=("auto", "bf16", "fp16", "fp32")),
    ParamSpec("lmm.pool_voxel_size", 0.2, "scene tokens: memory pooled per voxel of this size (LLaVA-3D: 0.2 m)", 0.01, 5.0),
    ParamSpec("lmm.max_scene_tokens", 2560, "cap on scene tokens (deterministic, spatially fair)", 1, 100000),
    ParamSpec("lmm.max_new_tokens", 256, "generated tokens when a goal asks for 0", 1, 8192),
)  # fmt: skip


# Backend -> (module, options dataclass): the typed options a backend accepts.
_BACKEND_OPTIONS: dict[str, tuple[str, str]] = {
    "dinov2_onnx": ("llava3d_ros.core.encoders.onnx_dinov2", "DinoV2OnnxOptions"),
    "hf_clip": ("llava3d_ros.core.encoders.hf_clip", "HFClipOptions"),
}


def encoder_option_defaults(backend: str) -> dict[str, Any]:
    """The option names and defaults a backend accepts, from its options dataclass
    (importing the backend module is cheap: heavy imports happen in its factory)."""
    if backend not in _BACKEND_OPTIONS:
        raise ValueError(f"unknown encoder.backend {backend!r}; known: {', '.join(_BACKEND_OPTIONS)}")
    module, name = _BACKEND_OPTIONS[backend]
    cls = getattr(importlib.import_module(module), name)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ""  # required option: empty until the user sets it
        out[f.name] = "" if default is None else default
    return out


def to_ros_value(value: Any) -> Any:
    """ROS parameters have no None or mixed lists; normalise defaults to declarable values."""
    if isinstance(value, tuple):
        return list(value)
    return value


def pipeline_config_from_params(
    values: Mapping[str, Any], encoder: Mapping[str, Any]
) -> PipelineConfig:
    """Flat dotted parameter values -> PipelineConfig (validation errors name the key)."""
    sections: dict[str, dict[str, Any]] = {}
    for section in ("memory", "lifting", "keyframes", "grounding", "query", "lmm"):
        prefix = section + "."
        sections[section] = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
    # Node settings, not pipeline ones.
    sections["query"].pop("max_concurrent", None)
    for key in ("checkpoint", "device", "dtype"):
        sections["lmm"].pop(key, None)
    return PipelineConfig.from_dict({"encoder": dict(encoder), **sections})


def encoder_config_from_params(backend: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``encoder.*`` parameter values -> the registry's config mapping. Empty strings
    (unset) are left out so the backend's own default (often None) applies.

    ``dinov2_onnx`` without a ``head_path`` gets the shipped alignment head, so the
    default configuration grounds language; ``head_path: none`` turns grounding off."""
    config: dict[str, Any] = {"backend": backend}
    for key, value in values.items():
        if value == "" or key == "backend":
            continue
        config[key] = value
    if backend == "dinov2_onnx":
        if str(config.get("head_path", "")).lower() == "none":
            config.pop("head_path")
        elif "head_path" not in config:
            from llava3d_ros.models import default_head_path

            head = default_head_path()
            if head is not None:
                config["head_path"] = str(head)
    return config


def params_yaml(backend: str | None = None, node_name: str = "/**") -> str:
    """A params file documenting every parameter (defaults, descriptions, ranges)."""
    import yaml

    lines = [
        "# llava3d node parameters: every one, with its default. Generated by",
        "# `llava3d-ros params`; tests check this file stays complete.",
        f"{node_name}:",
        "  ros__parameters:",
    ]
    specs = list(NODE_PARAMS)
    encoder = backend or next(s.default for s in specs if s.name == "encoder.backend")
    specs += [
        ParamSpec(f"encoder.{k}", v, f"{encoder} option {k} (see {_BACKEND_OPTIONS[encoder][1]})")
        for k, v in encoder_option_defaults(encoder).items()
    ]
    tree: dict[str, Any] = {}
    for spec in specs:
        node: dict[str, Any] = tree
        *parents, leaf = spec.name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = spec

    def emit(node: dict[str, Any], indent: int) -> None:
        pad = " " * indent
        for key, value in node.items():
            if isinstance(value, ParamSpec):
                note = value.description
                if value.min_value is not None:
                    note += f" [{value.min_value} .. {value.max_value}]"
                if value.choices:
                    note += f" (one of: {', '.join(value.choices)})"
                lines.append(f"{pad}# {note}")
                rendered = yaml.safe_dump(
                    to_ros_value(value.default), default_flow_style=True, width=10_000
                )
                rendered = rendered.strip().removesuffix("...").strip()
                lines.append(f"{pad}{key}: {rendered}")
            else:
                lines.append(f"{pad}{key}:")
                emit(value, indent + 2)

    emit(tree, 4)
    return "\n".join(lines) + "\n"


def print_params_yaml(args: Any) -> int:
    print(params_yaml(getattr(args, "encoder", None)), end="")
    return 0
