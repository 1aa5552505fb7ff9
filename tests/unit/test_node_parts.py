"""The node's parts without DDS: admission slots, goal validation, telemetry under
concurrent writers, the ingest worker driven in-process (bad stamps, bad poses, the
pipeline released on stop), the parameter table derived from the configuration
dataclasses. Message types are imported; no context is created."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.geometry import make_transform
from llava3d_ros.core.options import check_options, iter_options
from llava3d_ros.ros import params as P
from llava3d_ros.ros.conversions import fill_image, ns_to_stamp
from llava3d_ros.ros.ingest import IngestConfig, IngestWorker, pose_problem
from llava3d_ros.ros.queries import GoalSlots, validate_ask, validate_describe, validate_ground
from llava3d_ros.ros.sync import RgbdSynchronizer
from llava3d_ros.ros.telemetry import Telemetry, diagnostics_msg, memory_stats_msg
from llava3d_ros.ros.tf_buffer import TransformBuffer, TransformUnavailableError
from tests.model_fixtures import make_tiny_clip

# --------------------------------------------------------------------------- admission


def test_goal_slots_count_and_refuse_over_release() -> None:
    slots = GoalSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    slots.release()
    assert slots.in_use == 1 and slots.try_acquire()
    slots.release()
    slots.release()
    with pytest.raises(RuntimeError):
        slots.release()
    with pytest.raises(ValueError):
        GoalSlots(0)


def test_goal_slots_under_concurrent_acquire() -> None:
    slots = GoalSlots(5)
    got: list[bool] = []
    lock = threading.Lock()

    def grab() -> None:
        ok = slots.try_acquire()
        with lock:
            got.append(ok)

    threads = [threading.Thread(target=grab) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) == 5 and slots.in_use == 5


# --------------------------------------------------------------------------- validation


class _Pipe:
    def check_query(self, text: str) -> str | None:
        return pl.ScenePipeline.check_query(self, text)  # type: ignore[arg-type]

    config = pl.PipelineConfig()


def _ground_goal(**kw: Any) -> Any:
    return SimpleNamespace(**{"query": "the mug", "min_score": 0.0, "max_results": 0, **kw})


@pytest.mark.parametrize("bad", [1.5, math.inf, math.nan, 1e30])
def test_ground_goal_with_bad_min_score_is_a_bad_query(bad: float) -> None:
    problem = validate_ground(_ground_goal(min_score=bad), _Pipe())  # type: ignore[arg-type]
    assert problem and "min_score" in problem


def test_goal_validation_accepts_good_goals_and_names_problems() -> None:
    pipe: Any = _Pipe()
    assert validate_ground(_ground_goal(), pipe) is None
    assert validate_ground(_ground_goal(min_score=-3.0), pipe) is None  # <= 0: default
    assert "empty" in (validate_ground(_ground_goal(query=" \t\n"), pipe) or "")
    assert "limit" in (validate_ground(_ground_goal(query="x" * 10_000), pipe) or "")
    ask = SimpleNamespace(question="Where is the mug?", mode="", temperature=0.0, top_p=0.0)
    assert validate_ask(ask, pipe) is None
    assert "mode" in (validate_ask(SimpleNamespace(**{**vars(ask), "mode": "x"}), pipe) or "")
    bad_t = SimpleNamespace(**{**vars(ask), "temperature": math.nan})
    assert validate_ask(bad_t, pipe)
    pos = SimpleNamespace(x=0.0, y=math.nan, z=0.0)
    goal = SimpleNamespace(
        center=SimpleNamespace(position=pos), size=SimpleNamespace(x=0.0, y=0.0, z=0.0)
    )
    assert validate_describe(goal, pipe)


# --------------------------------------------------------------------------- telemetry


def test_telemetry_survives_concurrent_writers_and_readers() -> None:
    """The stats timer read deques the sensor thread changed and failed 16 times in
    20,000 iterations; every access now holds one lock."""
    tel = Telemetry(window=50)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        i = 0
        while not stop.is_set():
            tel.input_frame("color")
            tel.drop(f"reason_{i % 7}")
            tel.keyframe(0.01, {"encode": 0.005, "lift": 0.001})
            tel.latency("ground", 0.002)
            i += 1

    def read() -> None:
        try:
            for _ in range(3000):
                snap = tel.snapshot()
                assert snap.total_drops >= 0
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    writers = [threading.Thread(target=write) for _ in range(3)]
    for t in writers:
        t.start()
    read()
    stop.set()
    for t in writers:
        t.join()
    assert not errors
    snap = tel.snapshot()
    assert snap.counters["keyframes"] > 0 and snap.latency_p50_s["encode"] == pytest.approx(0.005)


def test_telemetry_counters_are_monotonic_across_synchronisers() -> None:
    tel = Telemetry()
    for _ in range(2):  # two activations: each has a new synchroniser
        sync: RgbdSynchronizer[int, int, int] = RgbdSynchronizer(queue_size=1)
        sync.add_color(1, 1)
        sync.add_color(2, 2)  # overflows the queue of 1
        tel.add_drops(sync.take_drops())
        assert sync.take_drops() == {}  # handed over once
    assert tel.snapshot().drops == {"queue_overflow": 2}


def test_stats_and_diagnostics_messages() -> None:
    tel = Telemetry()
    tel.input_frame("color")
    tel.drop("tf_expired", 3)
    snap = tel.snapshot()
    msg = memory_stats_msg(Header(), snap, None, "")
    assert msg.frames_received == 1
    assert list(msg.drop_reasons) == ["tf_expired"] and list(msg.drop_counts) == [3]
    diag = diagnostics_msg(msg.header, snap, True, 0, 2)
    values = {kv.key: kv.value for kv in diag.status[0].values}
    assert values["tf_drops"] == "3" and values["pending_tf_frames"] == "2"


def test_slow_keyframes_are_counted_for_diagnostics() -> None:
    tel = Telemetry()
    for seconds in (0.1, 0.7, 0.2, 1.5):
        tel.keyframe(seconds, {"encode": seconds}, slow=seconds >= 0.5)
    snap = tel.snapshot()
    values = {
        kv.key: kv.value for kv in diagnostics_msg(Header(), snap, True, 0, 0).status[0].values
    }
    assert values["slow_keyframes"] == "2"
    assert values["keyframe_latency_max_ms"] == "1500.0"


# --------------------------------------------------------------------------- parameters


def test_every_config_field_is_a_documented_parameter() -> None:
    names = {p.name for p in P.NODE_PARAMS}
    for section, cls in pl.PIPELINE_SECTIONS.items():
        for opt in iter_options(cls, f"{section}."):
            assert opt.name in names
    for prefix, _attr, cls in P.NODE_SECTIONS:
        for opt in iter_options(cls, prefix):
            assert opt.name in names
    # One default each: the table is the dataclass default (max_voxels disagreed before).
    table = {p.name: p.default for p in P.NODE_PARAMS}
    assert table["memory.max_voxels"] == pl.MemoryConfig().max_voxels
    assert tuple(table["query.describe_vocabulary"]) == pl.QueryConfig().describe_vocabulary


def test_settings_and_configs_reject_out_of_range_values() -> None:
    values = {p.name: p.default for p in P.NODE_PARAMS}
    settings = P.node_settings_from_params(values)
    assert settings.inputs.color_topic == "/camera/color/image_raw"
    assert settings.admission.max_concurrent == 4
    with pytest.raises(ValueError, match="qos_depth"):
        P.node_settings_from_params({**values, "qos_depth": 0})
    with pytest.raises(ValueError, match=r"memory\.voxel_size"):
        pl.PipelineConfig(memory=pl.MemoryConfig(voxel_size=-1.0))
    with pytest.raises(ValueError, match="device"):
        check_options(pl.MemoryConfig(device="tpu"))
    with pytest.raises(ValueError, match="unknown parameter"):
        P.pipeline_config_from_params({"memry.voxel_size": 0.1}, {})


def test_undocumented_field_is_refused() -> None:
    @dataclasses.dataclass
    class Bare:
        x: int = 1

    with pytest.raises(ValueError, match="help"):
        list(iter_options(Bare))


# --------------------------------------------------------------------------- ingest

H, W = 120, 160
S = 1_000_000_000


class _Tf:
    """map <- camera lookups from a table of stamps; unknown frames raise like TF does."""

    def __init__(self) -> None:
        self.poses: dict[int, np.ndarray] = {}

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        if source not in ("cam", "base_link"):
            raise TransformUnavailableError("unknown_frame", f"no frame {source}")
        if stamp_ns not in self.poses:
            raise TransformUnavailableError("future", f"no pose at {stamp_ns}")
        return self.poses[stamp_ns]


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, message: str, **_kw: Any) -> None:
        self.lines.append(message)

    def error(self, message: str, **_kw: Any) -> None:
        self.lines.append(message)


def _images(stamp_ns: int, frame_id: str = "cam", depth_m: float = 2.0) -> tuple[Any, ...]:
    rng = np.random.default_rng(stamp_ns % 1000)
    color = fill_image(Image(), rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8")
    depth = fill_image(Image(), np.full((H, W), int(depth_m * 1000), np.uint16), "16UC1")
    info = CameraInfo(height=H, width=W, distortion_model="plumb_bob")
    info.k = [100.0, 0.0, 80.0, 0.0, 100.0, 60.0, 0.0, 0.0, 1.0]
    for m in (color, depth, info):
        m.header.stamp = ns_to_stamp(stamp_ns, Time())
        m.header.frame_id = frame_id
    return color, depth, info


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    clip = make_tiny_clip(Path(tmp_path_factory.mktemp("m")) / "clip")
    return create_encoders({"backend": "hf_clip", "model": str(clip)})


def _worker(
    bundle: Any, now: list[float], max_lag_s: float = 0.5
) -> tuple[IngestWorker, _Tf, Telemetry]:
    cfg = pl.PipelineConfig.from_dict(
        {"memory": {"voxel_size": 0.1}, "keyframes": {"max_interval_s": 0.0}}
    )
    tf, tel = _Tf(), Telemetry()
    worker = IngestWorker(
        pl.ScenePipeline(cfg, bundle),
        tf,
        RgbdSynchronizer(),
        tel,
        IngestConfig(map_frame="map", tf_timeout_s=1.0, max_lag_s=max_lag_s),
        _Log(),
        clock=lambda: now[0],
    )
    return worker, tf, tel


def _queue_frames(
    worker: IngestWorker, tf: _Tf, stamps_s: list[float], with_tf: bool = True
) -> None:
    """Frames 2 m apart per second of stamp (each a keyframe candidate), queued
    without draining."""
    for t in stamps_s:
        stamp = round(t * S)
        if with_tf:
            tf.poses[stamp] = make_transform([2.0 * t, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])
        color, depth, info = _images(stamp)
        worker.on_camera_info(info)
        worker.on_depth(depth)
        worker.on_color(color)


def test_stale_candidates_are_superseded_by_a_ready_newer_frame(tiny_bundle: Any) -> None:
    """Before: candidates queued behind a busy encoder were all encoded in order, and at
    30 Hz the backlog filled and overflowed (drops). Now a candidate more than max_lag_s
    behind a frame that is ready is counted as superseded (the keyframe policy's
    choice, not a drop); within max_lag_s the worker catches up in order."""
    now = [0.0]
    worker, tf, tel = _worker(tiny_bundle, now, max_lag_s=0.5)
    _queue_frames(worker, tf, [10, 11, 12, 13, 14])
    while worker.drain():
        pass
    snap = tel.snapshot()
    assert snap.counters["keyframes"] == 1 and snap.counters["superseded"] == 4
    assert not snap.drops
    assert worker.pipeline.keyframes._last_stamp == pytest.approx(14.0)  # the newest
    # A frame or two behind, within max_lag_s: integrated in order (catching up).
    _queue_frames(worker, tf, [20.0, 20.2, 20.4])
    while worker.drain():
        pass
    snap = tel.snapshot()
    assert snap.counters["keyframes"] == 4 and snap.counters["superseded"] == 4
    # A newer frame whose transform has not arrived yet does not supersede a ready one
    # (a lagging TF must not starve the encoder).
    _queue_frames(worker, tf, [25])
    _queue_frames(worker, tf, [26], with_tf=False)
    worker.drain()
    snap = tel.snapshot()
    assert snap.counters["keyframes"] == 5 and snap.counters["superseded"] == 4
    assert worker.pending_tf_frames == 1
    # Off (0): every candidate in order (offline replay slower than the encoder).
    worker2, tf2, tel2 = _worker(tiny_bundle, now, max_lag_s=0.0)
    _queue_frames(worker2, tf2, [10, 11, 12])
    while worker2.drain():
        pass
    assert tel2.snapshot().counters["keyframes"] == 3
    assert "superseded" not in tel2.snapshot().counters


def test_ingest_worker_integrates_keyframes_and_counts_drops(tiny_bundle: Any) -> None:
    now = [0.0]
    worker, tf, tel = _worker(tiny_bundle, now, max_lag_s=0.0)
    for i in range(3):
        stamp = (10 + i) * S
        tf.poses[stamp] = make_transform([0.5 * i, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])
        color, depth, info = _images(stamp)
        worker.on_camera_info(info)
        worker.on_depth(depth)
        worker.on_color(color)
    while worker.drain():
        pass
    snap = tel.snapshot()
    assert snap.counters["keyframes"] == 3 and snap.counters["color_received"] == 3
    assert worker.pipeline.memory.stats().frames_integrated == 3
    # A frame from an unknown camera frame waits for TF, then is dropped by reason.
    color, depth, info = _images(20 * S, frame_id="other_cam")
    worker.on_depth(depth)
    worker.on_color(color)
    worker.drain()
    assert worker.pending_tf_frames == 1 and not tel.snapshot().drops
    now[0] = 5.0  # past tf_timeout_s
    worker.drain()
    assert worker.pending_tf_frames == 0
    assert tel.snapshot().drops == {"tf_unknown_frame": 1}
    # An unsupported encoding is dropped and the next good frame still integrates.
    color, depth, _ = _images(21 * S)
    color.encoding = "yuv422"
    tf.poses[21 * S] = make_transform([3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])
    worker.on_depth(depth)
    worker.on_color(color)
    worker.drain()
    assert tel.snapshot().drops["unknown_encoding"] == 1
    color, depth, _ = _images(22 * S)
    tf.poses[22 * S] = make_transform([4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])
    worker.on_depth(depth)
    worker.on_color(color)
    assert worker.drain()
    assert tel.snapshot().counters["keyframes"] == 4


def test_ingest_worker_thread_starts_and_stops(tiny_bundle: Any) -> None:
    now = [0.0]
    worker, tf, tel = _worker(tiny_bundle, now)
    worker.start()
    stamp = 10 * S
    tf.poses[stamp] = np.eye(4)
    color, depth, info = _images(stamp)
    worker.on_camera_info(info)
    worker.on_depth(depth)
    worker.on_color(color)
    deadline = threading.Event()
    for _ in range(500):
        if tel.snapshot().counters.get("keyframes"):
            break
        deadline.wait(0.01)
    worker.stop()
    assert tel.snapshot().counters["keyframes"] == 1


# --------------------------------------------------------------------------- bad input


def _real_tf_worker(
    bundle: Any, now_ns: Any = None, **cfg: Any
) -> tuple[IngestWorker, TransformBuffer, Telemetry]:
    """A worker on the fallback TF buffer (the one the wheels use), which reads stamp 0
    as "latest"."""
    pipe_cfg = pl.PipelineConfig.from_dict(
        {"memory": {"voxel_size": 0.1}, "keyframes": {"max_interval_s": 0.0}}
    )
    buf, tel = TransformBuffer(cache_time_s=1e6), Telemetry()
    worker = IngestWorker(
        pl.ScenePipeline(pipe_cfg, bundle),
        buf,
        RgbdSynchronizer(),
        tel,
        IngestConfig(map_frame="map", tf_timeout_s=0.0, **cfg),
        _Log(),
        now_ns=now_ns,
    )
    return worker, buf, tel


def _send(worker: IngestWorker, stamp_ns: int, color_stamp_ns: int | None = None) -> None:
    color, depth, info = _images(stamp_ns)
    if color_stamp_ns is not None:
        color.header.stamp = ns_to_stamp(color_stamp_ns, Time())
    worker.on_camera_info(info)
    worker.on_depth(depth)
    worker.on_color(color)
    while worker.drain():
        pass


def _pose(buf: TransformBuffer, stamp_ns: int, x: float) -> None:
    buf.set_transform("map", "cam", stamp_ns, make_transform([x, 0.0, 0.0], [0, 0, 0, 1.0]))


def test_a_slow_keyframe_is_logged_with_where_its_time_went(tiny_bundle: Any) -> None:
    """A keyframe slower than ``slow_keyframe_s`` lets the backlog fill: the log says
    which stage took the time (here the encoder, held by an object crop's call)."""
    worker, buf, _tel = _real_tf_worker(tiny_bundle, slow_keyframe_s=0.05)
    pipe = worker.pipeline
    _pose(buf, 10 * S, 0.0)
    held = threading.Event()

    def hold_encoder() -> None:
        with pipe._encoder_lock:
            held.set()
            time.sleep(0.2)

    t = threading.Thread(target=hold_encoder)
    t.start()
    held.wait(5)
    _send(worker, 10 * S)
    t.join()
    lines = [m for m in worker.logger.lines if m.startswith("slow keyframe")]  # type: ignore[attr-defined]
    assert len(lines) == 1, worker.logger.lines  # type: ignore[attr-defined]
    wait = float(lines[0].split("encoder_wait ")[1].split(",")[0])
    assert wait >= 0.1, lines[0]


def test_frames_stamped_zero_are_dropped_not_placed_at_the_latest_pose(tiny_bundle: Any) -> None:
    """Before: the fallback TF buffer answered stamp 0 with the latest pose and the frame
    was integrated there (and the keyframe policy saw time go backwards)."""
    worker, buf, tel = _real_tf_worker(tiny_bundle)
    for i in range(2):
        _pose(buf, (10 + i) * S, 0.5 * i)
        _send(worker, (10 + i) * S)
    assert tel.snapshot().counters["keyframes"] == 2
    _send(worker, 0)
    snap = tel.snapshot()
    assert snap.drops == {"zero_stamp": 2}  # colour and depth
    assert snap.counters["keyframes"] == 2
    _pose(buf, 12 * S, 1.0)
    _send(worker, 12 * S)
    assert tel.snapshot().counters["keyframes"] == 3


def test_images_far_from_the_node_clock_are_dropped_and_block_nothing(tiny_bundle: Any) -> None:
    """Before: a lone colour image stamped 1 h ahead stopped ingest for good (every later
    one refused as out_of_order); there was no clock check at all."""
    now = [100 * S]
    worker, buf, tel = _real_tf_worker(
        tiny_bundle, now_ns=lambda: now[0], max_clock_skew_s=5.0, max_stamp_age_s=60.0
    )
    hour = 3600 * S
    color, _, info = _images(100 * S + hour)
    worker.on_camera_info(info)
    worker.on_color(color)  # a lone colour image from the future
    _, depth, _ = _images(100 * S + 2 * hour)
    worker.on_depth(depth)  # and a lone depth image from further still
    color, depth, _ = _images(100 * S - hour)  # an hour old
    worker.on_depth(depth)
    worker.on_color(color)
    assert tel.snapshot().drops == {"stamp_out_of_range": 4}
    for i in range(3):
        stamp = 100 * S + i * S // 10
        now[0] = stamp
        _pose(buf, stamp, 0.5 * i)
        _send(worker, stamp)
    assert tel.snapshot().counters["keyframes"] == 3
    assert set(tel.snapshot().drops) == {"stamp_out_of_range"}
    # Sim time before the first /clock message reads 0: nothing is dropped for it.
    now[0] = 0
    _pose(buf, 200 * S, 2.0)
    _send(worker, 200 * S)
    assert tel.snapshot().counters["keyframes"] == 4
    # Within the skew: accepted (camera clocks run a little ahead).
    now[0] = 300 * S
    _pose(buf, 302 * S, 3.0)
    _send(worker, 302 * S)
    assert tel.snapshot().counters["keyframes"] == 5


def test_the_clock_check_can_be_turned_off(tiny_bundle: Any) -> None:
    worker, buf, tel = _real_tf_worker(
        tiny_bundle, now_ns=lambda: 10**18, max_clock_skew_s=0.0, max_stamp_age_s=0.0
    )
    _pose(buf, 10 * S, 0.0)
    _send(worker, 10 * S)
    assert tel.snapshot().counters["keyframes"] == 1 and not tel.snapshot().drops


@pytest.mark.parametrize(
    ("name", "pose"),
    [
        ("far", make_transform([1e9, 0.0, 0.0], [0, 0, 0, 1.0])),
        ("scaled", np.diag([2.0, 2.0, 2.0, 1.0])),
        ("mirrored", np.diag([1.0, 1.0, -1.0, 1.0])),
        ("nan", np.full((4, 4), np.nan)),
    ],
)
def test_bad_poses_are_dropped_before_the_keyframe_policy(
    tiny_bundle: Any, name: str, pose: np.ndarray
) -> None:
    """Before: a pose 1e9 m away counted as an integrated keyframe while the memory
    rejected every point (and reset the keyframe policy to that pose)."""
    now = [0.0]
    worker, tf, tel = _worker(tiny_bundle, now)
    tf.poses[10 * S] = pose
    color, depth, info = _images(10 * S)
    worker.on_camera_info(info)
    worker.on_depth(depth)
    worker.on_color(color)
    worker.drain()
    snap = tel.snapshot()
    assert snap.drops == {"bad_pose": 1}, name
    assert snap.counters.get("keyframes", 0) == 0
    assert worker.pipeline.memory.stats().frames_integrated == 0
    tf.poses[11 * S] = np.eye(4)
    color, depth, _ = _images(11 * S)
    worker.on_depth(depth)
    worker.on_color(color)
    assert worker.drain() and tel.snapshot().counters["keyframes"] == 1


def test_pose_problem_bounds() -> None:
    assert pose_problem(np.eye(4), 1e5) is None
    assert pose_problem(make_transform([0, 0, 99_999.0], [0, 0, 0, 1.0]), 1e5) is None
    assert "from the map origin" in (
        pose_problem(make_transform([0, 0, 1e6], [0, 0, 0, 1.0]), 1e5) or ""
    )
    near = np.eye(4)
    near[:3, :3] *= 1.0 + 1e-5  # float32 round trips: accepted
    assert pose_problem(near, 1e5) is None


def test_a_stopped_worker_lets_go_of_the_pipeline(tiny_bundle: Any) -> None:
    """rclpy's executor keeps a destroyed subscription (and so the worker's bound
    callback) until it next wakes; the worker held the pipeline, so the previous
    configuration's models stayed alive through the next configure."""
    import gc
    import weakref

    cfg = pl.PipelineConfig.from_dict({"memory": {"voxel_size": 0.1}})
    worker = IngestWorker(
        pl.ScenePipeline(cfg, tiny_bundle),
        _Tf(),
        RgbdSynchronizer(),
        Telemetry(),
        IngestConfig(),
        _Log(),
    )
    pipeline = weakref.ref(worker.pipeline)
    lingering_callback = worker.on_color  # what the executor keeps
    worker.start()
    worker.stop()
    del worker
    gc.collect()
    assert pipeline() is None
    color, _, _ = _images(10 * S)
    lingering_callback(color)  # a late message: ignored, no error
    with pytest.raises(RuntimeError, match="restarted"):
        lingering_callback.__self__.start()


def test_camera_info_without_images_is_reported_once(tiny_bundle: Any) -> None:
    """Images larger than the DDS transport carries never arrive and no drop counter
    can show it: camera info without any image for a while is logged, once."""
    now = [0.0]
    worker, _tf, _tel = _worker(tiny_bundle, now)
    log = worker.logger
    assert isinstance(log, _Log)
    color, depth, info = _images(10 * S)
    assert not worker.check_inputs()  # no camera info yet: nothing to say
    worker.on_camera_info(info)
    worker.on_depth(depth)  # depth arrives, colour never does
    now[0] = 4.9
    assert not worker.check_inputs()
    now[0] = 5.1
    assert worker.check_inputs()
    assert len(log.lines) == 1 and "no colour image" in log.lines[0]
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" in log.lines[0]
    now[0] = 60.0
    assert not worker.check_inputs() and len(log.lines) == 1  # once
    # Both streams arriving: never a warning.
    worker2, _, _ = _worker(tiny_bundle, now)
    worker2.on_camera_info(info)
    worker2.on_color(color)
    worker2.on_depth(depth)
    now[0] = 100.0
    assert not worker2.check_inputs() and worker2.logger.lines == []  # type: ignore[attr-defined]


def test_a_keyframe_that_runs_out_of_memory_is_dropped_and_ingest_goes_on(
    tiny_bundle: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from llava3d_ros.ros import ingest

    released: list[bool] = []
    monkeypatch.setattr(ingest, "release_cached_memory", lambda: released.append(True))
    now = [0.0]
    worker, tf, tel = _worker(tiny_bundle, now, max_lag_s=0.0)
    memory = worker.pipeline.memory
    integrate = memory.integrate
    calls = [0]

    def first_runs_out(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return integrate(*args, **kwargs)

    monkeypatch.setattr(memory, "integrate", first_runs_out)
    _queue_frames(worker, tf, [10.0])
    assert not worker.drain()
    assert tel.snapshot().drops == {"out_of_memory": 1} and released == [True]
    assert any("max_batch_size" in line for line in worker.logger.lines)  # what to lower
    _queue_frames(worker, tf, [11.0])
    assert worker.drain()  # the next keyframe integrates
    assert tel.snapshot().counters["keyframes"] == 1
    # Any other exception is still a bug for the ingest loop to report.
    monkeypatch.setattr(memory, "integrate", lambda *a, **k: 1 / 0)
    _queue_frames(worker, tf, [12.0])
    with pytest.raises(ZeroDivisionError):
        worker.drain()


def test_a_goal_that_runs_out_of_memory_answers_out_of_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    from llava3d_interfaces.action import Ask, Describe, Ground, Segment

    from llava3d_ros.ros import queries

    released: list[bool] = []
    monkeypatch.setattr(queries, "release_cached_memory", lambda: released.append(True))
    log = _Log()
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
    code, message = queries.failure_outcome("ask", oom, log)
    assert code == "OUT_OF_MEMORY" and "3.00 GiB" in message and "its own device" in message
    assert released == [True]
    code, message = queries.failure_outcome("ground", KeyError("x"), log)
    assert (code, message) == ("UNKNOWN", "KeyError: 'x'") and released == [True]
    for action in (Ask, Describe, Ground, Segment):  # every action has the code
        assert action.Result.OUT_OF_MEMORY == 11
