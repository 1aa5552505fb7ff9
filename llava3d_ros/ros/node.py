"""The llava3d lifecycle node: wiring only.

The parts live in their own modules (the nvblox_ros / llama_ros layout), each usable
and tested without DDS:

- ``params``: the parameter table, derived from the configuration dataclasses;
- ``sensors``: the internal sensor node and its executor thread (images, camera info,
  /tf, /clock) and the clock routing;
- ``ingest``: the ingest worker (sync, TF wait, keyframes, drops);
- ``queries``: the ground/ask/describe action servers, admission and the goal runner;
- ``memory_services``: save/load/clear;
- ``telemetry``: locked counters -> ``~/memory_stats`` and ``/diagnostics``;
- ``visualisation``: markers and the memory cloud;
- ``objects``: the object list (``~/objects``) and its markers.

Lifecycle: configure loads the models and creates the servers; activate subscribes and
starts ingest; deactivate stops ingest (queries then answer NOT_ACTIVE); cleanup frees the
models. With ``autostart`` (default true) the node configures and activates itself.
Parameters may be set while unconfigured and take effect on the next configure.

Threads: sensor callbacks on the sensor executor; the encoder on the ingest worker
thread; actions, services and the stats/cloud timers on the node's multi-threaded
executor (queries in a reentrant group, services and stats in one mutually exclusive
group, the slow cloud in its own). Timers run on the steady clock so reporting goes on
when a bag's /clock pauses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from llava3d_interfaces.msg import MemoryStats, ObjectList
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.encoders import create_encoders
from llava3d_ros.core.encoders.base import EncoderError
from llava3d_ros.core.heap import GcPauses, release_freed_memory, trim_heap
from llava3d_ros.core.snapshots import SnapshotDirectory
from llava3d_ros.ros import params as P
from llava3d_ros.ros.ingest import IngestConfig, IngestWorker
from llava3d_ros.ros.memory_services import MemoryServices
from llava3d_ros.ros.objects import object_list_msg, object_markers
from llava3d_ros.ros.queries import QueryServer
from llava3d_ros.ros.sensors import SensorHub
from llava3d_ros.ros.sync import RgbdSynchronizer
from llava3d_ros.ros.telemetry import Telemetry, diagnostics_msg, memory_stats_msg
from llava3d_ros.ros.tf_source import TfSource
from llava3d_ros.ros.visualisation import Visualiser


def _logged_transition(fn: Callable[[Any, LifecycleState], TransitionCallbackReturn]) -> Any:
    """rclpy turns an exception in a transition callback into ERROR without a word;
    log it so a failed activation says why."""

    def wrapper(self: Llava3DNode, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return fn(self, state)
        except Exception as exc:
            self.get_logger().error(f"{fn.__name__} failed: {exc!r}")
            raise

    wrapper.__name__ = fn.__name__
    return wrapper


class Llava3DNode(LifecycleNode):
    def __init__(self, node_name: str = "llava3d", **kwargs: Any):
        super().__init__(node_name, **kwargs)
        for spec in P.NODE_PARAMS:
            self._declare(spec)
        self.telemetry = Telemetry()  # lives as long as the node: counters never go back
        self._gc_pauses = GcPauses()  # collector stalls, for /diagnostics
        self._gc_pauses.install()
        self.settings: P.NodeSettings | None = None
        self.pipeline: pl.ScenePipeline | None = None
        self._configured = False
        self._active = False
        self._tf: TfSource | None = None
        self._ingest: IngestWorker | None = None
        self._queries: QueryServer | None = None
        self._memory_services: MemoryServices | None = None
        self._visualiser: Visualiser | None = None
        self._stats_pub: Any = None
        self._diag_pub: Any = None
        self._objects_pub: Any = None
        self._object_markers_pub: Any = None
        self._autosave_timer: Any = None
        self._ingest_timers: list[Any] = []
        self.sensors = SensorHub(self, f"{node_name}_sensors")
        self._query_group = ReentrantCallbackGroup()
        self._io_group = MutuallyExclusiveCallbackGroup()
        self._cloud_group = MutuallyExclusiveCallbackGroup()  # slow: keep it off stats
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self.get_parameter("autostart").value:
            # Run the transitions from the executor once spinning starts, as a launch
            # file's lifecycle manager would, so constructor errors stay separate.
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    def destroy_node(self) -> None:
        self._stop_ingest()
        self._teardown()
        self._gc_pauses.uninstall()
        self.sensors.destroy()
        super().destroy_node()

    # ------------------------------------------------------------------ parameters

    def _declare(self, spec: P.ParamSpec) -> None:
        desc = ParameterDescriptor(description=spec.description)
        default = P.to_ros_value(spec.default)
        if spec.choices:
            desc.additional_constraints = "one of: " + ", ".join(spec.choices)
        bounds = spec.bounds
        if bounds is not None and isinstance(default, float):
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(bounds[0]), to_value=float(bounds[1]))
            ]
        elif bounds is not None and isinstance(default, int) and not isinstance(default, bool):
            desc.integer_range = [
                IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]), step=1)
            ]
        self.declare_parameter(spec.name, default, desc)
        if spec.choices:
            value = self.get_parameter(spec.name).value
            if value not in spec.choices:
                raise ValueError(
                    f"parameter {spec.name}={value!r} is not one of {', '.join(spec.choices)}"
                )

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == "use_sim_time":
                if param.type_ == Parameter.Type.BOOL:
                    self.sensors.set_use_sim_time(bool(param.value))
                continue
            if self._configured:
                return SetParametersResult(
                    successful=False,
                    reason=f"{param.name}: parameters can be set only while the node is "
                    "unconfigured (cleanup, set, configure)",
                )
        return SetParametersResult(successful=True)

    def _values(self) -> dict[str, Any]:
        return {n: self.get_parameter(n).value for n in self._parameters if n != "use_sim_time"}

    def _encoder_config(self, backend: str) -> dict[str, Any]:
        values = {}
        for key, default in P.encoder_option_defaults(backend).items():
            name = f"encoder.{key}"
            if not self.has_parameter(name):
                self.declare_parameter(
                    name,
                    P.to_ros_value(default),
                    ParameterDescriptor(description=f"{backend} option {key}"),
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
        try:
            settings = P.node_settings_from_params(self._values())
            if settings.ingest.torch_threads > 0:
                import torch

                torch.set_num_threads(settings.ingest.torch_threads)
            encoder_config = self._encoder_config(settings.encoder.backend)
            config = P.pipeline_config_from_params(self._values(), encoder_config)
            plan, encoder_config, config, settings = P.apply_device_plan(
                settings.compute.device, encoder_config, config, settings
            )
            self.get_logger().info(plan.summary())
            self.get_logger().info(f"loading encoder {encoder_config}")
            bundle = create_encoders(encoder_config)
            lmm = self._load_lmm(settings, config)
            view = self._load_view(settings, bundle)
            pipe = pl.ScenePipeline(config, bundle, lmm, view)
        except (EncoderError, ValueError, OSError, RuntimeError, KeyError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.settings, self.pipeline = settings, pipe
        self.get_logger().info(
            f"configured in {time.monotonic() - t0:.1f} s: encoder "
            f"{encoder_config['backend']} {pipe.bundle.image.feature_dims}, grounding "
            f"{'on' if pipe.grounder else 'off (no text-aligned features)'}, memory on "
            f"{pipe.memory.device}"
        )
        inputs = settings.inputs
        self._stats_pub = self.create_lifecycle_publisher(MemoryStats, "~/memory_stats", 10)
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
        self._objects_pub = self.create_lifecycle_publisher(ObjectList, "~/objects", 2)
        self._object_markers_pub = self.create_lifecycle_publisher(
            MarkerArray, "~/object_markers", 2
        )
        self._visualiser = Visualiser(self, settings.outputs.cloud_max_points)
        self._tf = TfSource(self.sensors.node, cache_s=settings.tf.cache_s)
        visualiser = self._visualiser
        self._queries = QueryServer(
            self,
            pipe,
            self.telemetry,
            self._tf,
            map_frame=inputs.map_frame,
            robot_frame=inputs.robot_frame,
            max_concurrent=settings.admission.max_concurrent,
            goal_queue_depth=settings.admission.goal_queue_depth,
            callback_group=self._query_group,
            is_active=lambda: self._active,
            on_grounded=visualiser.publish_grounding,
        )
        self._memory_services = MemoryServices(
            self, pipe, SnapshotDirectory(settings.snapshot.dir or None), self._io_group
        )
        self._load_on_configure(settings.snapshot.load_on_configure)
        self._autosave_timer = None
        if settings.snapshot.autosave_period_s > 0:
            self._autosave_timer = self.create_timer(
                settings.snapshot.autosave_period_s, self._autosave, self._io_group, self._steady
            )
        self._configured = True
        return TransitionCallbackReturn.SUCCESS

    def _load_on_configure(self, name: str) -> None:
        if not name or self._memory_services is None:
            return
        services = self._memory_services
        try:
            voxels = services.load_named(name)
        except Exception as exc:  # a missing autosave is normal on the first start
            self.get_logger().warning(f"snapshot {name!r} not loaded, starting empty: {exc}")
            return
        self.get_logger().info(
            f"loaded snapshot {name!r} from {services.directory.root}: {voxels} voxels"
        )

    def _autosave(self) -> None:
        if self._active and self._memory_services is not None:
            self._memory_services.autosave()

    def _load_lmm(self, settings: P.NodeSettings, config: pl.PipelineConfig) -> Any:
        lmm = settings.lmm
        if not lmm.checkpoint:
            return None
        from llava3d_ros.core.lmm import Llava3DChat

        self.get_logger().info(f"loading LLaVA-3D language model from {lmm.checkpoint}")
        return Llava3DChat.load(
            lmm.checkpoint,
            device=None if lmm.device == "auto" else lmm.device,
            dtype=None if lmm.dtype == "auto" else lmm.dtype,
            max_scene_tokens=config.lmm.max_scene_tokens,
            template=lmm.template,
        )

    def _load_view(self, settings: P.NodeSettings, bundle: Any) -> Any:
        view = settings.view
        if not view.checkpoint:
            return None
        from llava3d_ros.core.lmm import ViewAnswerer

        self.get_logger().info(f"loading the view model (LLaVA-1.5 family) from {view.checkpoint}")
        answerer = ViewAnswerer.load(
            view.checkpoint,
            vision_tower=view.vision_tower,
            shared_tower=bundle.image if view.share_vision_tower else None,
            device=None if view.device == "auto" else view.device,
            dtype=None if view.dtype == "auto" else view.dtype,
            template=view.template,
        )
        shared = "shared with the memory" if answerer.shared else "its own"
        self.get_logger().info(f"view model ready; vision tower: {shared}")
        return answerer

    @_logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.settings is not None and self.pipeline is not None and self._tf is not None
        s = self.settings
        qos = QoSProfile(
            depth=s.inputs.qos_depth,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.BEST_EFFORT
            if s.inputs.qos_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        sync: RgbdSynchronizer[Any, Any, Any] = RgbdSynchronizer(
            slop_ns=int(s.sync.slop_s * 1e9), queue_size=s.sync.queue_size
        )
        clock = self.get_clock()  # follows /clock under use_sim_time (reads 0 before it)
        self._ingest = IngestWorker(
            self.pipeline,
            self._tf,
            sync,
            self.telemetry,
            IngestConfig(
                map_frame=s.inputs.map_frame,
                robot_frame=s.inputs.robot_frame,
                camera_frame=s.inputs.camera_frame,
                tf_timeout_s=s.tf.timeout_s,
                period_s=s.ingest.period_s,
                backlog=2 * s.sync.queue_size,
                max_clock_skew_s=s.sync.max_clock_skew_s,
                max_stamp_age_s=s.sync.max_stamp_age_s,
                max_translation_m=s.tf.max_translation_m,
                max_lag_s=s.ingest.max_lag_s,
            ),
            self.get_logger(),
            now_ns=lambda: clock.now().nanoseconds,
        )
        ingest = self._ingest
        self.sensors.subscribe(Image, s.inputs.color_topic, ingest.on_color, qos)
        self.sensors.subscribe(Image, s.inputs.depth_topic, ingest.on_depth, qos)
        self.sensors.subscribe(CameraInfo, s.inputs.camera_info_topic, ingest.on_camera_info, qos)
        ingest.start()
        self.pipeline.start()
        out = s.outputs
        self._ingest_timers = [
            self.create_timer(out.stats_period_s, self._publish_stats, self._io_group, self._steady)
        ]
        if s.ingest.heap_trim_period_s > 0:
            self._ingest_timers.append(
                self.create_timer(
                    s.ingest.heap_trim_period_s, trim_heap, self._io_group, self._steady
                )
            )
        if out.cloud_period_s > 0:
            self._ingest_timers.append(
                self.create_timer(
                    out.cloud_period_s, self._publish_cloud, self._cloud_group, self._steady
                )
            )
        if out.objects_period_s > 0 and self.pipeline.objects is not None:
            self._ingest_timers.append(
                self.create_timer(
                    out.objects_period_s, self._publish_objects, self._cloud_group, self._steady
                )
            )
        self._active = True
        self.get_logger().info(
            f"active: {s.inputs.color_topic} + {s.inputs.depth_topic} -> memory in "
            f"{s.inputs.map_frame} (TF via {self._tf.backend})"
        )
        return super().on_activate(state)

    @_logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_ingest()
        return super().on_deactivate(state)

    @_logged_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_ingest()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _stop_ingest(self) -> None:
        self._active = False
        self.sensors.unsubscribe_all()
        for timer in self._ingest_timers:
            self.destroy_timer(timer)
        self._ingest_timers = []
        if self._ingest is not None:
            self._ingest.stop()
            self._ingest = None
        if self.pipeline is not None:
            self.pipeline.stop()

    def _teardown(self) -> None:
        if self._autosave_timer is not None:
            self.destroy_timer(self._autosave_timer)
            self._autosave_timer = None
        for part in (self._queries, self._memory_services, self._visualiser, self._tf):
            if part is not None:
                part.destroy()
        for pub in (self._stats_pub, self._diag_pub, self._objects_pub, self._object_markers_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._queries = self._memory_services = self._visualiser = self._tf = None
        self._stats_pub = self._diag_pub = self._objects_pub = self._object_markers_pub = None
        self.pipeline, self.settings = None, None
        self._configured = False
        # Free the models and maps now, not at interpreter exit (open3d checks at exit that
        # its device memory was released), and do not keep the old configuration's peak.
        release_freed_memory()

    # ------------------------------------------------------------------ outputs

    def _header(self, frame_id: str) -> Header:
        return Header(frame_id=frame_id, stamp=self.get_clock().now().to_msg())

    def stats_msg(self) -> MemoryStats:
        pipe, settings = self.pipeline, self.settings
        map_frame = settings.inputs.map_frame if settings else ""
        memory = pipe.memory if pipe is not None else None
        encoder = str(pipe.config.encoder.get("backend", "")) if pipe is not None else ""
        counts = (0, 0)
        if pipe is not None and pipe.objects is not None:
            o = pipe.objects.stats()
            counts = (int(o["objects"]), int(o["furniture"]))
        return memory_stats_msg(
            self._header(map_frame), self.telemetry.snapshot(), memory, encoder, counts
        )

    def _publish_stats(self) -> None:
        if self._stats_pub is None or self._diag_pub is None:
            return
        stats = self.stats_msg()
        self._stats_pub.publish(stats)
        pending = self._ingest.pending_tf_frames if self._ingest is not None else 0
        extra: dict[str, str] = self._gc_pauses.values()
        objects = self.pipeline.objects if self.pipeline is not None else None
        if objects is not None:
            o = objects.stats()
            extra |= {
                "objects": str(o["objects"]),
                "furniture": str(o["furniture"]),
                "object_updates": str(o["updates"]),
                "object_update_p50_ms": f"{o['update_p50_ms']:.1f}",
                "object_update_errors": str(objects.errors),
                "tsdf_blocks": str(o["tsdf_blocks"]),
            }
        self._diag_pub.publish(
            diagnostics_msg(
                self._header(""),
                self.telemetry.snapshot(),
                self._active,
                int(stats.num_voxels),
                pending,
                extra,
            )
        )

    def _publish_objects(self) -> None:
        pipe, settings = self.pipeline, self.settings
        if pipe is None or pipe.objects is None or settings is None or self._objects_pub is None:
            return
        objects = pipe.objects
        if objects.errors and objects.last_error:
            self.get_logger().error(
                f"object layer update failed ({objects.errors} so far): {objects.last_error}",
                throttle_duration_sec=10.0,
            )
        snap = objects.snapshot()
        header = self._header(settings.inputs.map_frame)
        pending = objects.crops.pending if objects.crops is not None else 0
        self._objects_pub.publish(object_list_msg(header, snap, pending))
        self._object_markers_pub.publish(object_markers(header, snap))

    def _publish_cloud(self) -> None:
        pipe, vis, settings = self.pipeline, self._visualiser, self.settings
        if pipe is None or vis is None or settings is None:
            return
        vis.publish_memory_cloud(self._header(settings.inputs.map_frame), pipe.memory)


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
