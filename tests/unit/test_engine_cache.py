"""TensorRT engines are cached per (GPU, TensorRT version, model, input shape, precision):
never rebuilt when the key matches, rebuilt when any part changes, with progress messages
while building. No GPU or TensorRT here: the GPU name and TensorRT version are
monkeypatched, and the torch-tensorrt path runs with a stand-in compiler that exports the
real module (the saving and loading through ``torch.export`` are real)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from llava3d_ros.core.encoders import EncoderError, create_encoders, engine_cache
from llava3d_ros.core.encoders import dinov2_torch as dt
from llava3d_ros.core.encoders import onnx_dinov2 as od
from llava3d_ros.core.encoders.engine_cache import EngineCache, EngineKey
from tests.model_fixtures import make_tiny_dinov2

KEY = EngineKey(
    builder="onnxruntime-tensorrt",
    gpu="NVIDIA H100 80GB HBM3",
    tensorrt="10.3.0",
    model_sha256="ab" * 32,
    input_shape="1x3x224x224-16x3x224x224",
    precision="fp16",
)
CHANGES = {
    "gpu": "NVIDIA GeForce RTX 4090",
    "tensorrt": "10.4.0",
    "model_sha256": "cd" * 32,
    "input_shape": "1x3x322x322-16x3x322x322",
    "precision": "fp32",
}


class Builds:
    """A build that writes an engine file and counts its calls."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, directory: Path) -> None:
        self.calls.append(directory)
        (directory / "model_ctx.engine").write_bytes(b"engine")


