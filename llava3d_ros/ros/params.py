"""Every ROS parameter of the node, derived from the dataclasses that use it.

One source of truth: the core's configuration dataclasses (``MemoryConfig``,
``KeyframePolicy``, ``GroundingConfig``, ...) and the node's own settings below document
each field where it is defined (:func:`llava3d_ros.core.options.option`: description,
range, choices). This module turns them into the parameter table the node declares, the
documented params file (``llava3d-ros params``) and, on configure, back into the typed
configuration objects. Nothing else lists parameters.

Names are dotted (``memory.voxel_size``); in a params file they nest as YAML maps.
Encoder options depend on the chosen backend: ``encoder.backend`` is read first and then
that backend's own options are declared as ``encoder.<option>`` with the types of their
defaults (a None default becomes the empty string, meaning "unset").

Parameters can be set while the node is unconfigured and take effect on configure
(nav2's rule); in any other state a set is refused with the reason.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llava3d_ros.core.devices import DEVICE_CHOICES, DevicePlan, plan_devices
from llava3d_ros.core.options import check_options, iter_options, option
from llava3d_ros.core.pipeline import (
    PIPELINE_SECTIONS,
    PipelineConfig,
)

# --------------------------------------------------------------------------- node settings


@dataclass(frozen=True)
class ComputeSettings:
    device: str = option(
        "auto",
        "where every stage left at auto runs (encoder, memory, geometry, language models): "
        "auto = cuda when torch sees a GPU; cuda without one fails configure",
        choices=DEVICE_CHOICES,
    )


@dataclass(frozen=True)
class InputSettings:
    """Top-level parameters: topics, QoS, frames."""

    autostart: bool = option(True, "configure and activate on start-up")
    color_topic: str = option(
        "/camera/color/image_raw", "RGB image topic (rgb8, bgr8, rgba8, bgra8, mono8)"
    )
    depth_topic: str = option(
        "/camera/aligned_depth_to_color/image_raw",
        "depth registered to colour (16UC1 mm or 32FC1 m)",
    )
    camera_info_topic: str = option("/camera/color/camera_info", "CameraInfo of the colour camera")
    qos_reliability: str = option(
        "best_effort", "image subscription reliability", choices=("best_effort", "reliable")
    )
    qos_depth: int = option(5, "image subscription history depth", 1, 100)
    map_frame: str = option("map", "fixed frame of the memory and of results")
    robot_frame: str = option(
        "base_link", "robot body frame: centre of the radius bound, viewer of spatial answers"
    )
    camera_frame: str = option("", "override the images' header frame_id (empty = use the header)")


@dataclass(frozen=True)
class SyncSettings:
    slop_s: float = option(0.02, "max |colour stamp - depth stamp| for a pair", 0.0, 1.0)
    queue_size: int = option(30, "bounded per-stream queue; overflow is counted as a drop", 1, 1000)
    max_clock_skew_s: float = option(
        5.0,
        "drop images stamped further than this ahead of the node clock as "
        "stamp_out_of_range (0 = off; skipped while a sim-time clock reads 0)",
        0.0,
        86400.0,
    )
    max_stamp_age_s: float = option(
        0.0,
        "drop images stamped further than this behind the node clock as "
        "stamp_out_of_range (0 = off: bags replayed without use_sim_time stay usable)",
        0.0,
        1e9,
    )


@dataclass(frozen=True)
class TfSettings:
    timeout_s: float = option(
        0.5, "how long a frame waits for its transform before it is dropped", 0.0, 30.0
    )
    cache_s: float = option(
        30.0, "history kept by the fallback TF buffer (when tf2_ros is absent)", 1.0, 600.0
    )
    max_translation_m: float = option(
        1e5, "camera poses further than this from the map origin are dropped (bad_pose)", 1.0, 1e9
    )


@dataclass(frozen=True)
class IngestSettings:
    torch_threads: int = option(
        0, "torch CPU threads (0 = torch default; 1 is fastest on a loaded 2-core CPU)", 0, 256
    )
    period_s: float = option(
        0.02,
        "how often the ingest worker retries frames waiting for TF (new images wake it)",
        0.001,
        1.0,
    )
    max_lag_s: float = option(
        0.5,
        "skip a keyframe candidate stamped this far before a frame that is ready to "
        "integrate (counted as superseded, not dropped): the memory lags a fast camera by "
        "at most this and the backlog never fills (0 = never skip: every candidate in "
        "order, for offline replays slower than the encoder)",
        0.0,
        3600.0,
    )
    heap_trim_period_s: float = option(
        30.0,
        "give free heap pages back to the OS this often while active (glibc malloc_trim; "
        "freed per-frame image buffers otherwise stay resident; 0 = off)",
        0.0,
        3600.0,
    )


@dataclass(frozen=True)
class AdmissionSettings:
    """``query.*`` parameters of the node (the pipeline's are in ``QueryConfig``)."""

    max_concurrent: int = option(4, "queries executing at once; further goals are rejected", 1, 64)
    goal_queue_depth: int = option(
        100,
        "history depth of the actions' goal, result and cancel services (rclpy's default "
        "10 lost requests of a burst: they got neither accept nor reject)",
        1,
        10000,
    )


@dataclass(frozen=True)
class OutputSettings:
    stats_period_s: float = option(1.0, "period of ~/memory_stats and /diagnostics", 0.05, 60.0)
    cloud_period_s: float = option(2.0, "period of ~/memory_cloud (0 = off)", 0.0, 600.0)
    objects_period_s: float = option(
        1.0, "period of ~/objects and ~/object_markers (0 = off)", 0.0, 600.0
    )
    cloud_max_points: int = option(
        50_000, "voxels per ~/memory_cloud message (subsampled beyond)", 1, 10_000_000
    )


@dataclass(frozen=True)
class SnapshotSettings:
    """``snapshot.*``: where snapshots live and when the node writes and reads them."""

    dir: str = option(
        "",
        "the only directory snapshots are read from and written to "
        "(empty = $ROS_HOME/llava3d/snapshots, ROS_HOME defaulting to ~/.ros)",
    )
    autosave_period_s: float = option(
        0.0,
        "save the memory as snapshot 'autosave' this often while active (0 = off)",
        0.0,
        86_400.0,
    )
    load_on_configure: str = option(
        "",
        "snapshot name to load when configuring, e.g. 'autosave' (empty = start empty; "
        "a missing or unloadable snapshot is logged and the node starts empty)",
    )


@dataclass(frozen=True)
class EncoderChoice:
    backend: str = option(
        "dinov2_onnx",
        "encoder backend (see llava3d_ros.core.encoders)",
        choices=("dinov2_onnx", "dinov2_torch", "hf_clip"),
    )


@dataclass(frozen=True)
class LmmLoading:
    """``lmm.*`` parameters that say which model to load (the rest are in ``LmmConfig``)."""

    checkpoint: str = option(
        "",
        "LLaVA-3D checkpoint directory (official layout) for open questions and captions "
        "(empty = none)",
    )
    device: str = option(
        "auto",
        "device of the language model (auto = the top-level device)",
        choices=("auto", "cpu", "cuda"),
    )
    dtype: str = option(
        "auto",
        "auto (bf16/fp16 on CUDA, fp32 on CPU), bf16, fp16 or fp32",
        choices=("auto", "bf16", "fp16", "fp32"),
    )
    template: str = option(
        "vicuna_v1",
        "conversation template: vicuna_v1 (LLaVA-3D's training, 'curious user') or llava_v1 "
        "(LLaVA's inference scripts, 'curious human')",
        choices=("vicuna_v1", "llava_v1"),
    )


@dataclass(frozen=True)
class ViewLoading:
    """``view.*`` parameters that say which 2D model to load (the rest are in
    ``ViewConfig``)."""

    checkpoint: str = option(
        "",
        "LLaVA-1.5-family checkpoint directory (official layout: LLaVA-1.5, Spatial-LLaVA) "
        "for questions about what the camera sees now (empty = none)",
    )
    vision_tower: str = option(
        "",
        "CLIP directory (or cached repo id) of the view model's vision tower (empty = the "
        "checkpoint's mm_vision_tower, from the Hugging Face cache)",
    )
    share_vision_tower: bool = option(
        True,
        "use the memory's hf_clip encoder as the view model's vision tower when it gives the "
        "features the model was trained on (one copy of CLIP); false = always load its own",
    )
    device: str = option(
        "auto",
        "device of the view model and its tower (auto = the top-level device)",
        choices=("auto", "cpu", "cuda"),
    )
    dtype: str = option(
        "auto",
        "auto (bf16/fp16 on CUDA, fp32 on CPU), bf16, fp16 or fp32",
        choices=("auto", "bf16", "fp16", "fp32"),
    )
    template: str = option(
        "llava_v1",
        "conversation template: llava_v1 (LLaVA-1.5's) or vicuna_v1",
        choices=("llava_v1", "vicuna_v1"),
    )


@dataclass(frozen=True)
class NodeSettings:
    """What the node itself reads from its parameters (the pipeline gets PipelineConfig)."""

    compute: ComputeSettings = dataclasses.field(default_factory=ComputeSettings)
    inputs: InputSettings = dataclasses.field(default_factory=InputSettings)
    sync: SyncSettings = dataclasses.field(default_factory=SyncSettings)
    tf: TfSettings = dataclasses.field(default_factory=TfSettings)
    ingest: IngestSettings = dataclasses.field(default_factory=IngestSettings)
    admission: AdmissionSettings = dataclasses.field(default_factory=AdmissionSettings)
    outputs: OutputSettings = dataclasses.field(default_factory=OutputSettings)
    snapshot: SnapshotSettings = dataclasses.field(default_factory=SnapshotSettings)
    encoder: EncoderChoice = dataclasses.field(default_factory=EncoderChoice)
    lmm: LmmLoading = dataclasses.field(default_factory=LmmLoading)
    view: ViewLoading = dataclasses.field(default_factory=ViewLoading)


#: (parameter prefix, NodeSettings attribute, dataclass), in params-file order.
NODE_SECTIONS: tuple[tuple[str, str, type], ...] = (
    ("", "compute", ComputeSettings),
    ("", "inputs", InputSettings),
    ("sync.", "sync", SyncSettings),
    ("tf.", "tf", TfSettings),
    ("ingest.", "ingest", IngestSettings),
    ("query.", "admission", AdmissionSettings),
    ("", "outputs", OutputSettings),
    ("snapshot.", "snapshot", SnapshotSettings),
    ("encoder.", "encoder", EncoderChoice),
    ("lmm.", "lmm", LmmLoading),
    ("view.", "view", ViewLoading),
)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def bounds(self) -> tuple[float, float] | None:
        if self.min_value is None or self.max_value is None:
            return None
        return self.min_value, self.max_value


def _specs(prefix: str, cls: type) -> list[ParamSpec]:
    return [
        ParamSpec(o.name, o.default, o.help, o.min, o.max, o.choices)
        for o in iter_options(cls, prefix)
    ]


def _build_table() -> tuple[ParamSpec, ...]:
    specs: list[ParamSpec] = []
    order = list(NODE_SECTIONS[0:5])
    for prefix, _attr, cls in order:
        specs += _specs(prefix, cls)
    for section, cls in PIPELINE_SECTIONS.items():
        specs += _specs(f"{section}.", cls)
        if section == "query":
            specs += _specs("query.", AdmissionSettings)
        if section == "lmm":
            specs += _specs("lmm.", LmmLoading)
        if section == "view":
            specs += _specs("view.", ViewLoading)
    specs += _specs("", OutputSettings) + _specs("snapshot.", SnapshotSettings)
    specs += _specs("encoder.", EncoderChoice)
    names = [s.name for s in specs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise RuntimeError(f"parameters defined twice: {sorted(dupes)}")
    return tuple(specs)


NODE_PARAMS: tuple[ParamSpec, ...] = _build_table()


# --------------------------------------------------------------------------- encoders

# Backend -> (module, options dataclass): the typed options a backend accepts.
_BACKEND_OPTIONS: dict[str, tuple[str, str]] = {
    "dinov2_onnx": ("llava3d_ros.core.encoders.onnx_dinov2", "DinoV2OnnxOptions"),
    "dinov2_torch": ("llava3d_ros.core.encoders.dinov2_torch", "DinoV2TorchOptions"),
    "hf_clip": ("llava3d_ros.core.encoders.hf_clip", "HFClipOptions"),
}


def encoder_option_defaults(backend: str) -> dict[str, Any]:
    """The option names and defaults a backend accepts, from its options dataclass
    (importing the backend module is cheap: heavy imports happen in its factory)."""
    if backend not in _BACKEND_OPTIONS:
        raise ValueError(
            f"unknown encoder.backend {backend!r}; known: {', '.join(_BACKEND_OPTIONS)}"
        )
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
    """ROS parameters have no None or tuples; normalise defaults to declarable values."""
    if isinstance(value, tuple):
        return list(value)
    return value


# --------------------------------------------------------------------------- values -> configs


def _section_values(values: Mapping[str, Any], prefix: str, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key.startswith(prefix) and key[len(prefix) :] in names:
            out[key[len(prefix) :]] = value
    return out


def _build(cls: type, kwargs: Mapping[str, Any], where: str) -> Any:
    typed = {}
    for f in dataclasses.fields(cls):
        if f.name not in kwargs:
            continue
        value = kwargs[f.name]
        default = getattr(cls(), f.name)
        if isinstance(default, tuple):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int):
            value = float(value)
        typed[f.name] = value
    obj = cls(**typed)
    check_options(obj, where)
    return obj


def node_settings_from_params(values: Mapping[str, Any]) -> NodeSettings:
    """Flat parameter values -> NodeSettings (unknown names are ignored here: the
    pipeline's are read by :func:`pipeline_config_from_params`)."""
    parts = {
        attr: _build(cls, _section_values(values, prefix, cls), prefix or attr)
        for prefix, attr, cls in NODE_SECTIONS
    }
    return NodeSettings(**parts)


def _node_keys() -> set[str]:
    keys = set()
    for prefix, _attr, cls in NODE_SECTIONS:
        keys |= {f"{prefix}{f.name}" for f in dataclasses.fields(cls)}
    return keys


def pipeline_config_from_params(
    values: Mapping[str, Any], encoder: Mapping[str, Any]
) -> PipelineConfig:
    """Flat dotted parameter values -> PipelineConfig. A dotted name that belongs to no
    pipeline section and no node setting is an error that names it (a typo in a params
    file must not be silently ignored)."""
    node_keys = _node_keys()
    sections: dict[str, dict[str, Any]] = {name: {} for name in PIPELINE_SECTIONS}
    for key, value in values.items():
        if key in node_keys or "." not in key or key.startswith("encoder."):
            continue
        section, _, name = key.partition(".")
        if section not in sections:
            raise ValueError(f"unknown parameter {key!r}")
        sections[section][name] = value
    return PipelineConfig.from_dict({"encoder": dict(encoder), **sections})


def encoder_config_from_params(backend: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``encoder.*`` parameter values -> the registry's config mapping. Empty strings
    (unset) are left out so the backend's own default (often None) applies.

    The DINOv2 backends without a ``head_path`` get the shipped alignment head, so the
    default configuration grounds language; ``head_path: none`` turns grounding off."""
    config: dict[str, Any] = {"backend": backend}
    for key, value in values.items():
        if value == "" or key == "backend":
            continue
        config[key] = value
    if backend in ("dinov2_onnx", "dinov2_torch"):
        if str(config.get("head_path", "")).lower() == "none":
            config.pop("head_path")
        elif "head_path" not in config:
            from llava3d_ros.models import default_head_path

            head = default_head_path()
            if head is not None:
                config["head_path"] = str(head)
    return config


# --------------------------------------------------------------------------- params file


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


# --------------------------------------------------------------------------- devices


def _encoder_device_setting(backend: str, encoder: Mapping[str, Any]) -> str:
    """The encoder's device as a plan input: "auto" when it follows the top-level device.
    dinov2_onnx's defaults (CPU provider, tensors on the CPU) count as following it."""
    if backend == "dinov2_onnx":
        providers = list(encoder.get("providers", ["cpu"]))
        if encoder.get("device", "cpu") == "cpu" and providers == ["cpu"]:
            return "auto"
        return str(encoder.get("device", "cpu"))
    return str(encoder.get("device", "auto"))


def apply_device_plan(
    compute: str,
    encoder: Mapping[str, Any],
    config: PipelineConfig,
    settings: NodeSettings,
    *,
    has_cuda: bool | None = None,
    open3d_cuda: bool | None = None,
) -> tuple[DevicePlan, dict[str, Any], PipelineConfig, NodeSettings]:
    """Every stage left at auto on the top-level ``device`` (see core.devices): returns
    the plan and the encoder config, pipeline config and node settings that carry it."""
    backend = str(encoder.get("backend", ""))
    plan = plan_devices(
        compute,
        encoder=_encoder_device_setting(backend, encoder),
        memory=config.memory.device,
        geometry=config.geometry.device,
        geometry_backend=config.geometry.backend,
        lmm=settings.lmm.device,
        view=settings.view.device,
        has_cuda=has_cuda,
        open3d_cuda=open3d_cuda,
    )
    enc = dict(encoder)
    enc["device"] = plan.encoder
    if (
        backend == "dinov2_onnx"
        and plan.encoder == "cuda"
        and list(enc.get("providers", ["cpu"])) == ["cpu"]
    ):
        enc["providers"] = ["cuda", "cpu"]  # onnxruntime-gpu's CUDA provider when installed
    config = dataclasses.replace(
        config,
        memory=dataclasses.replace(config.memory, device=plan.memory),
        geometry=dataclasses.replace(
            config.geometry, device=plan.geometry, backend=plan.geometry_backend
        ),
    )
    settings = dataclasses.replace(
        settings,
        lmm=dataclasses.replace(settings.lmm, device=plan.lmm),
        view=dataclasses.replace(settings.view, device=plan.view),
    )
    return plan, enc, config, settings
