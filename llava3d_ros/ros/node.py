"""The llava3d lifecycle node: RGB-D + CameraInfo + TF in, rolling 3D patch memory,
/llava3d/{ground,ask,describe} actions, memory services, stats, diagnostics and RViz
output.

Lifecycle: configure loads the models and creates the servers; activate subscribes and
starts ingest; deactivate stops ingest (queries then answer NOT_ACTIVE); cleanup frees
the models. With ``autostart`` (default true) the node configures and activates itself.

Ingest follows the nvblox pattern: subscription callbacks only enqueue into bounded
queues; an ingest worker drains them, pairs colour and depth, waits (without blocking)
for the transform at the image stamp, selects keyframes, encodes, lifts and fuses. Every
frame that is not integrated is counted by reason.

Threads, chosen so the encoder gets the CPU: the sensor subscriptions (images, camera
info, /tf, /clock) live on an internal node ``<name>_sensors`` spun by its own single-threaded
executor, because rclpy's executors rebuild the wait set in Python on every wake-up
over every entity of their nodes (the lifecycle, parameter and action services run to
~50), which at 10 Hz RGB-D kept a whole core busy. The ingest worker is a plain thread,
not an executor timer: a MultiThreadedExecutor busy-polls a timer that is due while its
callback group still runs (ros2/rclpy#1223), which a 20 ms drain timer around a
100-300 ms encoder call always is. The worker sleeps on an event the image callbacks
set. Queries and services run on the node's MultiThreadedExecutor.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from action_msgs.msg import GoalStatus  # noqa: F401  (documented result states)
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, Vector3
from llava3d_interfaces.action import Ask, Describe, Ground
from llava3d_interfaces.msg import GroundedObject, MemoryStats
from llava3d_interfaces.srv import ClearMemory, LoadMemory, SaveMemory
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time_source import TimeSource
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.encoders.base import GROUND, VISION, EncoderError
from llava3d_ros.core.geometry import (
    CameraIntrinsics,
    UnsupportedEncodingError,
    depth_to_meters,
    quaternion_from_rotation_matrix,
    transform_points,
)
from llava3d_ros.core.questions import parse_question
from llava3d_ros.core.spatial import Box3D, Viewpoint
from llava3d_ros.ros import params as P
from llava3d_ros.ros.conversions import (
    ImageConversionError,
    depth_image_to_array,
    image_to_rgb,
    stamp_to_ns,
)
from llava3d_ros.ros.sync import RgbdSynchronizer, SyncedFrame
from llava3d_ros.ros.tf_buffer import TransformUnavailableError
from llava3d_ros.ros.tf_source import TfSource

#: Per-keyframe stages whose medians /diagnostics reports (convert: ROS images -> arrays).
_KEYFRAME_STAGES = ("convert", "lift", "encode", "fuse")

# pipeline outcome code -> error code constant name (same names in every action)
_ERROR_NAMES = {
    pl.OK: "NONE",
    pl.EMPTY_MEMORY: "EMPTY_MEMORY",
    pl.NO_MATCH: "NO_MATCH",
    pl.BAD_QUERY: "BAD_QUERY",
    pl.MODEL_UNAVAILABLE: "MODEL_UNAVAILABLE",
    pl.CANCELED: "CANCELED",
}


def _duration(seconds: float, msg: Any) -> Any:
    msg.sec = int(seconds)
    msg.nanosec = int((seconds - int(seconds)) * 1e9)
    return msg


def _logged_transition(fn):  # type: ignore[no-untyped-def]
    """rclpy turns an exception in a transition callback into ERROR without a word;
    log it so a failed activation says why."""

    def wrapper(self, state):  # type: ignore[no-untyped-def]
        try:
            return fn(self, state)
        except Exception as exc:
            self.get_logger().error(f"{fn.__name__} failed: {exc!r}")
            raise

    wrapper.__name__ = fn.__name__
    return wrapper


class _PendingFrame:
    __slots__ = ("first_seen", "frame")

    def __init__(self, frame: SyncedFrame, first_seen: float):
        self.frame = frame
        self.first_seen = first_seen


class Llava3DNode(LifecycleNode):
    def __init__(self, node_name: str = "llava3d", **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self._declare(P.ParamSpec("autostart", True, "configure and activate on start-up"))
        for spec in P.NODE_PARAMS:
            self._declare(spec)
        self.pipeline: pl.ScenePipeline | None = None
        self._active = False
        self._query_lock = threading.Lock()
        self._running_queries = 0
        self._drops: collections.Counter[str] = collections.Counter()
        self._counters: collections.Counter[str] = collections.Counter()
        self._latencies: dict[str, collections.deque[float]] = {
            k: collections.deque(maxlen=200)
            for k in ("ground", "ask", "describe", "keyframe", *_KEYFRAME_STAGES)
        }
        self._input_times: collections.deque[float] = collections.deque(maxlen=300)
        self._keyframe_times: collections.deque[float] = collections.deque(maxlen=300)
        self._pending: collections.deque[_PendingFrame] = collections.deque()
        self._last_scores: tuple[np.ndarray, np.ndarray] | None = None  # (centroids, scores)
        self._intrinsics_cache: tuple[Any, CameraIntrinsics] | None = None
        self._ingest_subs: list[Any] = []
        self._ingest_timers: list[Any] = []
        self._action_servers: list[Any] = []
        self._memory_services: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._tf: TfSource | None = None
        self._sync: RgbdSynchronizer | None = None
        # High-rate sensor traffic on its own node and executor (see the module doc).
        # Same context, so the same remappings and namespace apply.
        # use_sim_time is the main node's; the sensor node's own time source stays off.
        self._sensors = Node(
            f"{node_name}_sensors",
            context=self.context,
            start_parameter_services=False,
            parameter_overrides=[Parameter("use_sim_time", value=False)],
        )
        self._sensor_clock = self._route_clock_to_sensors()
        self._sensor_executor = SingleThreadedExecutor(context=self.context)
        self._sensor_executor.add_node(self._sensors)
        self._sensor_thread = threading.Thread(
            target=self._spin_sensors, name="llava3d_sensors", daemon=True
        )
        self._sensor_thread.start()
        self._ingest_thread: threading.Thread | None = None
        self._ingest_stop = threading.Event()
        self._ingest_wake = threading.Event()
        self._ingest_settings: dict[str, Any] = {}
        self._query_group = ReentrantCallbackGroup()
        self._io_group = MutuallyExclusiveCallbackGroup()
        self._cloud_group = MutuallyExclusiveCallbackGroup()  # slow: keep it off stats
        # Ingest and reporting run on wall time: with use_sim_time a node must keep
        # draining and reporting when /clock pauses or stops (bag finished).
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        if self.get_parameter("autostart").value:
            # Run the transitions from the executor once spinning starts, as a launch
            # file's lifecycle manager would, so constructor errors stay separate.
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    def _route_clock_to_sensors(self) -> TimeSource:
        """/clock (40 Hz from ``ros2 bag play``, up to 1 kHz from simulators) is received
        on the sensor node, and this node's clock follows it from there: on the query
        executor every /clock message cost a full wait-set rebuild, most of a core."""
        clock_source = TimeSource(node=self._sensors)
        own = getattr(self, "_time_source", None)  # rclpy.node.Node's time source
        if own is not None:
            own.detach_node()  # drops this node's /clock subscription
        clock_source.attach_clock(self.get_clock())
        clock_source.ros_time_is_active = bool(self.get_parameter("use_sim_time").value)

        def on_set(params: list[Parameter]) -> SetParametersResult:
            for param in params:
                if param.name == "use_sim_time" and param.type_ == Parameter.Type.BOOL:
                    clock_source.ros_time_is_active = bool(param.value)
            return SetParametersResult(successful=True)

        self.add_on_set_parameters_callback(on_set)
        return clock_source

    def _spin_sensors(self) -> None:
        # Ends when the context shuts down (Ctrl-C) or destroy_node shuts the executor down.
        with contextlib.suppress(ExternalShutdownException, RuntimeError):
            self._sensor_executor.spin()

    def destroy_node(self) -> None:
        self._ingest_stop.set()
        self._ingest_wake.set()
        self._sensor_executor.shutdown(timeout_sec=2.0)
        self._sensor_thread.join(timeout=5.0)
        self._sensors.destroy_node()
        super().destroy_node()

    # ------------------------------------------------------------------ parameters

    def _declare(self, spec: P.ParamSpec) -> None:
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        default = P.to_ros_value(spec.default)
        if spec.choices:
            desc.additional_constraints = "one of: " + ", ".join(spec.choices)
        if spec.min_value is not None and isinstance(default, float):
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(spec.min_value), to_value=float(spec.max_value))
            ]
        elif (
            spec.min_value is not None
            and isinstance(default, int)
            and not isinstance(default, bool)
        ):
            desc.integer_range = [
                IntegerRange(from_value=int(spec.min_value), to_value=int(spec.max_value), step=1)
            ]
        self.declare_parameter(spec.name, default, desc)
        if spec.choices:
            value = self.get_parameter(spec.name).value
            if value not in spec.choices:
                raise ValueError(
                    f"parameter {spec.name}={value!r} is not one of {', '.join(spec.choices)}"
                )

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _encoder_config(self) -> dict[str, Any]:
        backend = self._param("encoder.backend")
        values = {}
        for key, default in P.encoder_option_defaults(backend).items():
            name = f"encoder.{key}"
            if not self.has_parameter(name):
                self.declare_parameter(
                    name,
                    P.to_ros_value(default),
                    ParameterDescriptor(description=f"{backend} option {key}", read_only=True),
                )
            values[key] = self.get_parameter(name).value
        return P.encoder_config_from_params(backend, values)

    # ------------------------------------------------------------------ lifecycle

    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: configure failed; the node stays unconfigured")
            return
        self.trigger_activate()

    @_logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        t0 = time.monotonic()
        threads = self._param("ingest.torch_threads")
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        try:
            encoder_config = self._encoder_config()
            values = {n: self._param(n) for n in self._parameters if "." in n}
            config = P.pipeline_config_from_params(values, encoder_config)
            self.get_logger().info(f"loading encoder {encoder_config}")
            bundle = create_encoders(encoder_config)
            lmm = self._load_lmm(config)
            self.pipeline = pl.ScenePipeline(config, bundle, lmm)
        except (EncoderError, ValueError, OSError, RuntimeError, KeyError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self.pipeline = None
            return TransitionCallbackReturn.FAILURE
        pipe = self.pipeline
        self.get_logger().info(
            f"configured in {time.monotonic() - t0:.1f} s: encoder "
            f"{encoder_config['backend']} {pipe.bundle.image.feature_dims}, grounding "
            f"{'on' if pipe.grounder else 'off (no text-aligned features)'}, memory on "
            f"{pipe.memory.device}"
        )
        self._outputs = {
            "stats": self.create_lifecycle_publisher(MemoryStats, "~/memory_stats", 10),
            "markers": self.create_lifecycle_publisher(MarkerArray, "~/grounding_markers", 10),
            "cloud": self.create_lifecycle_publisher(PointCloud2, "~/memory_cloud", 2),
            "diagnostics": self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10),
        }
        self._action_servers = [
            ActionServer(
                self, Ground, "/llava3d/ground", execute_callback=self._execute_ground,
                goal_callback=self._accept_goal, cancel_callback=lambda _g: CancelResponse.ACCEPT,
                callback_group=self._query_group,
            ),
            ActionServer(
                self, Ask, "/llava3d/ask", execute_callback=self._execute_ask,
                goal_callback=self._accept_goal, cancel_callback=lambda _g: CancelResponse.ACCEPT,
                callback_group=self._query_group,
            ),
            ActionServer(
                self, Describe, "/llava3d/describe", execute_callback=self._execute_describe,
                goal_callback=self._accept_goal, cancel_callback=lambda _g: CancelResponse.ACCEPT,
                callback_group=self._query_group,
            ),
        ]  # fmt: skip
        io = self._io_group
        self._memory_services = [
            self.create_service(SaveMemory, "~/save_memory", self._on_save, callback_group=io),
            self.create_service(LoadMemory, "~/load_memory", self._on_load, callback_group=io),
            self.create_service(ClearMemory, "~/clear_memory", self._on_clear, callback_group=io),
        ]
        self._tf = TfSource(self._sensors, cache_s=self._param("tf.cache_s"))
        return TransitionCallbackReturn.SUCCESS

    def _load_lmm(self, config: pl.PipelineConfig) -> Any:
        path = self._param("lmm.checkpoint")
        if not path:
            return None
        from llava3d_ros.core.lmm import Llava3DChat

        device = self._param("lmm.device")
        dtype = self._param("lmm.dtype")
        self.get_logger().info(f"loading LLaVA-3D language model from {path}")
        return Llava3DChat.load(
            path,
            device=None if device == "auto" else device,
            dtype=None if dtype == "auto" else dtype,
            max_scene_tokens=config.lmm.max_scene_tokens,
        )

    @_logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        qos = QoSProfile(
            depth=self._param("qos_depth"),
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.BEST_EFFORT
            if self._param("qos_reliability") == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        self._sync = RgbdSynchronizer(
            slop_ns=int(self._param("sync.slop_s") * 1e9), queue_size=self._param("sync.queue_size")
        )
        sync = self._sync
        self._ingest_subs = [
            self._sensors.create_subscription(
                Image, self._param("color_topic"), self._on_color, qos
            ),
            self._sensors.create_subscription(
                Image, self._param("depth_topic"), self._on_depth, qos
            ),
            self._sensors.create_subscription(
                CameraInfo, self._param("camera_info_topic"), sync.add_camera_info, qos
            ),
        ]
        self._ingest_settings = {
            name: self._param(name)
            for name in ("ingest.period_s", "sync.queue_size", "tf.timeout_s", "map_frame",
                         "camera_frame", "robot_frame")
        }  # fmt: skip
        self._ingest_stop.clear()
        self._ingest_thread = threading.Thread(
            target=self._ingest_loop, name="llava3d_ingest", daemon=True
        )
        self._ingest_thread.start()
        self._ingest_timers = [
            self.create_timer(
                self._param("stats_period_s"), self._publish_stats, self._io_group, self._steady
            ),
        ]
        if self._param("cloud_period_s") > 0:
            self._ingest_timers.append(
                self.create_timer(
                    self._param("cloud_period_s"), self._publish_cloud, self._cloud_group,
                    self._steady,
                )
            )
        self._active = True
        self.get_logger().info(
            f"active: {self._param('color_topic')} + {self._param('depth_topic')} -> memory in "
            f"{self._param('map_frame')} (TF via {self._tf.backend if self._tf else '?'})"
        )
        return super().on_activate(state)

    @_logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_ingest()
        return super().on_deactivate(state)

    @_logged_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_ingest()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _stop_ingest(self) -> None:
        self._ingest_stop.set()
        self._ingest_wake.set()
        thread, self._ingest_thread = self._ingest_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # at most the keyframe being encoded
        for timer in self._ingest_timers:
            self.destroy_timer(timer)
        for sub in self._ingest_subs:
            self._sensors.destroy_subscription(sub)
        self._ingest_timers, self._ingest_subs = [], []
        self._pending.clear()

    def _teardown(self) -> None:
        for server in self._action_servers:
            server.destroy()
        for srv in self._memory_services:
            self.destroy_service(srv)
        for pub in self._outputs.values():
            self.destroy_lifecycle_publisher(pub)
        if self._tf is not None:
            self._tf.destroy()
        self._action_servers, self._memory_services, self._outputs, self._tf = [], [], {}, None
        self.pipeline = None

    # ------------------------------------------------------------------ ingest

    def _on_color(self, msg: Image) -> None:
        self._counters["color_received"] += 1
        self._input_times.append(time.monotonic())
        if self._sync is not None:
            self._sync.add_color(stamp_to_ns(msg.header.stamp), msg)
            self._ingest_wake.set()

    def _on_depth(self, msg: Image) -> None:
        self._counters["depth_received"] += 1
        if self._sync is not None:
            self._sync.add_depth(stamp_to_ns(msg.header.stamp), msg)
            self._ingest_wake.set()

    def _intrinsics(self, info: CameraInfo) -> CameraIntrinsics:
        cached = self._intrinsics_cache
        if cached is not None and cached[0] is info:
            return cached[1]
        intr = CameraIntrinsics.from_camera_info(
            list(info.k), info.width, info.height, info.distortion_model, list(info.d)
        )
        self._intrinsics_cache = (info, intr)
        return intr

    def _drop(self, reason: str, detail: str) -> None:
        self._drops[reason] += 1
        self.get_logger().warning(f"dropped frame ({reason}): {detail}", throttle_duration_sec=5.0)

    def _ingest_loop(self) -> None:
        """The ingest worker: sleeps until an image arrives (or ``ingest.period_s`` passes,
        to retry frames waiting for TF), then drains until nothing is ready."""
        period = self._ingest_settings["ingest.period_s"]
        while not self._ingest_stop.is_set():
            self._ingest_wake.wait(period)
            self._ingest_wake.clear()
            try:
                while not self._ingest_stop.is_set() and self._drain():
                    pass
            except Exception as exc:  # keep ingesting; a bug must not stop the memory
                self._drops["internal_error"] += 1
                self.get_logger().error(
                    f"ingest failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0
                )

    def _drain(self) -> bool:
        """Move synchronised frames to the TF-wait queue and integrate what is ready, at
        most one keyframe per call so a stop request waits for one encoder call at most.
        True when a keyframe was integrated (more may be ready)."""
        if self._sync is None or self.pipeline is None or self._tf is None:
            return False
        settings = self._ingest_settings
        now = time.monotonic()
        limit = 2 * settings["sync.queue_size"]
        for frame in self._sync.pop_frames():
            self._counters["frames_synced"] += 1
            self._pending.append(_PendingFrame(frame, now))
            if len(self._pending) > limit:  # encoding can't keep up: drop the oldest
                self._pending.popleft()
                self._drops["backlog_overflow"] += 1
        timeout = settings["tf.timeout_s"]
        map_frame = settings["map_frame"]
        # Oldest first; a frame waiting for TF blocks nothing behind it.
        still_waiting: collections.deque[_PendingFrame] = collections.deque()
        integrated = False
        while self._pending:
            item = self._pending.popleft()
            frame = item.frame
            camera_frame = settings["camera_frame"] or frame.color.header.frame_id
            try:
                t_map_cam = self._tf.lookup(map_frame, camera_frame, frame.stamp_ns)
            except TransformUnavailableError as exc:
                if now - item.first_seen < timeout and exc.reason in ("future", "unknown_frame"):
                    still_waiting.append(item)
                else:
                    self._drop(f"tf_{exc.reason}", str(exc))
                continue
            if self._integrate(frame, t_map_cam):
                integrated = True
                break
        still_waiting.extend(self._pending)
        self._pending = still_waiting
        self._drops_from_sync()
        return integrated

    def _drops_from_sync(self) -> None:
        if self._sync is None:
            return
        for reason, n in self._sync.drops.items():
            self._drops[reason] = n  # the synchroniser keeps running totals

    def _integrate(self, frame: SyncedFrame, t_map_cam: np.ndarray) -> bool:
        """True when the frame was a keyframe and went through the encoder."""
        pipe = self.pipeline
        assert pipe is not None
        stamp_s = frame.stamp_ns * 1e-9
        if pipe.keyframes.check(t_map_cam, stamp_s) is None:
            self._counters["not_keyframe"] += 1
            return False
        t0 = time.perf_counter()
        try:
            rgb = image_to_rgb(frame.color)
            raw_depth = depth_image_to_array(frame.depth)
            depth = depth_to_meters(raw_depth, frame.depth.encoding)
            intr = self._intrinsics(frame.info)
            t_convert = time.perf_counter() - t0
            robot = None
            try:
                t_map_robot = self._tf.lookup(  # type: ignore[union-attr]
                    self._ingest_settings["map_frame"],
                    self._ingest_settings["robot_frame"],
                    frame.stamp_ns,
                )
                robot = t_map_robot[:3, 3]
            except TransformUnavailableError:
                pass  # the radius bound waits for the next frame with a robot pose
            outcome = pipe.process_frame(rgb, depth, intr, t_map_cam, stamp_s, robot)
        except ImageConversionError as exc:
            self._drop(exc.reason, str(exc))
            return False
        except UnsupportedEncodingError as exc:
            self._drop("unknown_encoding", str(exc))
            return False
        except pl.FrameError as exc:
            self._drop(exc.reason, str(exc))
            return True  # lifting ran; yield the tick like a keyframe
        except ValueError as exc:  # malformed camera info and the like
            self._drop("bad_input", str(exc))
            return False
        if outcome.keyframe is None:
            return False
        self._counters["keyframes"] += 1
        self._keyframe_times.append(time.monotonic())
        self._latencies["keyframe"].append(time.perf_counter() - t0)
        for stage in _KEYFRAME_STAGES:
            took = t_convert if stage == "convert" else outcome.timings.get(stage, 0.0)
            self._latencies[stage].append(took)
        return True

    # ------------------------------------------------------------------ queries

    def _accept_goal(self, _goal: Any) -> GoalResponse:
        with self._query_lock:
            if self._running_queries >= self._param("query.max_concurrent"):
                self.get_logger().warning("rejecting goal: query limit reached")
                return GoalResponse.REJECT
            self._running_queries += 1
        return GoalResponse.ACCEPT

    def _finish_goal(self, goal_handle: Any, result: Any, code_name: str, msg: str) -> Any:
        with self._query_lock:
            self._running_queries -= 1
        result.error_code = getattr(type(result), code_name)
        result.error_msg = msg
        if code_name == "CANCELED" and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif code_name == "NONE":
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def _not_ready(self) -> str | None:
        if self.pipeline is None:
            return "the node is not configured"
        if not self._active:
            return "the node is not active"
        return None

    def _results_frame(self, target_frame: str) -> tuple[str, np.ndarray | None]:
        """(frame name, T_target_map or None for the map frame). Raises on TF failure."""
        map_frame = self._param("map_frame")
        if not target_frame or target_frame == map_frame:
            return map_frame, None
        assert self._tf is not None
        return target_frame, self._tf.lookup(target_frame, map_frame, 0)

    def _to_msgs(self, boxes: list[Box3D], t_target_map: np.ndarray | None) -> list[GroundedObject]:
        out = []
        for box in boxes:
            obj = GroundedObject(
                label=box.label, score=float(box.score), num_voxels=int(box.num_voxels)
            )
            center = np.asarray(box.center, dtype=np.float64)
            rot = yaw_matrix(box.yaw)
            if t_target_map is not None:
                center = transform_points(t_target_map, center[None])[0]
                rot = t_target_map[:3, :3] @ rot
            q = quaternion_from_rotation_matrix(rot)
            obj.center = Pose()
            obj.center.position.x, obj.center.position.y, obj.center.position.z = map(float, center)
            (
                obj.center.orientation.x,
                obj.center.orientation.y,
                obj.center.orientation.z,
                obj.center.orientation.w,
            ) = map(float, q)
            obj.size = Vector3(x=float(box.size[0]), y=float(box.size[1]), z=float(box.size[2]))
            out.append(obj)
        return out

    def _header(self, frame_id: str) -> Header:
        return Header(frame_id=frame_id, stamp=self.get_clock().now().to_msg())

    def _execute_ground(self, goal_handle: Any) -> Ground.Result:
        t0 = time.perf_counter()
        goal = goal_handle.request
        result = Ground.Result()
        problem = self._not_ready()
        if problem:
            return self._finish_goal(goal_handle, result, "NOT_ACTIVE", problem)
        pipe = self.pipeline
        assert pipe is not None

        def stage(name: str, progress: float) -> None:
            goal_handle.publish_feedback(Ground.Feedback(stage=name, progress=progress))

        try:
            frame_id, t_target_map = self._results_frame(goal.target_frame)
        except TransformUnavailableError as exc:
            return self._finish_goal(goal_handle, result, "TRANSFORM_FAILED", str(exc))
        outcome = pipe.ground(
            goal.query, int(goal.max_results), float(goal.min_score),
            cancel=lambda: goal_handle.is_cancel_requested, on_stage=stage,
        )  # fmt: skip
        result.header = self._header(frame_id)
        result.memory_voxels = outcome.memory_voxels
        result.objects = self._to_msgs(outcome.boxes, t_target_map)
        elapsed = time.perf_counter() - t0
        _duration(elapsed, result.query_time)
        self._latencies["ground"].append(elapsed)
        if outcome.result is not None and outcome.code in (pl.OK, pl.NO_MATCH):
            self._publish_markers(outcome.boxes, goal.query)
        stage("done", 1.0)
        return self._finish_goal(goal_handle, result, _ERROR_NAMES[outcome.code], outcome.message)

    def _viewpoint(self) -> Viewpoint | None:
        try:
            assert self._tf is not None
            t = self._tf.lookup(self._param("map_frame"), self._param("robot_frame"), 0)
            return Viewpoint.from_transform(t, forward_axis="x")
        except (TransformUnavailableError, ValueError):
            return None

    def _execute_ask(self, goal_handle: Any) -> Ask.Result:
        t0 = time.perf_counter()
        goal = goal_handle.request
        result = Ask.Result()
        problem = self._not_ready()
        if problem:
            return self._finish_goal(goal_handle, result, "NOT_ACTIVE", problem)
        pipe = self.pipeline
        assert pipe is not None
        mode = goal.mode or "auto"
        if mode not in ("auto", "geometry", "lmm"):
            return self._finish_goal(
                goal_handle, result, "BAD_QUERY", f"mode {mode!r}: use auto, geometry or lmm"
            )
        problem = pipe.check_query(goal.question)
        if problem:
            return self._finish_goal(goal_handle, result, "BAD_QUERY", problem)
        try:
            frame_id, t_target_map = self._results_frame(goal.target_frame)
        except TransformUnavailableError as exc:
            return self._finish_goal(goal_handle, result, "TRANSFORM_FAILED", str(exc))
        result.header = self._header(frame_id)
        parsed = parse_question(goal.question) if mode != "lmm" else None
        if parsed is None:
            if mode == "geometry":
                _duration(time.perf_counter() - t0, result.query_time)
                return self._finish_goal(
                    goal_handle, result, "UNSUPPORTED_QUESTION",
                    "not a spatial question (where, left/right, front/behind, above/below, "
                    "on, next to, between, how far, which is bigger, how big, how many)",
                )  # fmt: skip
            return self._ask_lmm(goal_handle, goal, result, t0, t_target_map)
        goal_handle.publish_feedback(Ask.Feedback(stage="grounding", partial_answer=""))
        code, answer, message = pipe.ask_spatial(
            parsed, self._viewpoint(), cancel=lambda: goal_handle.is_cancel_requested
        )
        result.answered_by = Ask.Result.ANSWERED_BY_GEOMETRY
        if answer is not None:
            result.answer = answer.text
            result.objects = self._to_msgs(answer.objects, t_target_map)
        elapsed = time.perf_counter() - t0
        _duration(elapsed, result.query_time)
        self._latencies["ask"].append(elapsed)
        goal_handle.publish_feedback(Ask.Feedback(stage="done", partial_answer=result.answer))
        return self._finish_goal(goal_handle, result, _ERROR_NAMES[code], message)

    def _ask_lmm(
        self, goal_handle: Any, goal: Any, result: Any, t0: float, t_target_map: Any
    ) -> Any:
        """An open question streamed from the language model: feedback carries the
        answer so far; cancel stops generation between tokens."""
        pipe = self.pipeline
        assert pipe is not None
        partial: list[str] = []

        def on_text(delta: str) -> None:
            partial.append(delta)
            goal_handle.publish_feedback(
                Ask.Feedback(stage="generating", partial_answer="".join(partial))
            )

        goal_handle.publish_feedback(Ask.Feedback(stage="prefill", partial_answer=""))
        out = pipe.ask_open(
            goal.question,
            max_new_tokens=int(goal.max_new_tokens),
            temperature=float(goal.temperature),
            top_p=float(goal.top_p),
            on_text=on_text,
            cancel=lambda: goal_handle.is_cancel_requested,
        )
        result.answer = out.text
        result.answered_by = Ask.Result.ANSWERED_BY_LMM
        result.generated_tokens = out.num_tokens
        result.objects = self._to_msgs(out.boxes, t_target_map)
        elapsed = time.perf_counter() - t0
        _duration(elapsed, result.query_time)
        self._latencies["ask"].append(elapsed)
        return self._finish_goal(goal_handle, result, _ERROR_NAMES[out.code], out.message)

    def _execute_describe(self, goal_handle: Any) -> Describe.Result:
        t0 = time.perf_counter()
        goal = goal_handle.request
        result = Describe.Result()
        problem = self._not_ready()
        if problem:
            return self._finish_goal(goal_handle, result, "NOT_ACTIVE", problem)
        pipe = self.pipeline
        assert pipe is not None
        p = goal.center.position
        size = np.array([goal.size.x, goal.size.y, goal.size.z])
        point = np.array([p.x, p.y, p.z])
        if not (np.all(np.isfinite(point)) and np.all(np.isfinite(size)) and np.all(size >= 0)):
            return self._finish_goal(
                goal_handle, result, "BAD_QUERY", "center must be finite and size >= 0"
            )
        map_frame = self._param("map_frame")
        source = goal.header.frame_id or map_frame
        try:
            if source != map_frame:
                assert self._tf is not None
                point = transform_points(self._tf.lookup(map_frame, source, 0), point[None])[0]
        except TransformUnavailableError as exc:
            return self._finish_goal(goal_handle, result, "TRANSFORM_FAILED", str(exc))
        result.header = self._header(map_frame)
        goal_handle.publish_feedback(Describe.Feedback(stage="describing", partial_caption=""))
        if pipe.lmm is not None:
            from llava3d_ros.core.lmm.generate import DEFAULT_DESCRIBE_QUESTION

            out = pipe.ask_open(
                DEFAULT_DESCRIBE_QUESTION,
                location=point,
                max_new_tokens=int(goal.max_new_tokens),
                cancel=lambda: goal_handle.is_cancel_requested,
            )
            result.caption = out.text
            result.answered_by = Describe.Result.ANSWERED_BY_LMM
            result.objects = self._to_msgs(out.boxes, None)
            _duration(time.perf_counter() - t0, result.query_time)
            return self._finish_goal(goal_handle, result, _ERROR_NAMES[out.code], out.message)
        code, caption, boxes = pipe.describe_region(point, size)
        result.caption = caption
        result.answered_by = Describe.Result.ANSWERED_BY_GEOMETRY
        result.objects = self._to_msgs(boxes, None)
        elapsed = time.perf_counter() - t0
        _duration(elapsed, result.query_time)
        self._latencies["describe"].append(elapsed)
        return self._finish_goal(
            goal_handle, result, _ERROR_NAMES[code], "" if code == pl.OK else caption
        )

    # ------------------------------------------------------------------ services

    def _default_snapshot(self) -> str:
        path = self._param("snapshot_path")
        if path:
            return path
        home = os.environ.get("ROS_HOME", str(Path.home() / ".ros"))
        return str(Path(home) / "llava3d" / "memory.safetensors")

    def _on_save(
        self, request: SaveMemory.Request, response: SaveMemory.Response
    ) -> SaveMemory.Response:
        if self.pipeline is None:
            response.success, response.message = False, "the node is not configured"
            return response
        path = request.path or self._default_snapshot()
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            response.bytes = int(self.pipeline.save(path))
        except (OSError, ValueError, RuntimeError) as exc:
            response.success, response.message = False, f"save failed: {exc}"
            return response
        response.success, response.path = True, path
        response.num_voxels = len(self.pipeline.memory)
        response.message = f"saved {response.num_voxels} voxels"
        return response

    def _on_load(
        self, request: LoadMemory.Request, response: LoadMemory.Response
    ) -> LoadMemory.Response:
        if self.pipeline is None:
            response.success, response.message = False, "the node is not configured"
            return response
        path = request.path or self._default_snapshot()
        try:
            response.num_voxels = self.pipeline.load(path)
        except Exception as exc:  # any failure keeps the current memory
            response.success = False
            response.message = f"load failed, memory unchanged: {exc}"
            response.num_voxels = len(self.pipeline.memory)
            return response
        response.success, response.message = True, f"loaded {response.num_voxels} voxels"
        return response

    def _on_clear(
        self, _request: ClearMemory.Request, response: ClearMemory.Response
    ) -> ClearMemory.Response:
        if self.pipeline is None:
            response.success, response.message = False, "the node is not configured"
            return response
        response.cleared_voxels = self.pipeline.clear()
        self._last_scores = None
        response.success, response.message = True, f"cleared {response.cleared_voxels} voxels"
        return response

    # ------------------------------------------------------------------ outputs

    def _rate(self, times: collections.deque[float], window: float = 5.0) -> float:
        now = time.monotonic()
        recent = [t for t in times if now - t <= window]
        return len(recent) / window

    def stats_msg(self) -> MemoryStats:
        msg = MemoryStats()
        msg.header = self._header(self._param("map_frame"))
        pipe = self.pipeline
        if pipe is None:
            return msg
        st = pipe.memory.stats()
        msg.num_voxels, msg.max_voxels = st.num_voxels, st.max_voxels
        msg.voxel_size = float(st.voxel_size)
        msg.feature_dim = int(sum(st.feature_dims.values()))
        msg.encoder = str(pipe.config.encoder.get("backend", ""))
        msg.memory_bytes = int(st.memory_bytes)
        msg.frames_received = int(self._counters["color_received"])
        msg.keyframes_integrated = int(st.frames_integrated)
        msg.voxels_evicted = int(st.voxels_evicted)
        self._drops_from_sync()
        drops = {k: v for k, v in sorted(self._drops.items()) if v}
        msg.drop_reasons = list(drops)
        msg.drop_counts = [int(v) for v in drops.values()]
        bounds = pipe.memory.bounds()
        if bounds is not None:
            lo, hi = (b.cpu().numpy().astype(float) for b in bounds)
            msg.bounds_min.x, msg.bounds_min.y, msg.bounds_min.z = lo
            msg.bounds_max.x, msg.bounds_max.y, msg.bounds_max.z = hi
        return msg

    def _publish_stats(self) -> None:
        stats = self.stats_msg()
        self._outputs["stats"].publish(stats)
        status = DiagnosticStatus(name="llava3d: memory", hardware_id="llava3d")
        input_rate = self._rate(self._input_times)
        tf_drops = sum(v for k, v in self._drops.items() if k.startswith("tf_"))
        def p50_ms(kind: str) -> str:
            times = self._latencies[kind]
            return f"{1e3 * float(np.median(times)) if times else 0.0:.1f}"

        values = {
            "input_rate_hz": f"{input_rate:.2f}",
            "keyframe_rate_hz": f"{self._rate(self._keyframe_times):.2f}",
            "tf_drops": str(tf_drops),
            "total_drops": str(sum(self._drops.values())),
            "ground_latency_p50_ms": p50_ms("ground"),
            "keyframe_latency_p50_ms": p50_ms("keyframe"),
            **{f"keyframe_{s}_p50_ms": p50_ms(s) for s in _KEYFRAME_STAGES},
            "memory_voxels": str(stats.num_voxels),
            "pending_tf_frames": str(len(self._pending)),
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        if not self._active:
            status.level, status.message = DiagnosticStatus.WARN, "inactive"
        elif input_rate == 0.0:
            status.level, status.message = DiagnosticStatus.WARN, "no colour images for 5 s"
        else:
            status.level, status.message = DiagnosticStatus.OK, "integrating"
        array = DiagnosticArray(header=self._header(""), status=[status])
        self._outputs["diagnostics"].publish(array)

    def _publish_markers(self, boxes: list[Box3D], query: str) -> None:
        pub = self._outputs.get("markers")
        if pub is None:
            return
        header = self._header(self._param("map_frame"))
        markers = [Marker(header=header, action=Marker.DELETEALL)]
        for i, box in enumerate(boxes):
            q = yaw_quaternion(box.yaw)
            cube = Marker(header=header, ns="boxes", id=i, type=Marker.CUBE, action=Marker.ADD)
            cube.pose.position.x, cube.pose.position.y, cube.pose.position.z = map(
                float, box.center
            )
            (cube.pose.orientation.x, cube.pose.orientation.y, cube.pose.orientation.z,
             cube.pose.orientation.w) = map(float, q)  # fmt: skip
            cube.scale.x, cube.scale.y, cube.scale.z = (max(float(v), 0.01) for v in box.size)
            cube.color.r, cube.color.g, cube.color.b, cube.color.a = 0.1, 0.9, 0.2, 0.35
            text = Marker(header=header, ns="labels", id=i, type=Marker.TEXT_VIEW_FACING)
            text.pose.position.x, text.pose.position.y = float(box.center[0]), float(box.center[1])
            text.pose.position.z = float(box.center[2] + box.size[2] / 2 + 0.08)
            text.scale.z = 0.08
            text.color.r = text.color.g = text.color.b = text.color.a = 1.0
            text.text = f"{query} {box.score:.2f}"
            markers += [cube, text]
        pub.publish(MarkerArray(markers=markers))

    def _publish_cloud(self) -> None:
        pipe = self.pipeline
        pub = self._outputs.get("cloud")
        if pipe is None or pub is None or len(pipe.memory) == 0:
            return
        kind = GROUND if GROUND in pipe.memory.feature_dims else VISION
        view = pipe.memory.snapshot_view([kind])
        points = view.centroids.float().cpu().numpy()
        feats = view.features[kind].float()
        limit = self._param("cloud_max_points")
        if len(points) > limit:
            keep = np.linspace(0, len(points) - 1, limit).astype(np.int64)
            points, feats = points[keep], feats[keep]
        colors = pca_colors(feats.cpu().numpy())
        pub.publish(make_cloud(self._header(self._param("map_frame")), points, colors))


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_quaternion(yaw: float) -> np.ndarray:
    return quaternion_from_rotation_matrix(yaw_matrix(yaw))


def pca_colors(features: np.ndarray, max_sample: int = 2048) -> np.ndarray:
    """(N, C) features -> (N, 3) uint8: the top 3 principal components as RGB, so voxels
    with similar features share a colour (what RViz users read as "same stuff").

    The components come from the C x C covariance of at most ``max_sample`` evenly spaced
    rows (an SVD of every row took seconds at 384 channels and kept a core busy), with
    signs fixed so the largest loading is positive: colours stay put between messages."""
    x = features.astype(np.float32, copy=False)
    x = x[:, np.all(np.isfinite(x), axis=0)] if x.size else x
    if len(x) < 3 or x.shape[1] < 3:
        return np.full((len(features), 3), 200, np.uint8)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    sample = (x[:: max(1, len(x) // max_sample)] - mean).astype(np.float64)
    _, vectors = np.linalg.eigh(sample.T @ sample)
    comps = vectors[:, ::-1][:, :3]
    comps *= np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(3)])
    comps32 = comps.astype(np.float32)
    proj = x @ comps32 - mean @ comps32
    lo, hi = np.percentile(proj, 2, axis=0), np.percentile(proj, 98, axis=0)
    return (np.clip((proj - lo) / np.maximum(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def make_cloud(header: Header, points: np.ndarray, colors: np.ndarray) -> PointCloud2:
    """x, y, z float32 + rgb packed in a float32, the layout RViz colours by."""
    n = len(points)
    c = colors.astype(np.uint32)
    rgb = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    data = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    data["x"], data["y"], data["z"] = points[:, 0], points[:, 1], points[:, 2]
    data["rgb"] = rgb
    fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
        PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
    ]
    return PointCloud2(
        header=header, height=1, width=n, fields=fields, is_bigendian=False,
        point_step=16, row_step=16 * n, data=data.tobytes(), is_dense=True,
    )  # fmt: skip


def main(args: list[str] | None = None, executor_threads: int = 8) -> int:
    """Console entry ``llava3d_node`` (and ``llava3d-ros up``): ROS arguments as usual,
    e.g. ``--ros-args --params-file config/llava3d.yaml -r __ns:=/robot1``."""
    rclpy.init(args=args)
    node = Llava3DNode()
    executor = MultiThreadedExecutor(num_threads=executor_threads)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