def test_a_matching_key_is_never_rebuilt_and_every_changed_part_rebuilds(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    build = Builds()
    first = cache.get_or_build(KEY, "test", build)
    assert cache.get_or_build(KEY, "test", build) == first
    assert EngineCache(tmp_path).get_or_build(KEY, "test", build) == first  # a new process
    assert len(build.calls) == 1
    for field, value in CHANGES.items():
        changed = dataclasses.replace(KEY, **{field: value})
        assert changed.digest() != KEY.digest(), field
        assert not cache.is_built(changed), field
        cache.get_or_build(changed, "test", build)
        assert cache.is_built(changed), field
    assert len(build.calls) == 1 + len(CHANGES)
    assert len({str(p) for p in build.calls}) == len(build.calls)
    assert dataclasses.replace(KEY).digest() == KEY.digest()  # equal keys, one directory


def test_the_key_is_written_beside_the_engine_and_a_mismatch_is_refused(tmp_path: Path) -> None:
    import json

    cache = EngineCache(tmp_path)
    directory = cache.get_or_build(KEY, "test", Builds())
    stored = json.loads((directory / engine_cache.KEY_FILE).read_text())
    assert stored == dataclasses.asdict(KEY)
    (directory / engine_cache.KEY_FILE).write_text(json.dumps({**stored, "gpu": "other"}))
    with pytest.raises(EncoderError, match="does not match the key"):
        cache.get_or_build(KEY, "test", Builds())


def test_a_build_that_leaves_no_engine_is_an_error_and_the_next_try_builds(
    tmp_path: Path,
) -> None:
    cache = EngineCache(tmp_path)
    with pytest.raises(EncoderError, match="left no engine"):
        cache.get_or_build(KEY, "test", lambda directory: None)
    build = Builds()
    cache.get_or_build(KEY, "test", build)
    assert len(build.calls) == 1


def test_building_says_what_it_builds_keeps_saying_it_and_says_when_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EngineCache(tmp_path, heartbeat_s=0.02)
    heard = threading.Event()

    class Heartbeats(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "still building" in record.getMessage():
                heard.set()

    handler = Heartbeats()
    engine_cache.logger.addHandler(handler)
    try:

        def slow_build(directory: Path) -> None:
            assert heard.wait(10.0), "no heartbeat while building"
            Builds()(directory)

        with caplog.at_level(logging.INFO, logger=engine_cache.logger.name):
            cache.get_or_build(KEY, "dinov2_onnx", slow_build)
            built = [r.getMessage() for r in caplog.records]
            caplog.clear()
            cache.get_or_build(KEY, "dinov2_onnx", slow_build)
            cached = [r.getMessage() for r in caplog.records]
    finally:
        engine_cache.logger.removeHandler(handler)
    assert "building a TensorRT engine for NVIDIA H100 80GB HBM3, TensorRT 10.3.0" in built[0]
    assert "takes minutes" in built[0] and str(tmp_path) in built[0]
    assert any("still building" in m for m in built)
    assert "engine built in" in built[-1]
    assert len(cached) == 1 and "not rebuilt" in cached[0]


def test_tensorrt_version_from_the_package_or_the_runtime_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    assert engine_cache.tensorrt_version() == "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails

    class Lib:
        def __init__(self, code: int) -> None:
            self.getInferLibVersion = lambda: code

    codes = {"libnvinfer.so.10": 100300}
    monkeypatch.setattr(
        engine_cache.ctypes,
        "CDLL",
        lambda name: Lib(codes[name]) if name in codes else (_ for _ in ()).throw(OSError()),
    )
    assert engine_cache.tensorrt_version() == "10.3.0"
    codes = {"libnvinfer.so.8": 8601}
    assert engine_cache.tensorrt_version() == "8.6.1"
    codes = {}
    assert engine_cache.tensorrt_version() is None


def test_gpu_name_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        assert engine_cache.gpu_name(0)
    else:
        with pytest.raises(EncoderError, match="CUDA device"):
            engine_cache.gpu_name(0)


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, module: object, name: str, trt: str) -> None:
    monkeypatch.setattr(module, "gpu_name", lambda device_id=0: name)
    monkeypatch.setattr(module, "tensorrt_version", lambda: trt)


def test_onnxruntime_engine_key_follows_gpu_tensorrt_model_shape_and_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def key(**over: object) -> EngineKey:
        args: dict[str, object] = {
            "model": b"graph",
            "device_id": 0,
            "h": 224,
            "w": 224,
            "max_batch": 16,
            "fp16": True,
        }
        args.update(over)
        return od.tensorrt_engine_key(**args)  # type: ignore[arg-type]

    _fake_gpu(monkeypatch, od, "NVIDIA H100 80GB HBM3", "10.3.0")
    base = key()
    assert base.input_shape == "1x3x224x224-16x3x224x224" and base.precision == "fp16"
    assert key().digest() == base.digest()
    variants = [key(model=b"other graph"), key(h=322, w=322), key(max_batch=4), key(fp16=False)]
    _fake_gpu(monkeypatch, od, "NVIDIA A100-SXM4-40GB", "10.3.0")
    variants.append(key())
    _fake_gpu(monkeypatch, od, "NVIDIA H100 80GB HBM3", "10.4.0")
    variants.append(key())
    digests = {v.digest() for v in variants} | {base.digest()}
    assert len(digests) == len(variants) + 1


def test_onnxruntime_engine_key_hashes_a_cached_graph_file_like_its_bytes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_gpu(monkeypatch, od, "gpu", "10.3.0")
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph bytes" * 1000)
    a = od.tensorrt_engine_key(graph.read_bytes(), 0, 224, 224, 4, False)
    b = od.tensorrt_engine_key(str(graph), 0, 224, 224, 4, False)
    assert a == b


def test_onnxruntime_provider_options_point_at_the_keys_directory(tmp_path: Path) -> None:
    directory = EngineCache(tmp_path).directory(KEY)
    opts = od.tensorrt_provider_options("pixel_values", KEY, directory, 1, True)
    assert opts["trt_engine_cache_enable"] is True
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(directory)
    assert opts["trt_fp16_enable"] is True and opts["device_id"] == 1
    assert opts["trt_profile_min_shapes"] == "pixel_values:1x3x224x224"
    assert opts["trt_profile_opt_shapes"] == "pixel_values:1x3x224x224"
    assert opts["trt_profile_max_shapes"] == "pixel_values:16x3x224x224"


def test_dinov2_torch_tensorrt_without_torch_tensorrt_or_cuda_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(EncoderError, match="tensorrt needs device cuda"):
        create_encoders({"backend": "dinov2_torch", "device": "cpu", "tensorrt": True})
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    with pytest.raises(EncoderError, match="torch-tensorrt is not installed"):
        dt.tensorrt_tokens(
            dt.PatchTokens(make_tiny_dinov2(image_size=28)),
            "ab",
            28,
            28,
            2,
            torch.device("cpu"),
            torch.float32,
            EngineCache("/nonexistent"),
        )


class StandInTorchTensorrt(types.ModuleType):
    """torch-tensorrt's compile/save/Input surface: "compiling" exports the module with
    torch.export (what torch-tensorrt's dynamo path starts from) and saving writes that
    ExportedProgram, so the cache's loading path (``torch.export.load``) is the real one."""

    __version__ = "2.14.0"

    def __init__(self) -> None:
        super().__init__("torch_tensorrt")
        self.compiles = 0

    class Input:
        def __init__(self, min_shape: tuple[int, ...], **kwargs: object) -> None:
            self.min_shape = min_shape

    def compile(self, module: torch.nn.Module, ir: str, inputs: list, **kwargs: object):  # type: ignore[no-untyped-def]
        assert ir == "dynamo"
        self.compiles += 1
        example = torch.zeros(inputs[0].min_shape)
        return torch.export.export(module, (example,))

    def save(self, program, path: str, inputs: list) -> None:  # type: ignore[no-untyped-def]
        torch.export.save(program, path)


def test_dinov2_torch_tensorrt_engine_is_built_once_then_loaded_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = StandInTorchTensorrt()
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    _fake_gpu(monkeypatch, dt, "NVIDIA H100 80GB HBM3", "10.3.0")
    net = make_tiny_dinov2(image_size=28)
    cache = EngineCache(tmp_path)

    def encoder() -> dt.DinoV2TorchEncoder:
        return dt.DinoV2TorchEncoder(
            net,
            input_size=28,
            max_batch_size=1,
            tensorrt=lambda tokens: dt.tensorrt_tokens(
                tokens, "ab" * 32, 28, 28, 1, torch.device("cpu"), torch.float32, cache
            ),
        )

    eager = dt.DinoV2TorchEncoder(net, input_size=28)
    frame = [np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)]
    want = eager.encode(frame)["vision"]
    first = encoder()
    second = encoder()
    assert fake.compiles == 1
    (directory,) = (tmp_path / "trt").iterdir()
    assert (directory / dt.ENGINE_FILE).is_file()
    for enc in (first, second):
        torch.testing.assert_close(enc.encode(frame)["vision"], want, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(dt, "tensorrt_version", lambda: "10.4.0")  # a TensorRT upgrade
    encoder()
    assert fake.compiles == 2
    assert len(list((tmp_path / "trt").iterdir())) == 2


def test_a_corrupt_cached_engine_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = StandInTorchTensorrt()
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    _fake_gpu(monkeypatch, dt, "gpu", "10.3.0")
    cache = EngineCache(tmp_path)
    key_args = ("ab" * 32, 28, 28, 1, torch.device("cpu"), torch.float32, cache)
    dt.tensorrt_tokens(dt.PatchTokens(make_tiny_dinov2(image_size=28)), *key_args)
    (engine,) = (tmp_path / "trt").glob(f"*/{dt.ENGINE_FILE}")
    engine.write_bytes(b"not a program")
    with pytest.raises(EncoderError, match="does not load"):
        dt.tensorrt_tokens(dt.PatchTokens(make_tiny_dinov2(image_size=28)), *key_args)
    assert fake.compiles == 1


class FakeTensorrtOrt:
    """onnxruntime with a TensorRT provider, naming engines as its source does
    (``model_metadef_id_generator.cc``): a hash of the model path if the model came as a
    path, else of the graph, plus a counter per graph that every new session in the
    process increments. The engine is built on the first run when no file of that name is
    in ``trt_engine_cache_path``."""

    class SessionOptions:
        intra_op_num_threads = 0
        graph_optimization_level = 0

        def add_session_config_entry(self, key: str, value: str) -> None:
            pass

    GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99)

    def __init__(self) -> None:
        self.sessions = 0
        self.builds = 0
        self.metadef_ids: dict[str, int] = {}  # per process

    @staticmethod
    def get_available_providers() -> list[str]:
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def InferenceSession(  # noqa: N802 - onnxruntime's name
        self, data: bytes | str, so: object, providers: list[str], provider_options: list[dict]
    ) -> object:
        fake = self
        self.sessions += 1
        opts = provider_options[providers.index("TensorrtExecutionProvider")]
        graph = hashlib.sha1(data.encode() if isinstance(data, str) else data).hexdigest()[:16]
        metadef_id = self.metadef_ids.get(graph, 0)
        self.metadef_ids[graph] = metadef_id + 1
        engine = Path(opts["trt_engine_cache_path"]) / (
            f"TensorrtExecutionProvider_TRTKernel_graph_main_{graph}_{metadef_id}_0_fp16.engine"
        )

        class Session:
            def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
                if not engine.exists():
                    fake.builds += 1
                    engine.write_bytes(b"engine")
                batch = next(iter(feeds.values())).shape[0]
                return [np.zeros((batch, 257, 384), np.float32)]

            def get_providers(self) -> list[str]:
                return providers

        return Session()


def test_onnxruntime_tensorrt_builds_once_per_key_across_reconfigures_and_processes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second encoder in the same process (a lifecycle cleanup + configure) must not get
    a new onnxruntime session: onnxruntime would name its engine with the next counter
    value and build it again. A later process loads the cut graph from the model cache:
    given as a path, onnxruntime would name the engine after the path and build again."""
    fake = FakeTensorrtOrt()
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setattr(od, "_TENSORRT_SESSIONS", {})
    _fake_gpu(monkeypatch, od, "NVIDIA H100 80GB HBM3", "10.3.0")

    def encoder(fp16: bool = True) -> od.DinoV2OnnxEncoder:
        return od.DinoV2OnnxEncoder(
            providers=("tensorrt", "cuda", "cpu"), cache_dir=tmp_path, fp16=fp16, max_batch_size=4
        )

    first = encoder()
    assert (fake.sessions, fake.builds) == (1, 1)
    assert first.feature_dims["vision"] == 384
    with caplog.at_level(logging.INFO):
        encoder()  # reconfigured in the same process
    assert (fake.sessions, fake.builds) == (1, 1)
    assert any("reusing this process's TensorRT session" in r.getMessage() for r in caplog.records)

    # A new process: a fresh registry and onnxruntime counter; the engine file is found.
    monkeypatch.setattr(od, "_TENSORRT_SESSIONS", {})
    fake.metadef_ids.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        encoder()
    assert (fake.sessions, fake.builds) == (2, 1)
    assert any("not rebuilt" in r.getMessage() for r in caplog.records)

    # What the registry prevents: a second session of the graph in one process builds again.
    monkeypatch.setattr(od, "_TENSORRT_SESSIONS", {})
    encoder()
    assert (fake.sessions, fake.builds) == (3, 2)

    encoder(fp16=False)  # another precision: another key, its own build
    assert fake.builds == 3
