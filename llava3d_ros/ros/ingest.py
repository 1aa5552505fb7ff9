"""The ingest worker (the nvblox pattern): subscription callbacks only enqueue; a plain
worker thread pairs colour and depth, waits (without blocking) for the transform at the
image stamp, selects keyframes, converts the images and hands them to the pipeline.
Every frame that is not integrated is counted by reason in the telemetry.

A plain thread, not an executor timer: a MultiThreadedExecutor busy-polls a timer that
is due while its callback group still runs (ros2/rclpy#1223), which a 20 ms drain timer
around a 100-300 ms encoder call always is. The worker sleeps on an event the image
callbacks set, or ``period_s`` to retry frames waiting for TF.

Input checks before anything is queued (one badly stamped image once stopped ingest
for good; see :mod:`llava3d_ros.ros.sync` for the queue rules):

- ``zero_stamp``: an image stamped 0 (unset). The TF buffer reads stamp 0 as "latest"
  and the keyframe policy sees time go backwards, so it would be placed at whatever
  pose came last;
- ``stamp_out_of_range``: an image stamped more than ``max_clock_skew_s`` ahead of the
  node clock (or ``max_stamp_age_s`` behind it, when set). The clock is ``now_ns``, the
  node's ROS clock (it follows /clock under use_sim_time); while it reads 0 (sim time
  before the first /clock message) the check is skipped rather than dropping everything.

And before a frame is integrated, its camera pose (``bad_pose``): finite, a proper
rotation (orthonormal within :data:`ROTATION_TOLERANCE`, det +1), translation within
``max_translation_m`` of the map origin. Before, a pose 1e9 m away counted as an
integrated keyframe while the memory rejected every point.

And one input watchdog (``check_inputs``, logged once): camera info keeps arriving but
no colour or depth image ever did. The usual cause is an image larger than the DDS
transport carries (Fast DDS's default shared-memory segment is 0.5 MB, a VGA RGB image
0.9 MB): such images are silently never delivered, so no drop counter can show them.

Live streams (``max_lag_s``, 0.5 s by default): a keyframe candidate is skipped as
``superseded`` (counted, not a drop: the keyframe policy's choice) when a frame stamped
more than ``max_lag_s`` after it, whose transform is already known, waits behind it. A
worker a frame or two behind catches up when the encoder has spare capacity; when
candidates keep coming faster than the encoder takes them (a fast camera at 30 Hz on a
small CPU), the memory lags the camera by at most ``max_lag_s`` and the backlog never
fills. Before, it filled to ``backlog`` frames, the worker integrated views 2 s old and
dropped the oldest as ``backlog_overflow`` (decision record 0008).

No rclpy here beyond message types, so the worker is unit-tested in-process: feed it
messages, call :meth:`IngestWorker.drain` and look at the pipeline and the telemetry.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.devices import (
    OUT_OF_MEMORY_HINT,
    is_out_of_memory,
    release_cached_memory,
)
from llava3d_ros.core.geometry import CameraIntrinsics, UnsupportedEncodingError, depth_to_meters
from llava3d_ros.ros.conversions import (
    ImageConversionError,
    depth_image_to_array,
    image_to_rgb,
    stamp_to_ns,
)
from llava3d_ros.ros.sync import RgbdSynchronizer, SyncedFrame
from llava3d_ros.ros.telemetry import KEYFRAME_STAGES, Telemetry
from llava3d_ros.ros.tf_buffer import TransformUnavailableError


class TransformLookup(Protocol):
    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray: ...


class Logger(Protocol):
    def warning(self, message: str, **kwargs: Any) -> Any: ...
    def error(self, message: str, **kwargs: Any) -> Any: ...


#: max |R^T R - I| of an acceptable camera rotation (TF interpolation gives ~1e-12).
ROTATION_TOLERANCE = 1e-3


def pose_problem(t: np.ndarray, max_translation_m: float) -> str | None:
    """Why a camera pose (4x4) cannot place a frame, or None."""
    m = np.asarray(t, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        return "camera pose is not a finite 4x4 matrix"
    rot = m[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=ROTATION_TOLERANCE, rtol=0.0) or not (
        np.linalg.det(rot) > 0.0
    ):
        return f"camera rotation is not a proper rotation: {rot.round(4).tolist()}"
    dist = float(np.linalg.norm(m[:3, 3]))
    if dist > max_translation_m:
        return f"camera is {dist:.3g} m from the map origin (limit {max_translation_m:g} m)"
    return None


@dataclass(frozen=True)
class IngestConfig:
    map_frame: str = "map"
    robot_frame: str = "base_link"
    camera_frame: str = ""  # "" = the colour image's header frame_id
    tf_timeout_s: float = 0.5
    period_s: float = 0.02
    backlog: int = 60  # frames waiting for TF or the encoder; the oldest is dropped beyond
    max_clock_skew_s: float = 5.0  # images stamped further ahead of now_ns (0 = off)
    max_stamp_age_s: float = 0.0  # images stamped further behind now_ns (0 = off)
    max_translation_m: float = 1e5  # camera poses further from the map origin: bad_pose
    no_images_warn_s: float = 5.0  # camera info this long without any image: warn once
    slow_keyframe_s: float = 0.5  # a keyframe this slow is logged with its stage times
    max_lag_s: float = 0.5  # skip a candidate this far behind a ready frame (0 = never)


class _PendingFrame:
    __slots__ = ("first_seen", "frame")

    def __init__(self, frame: SyncedFrame[Any, Any, Any], first_seen: float):
        self.frame = frame
        self.first_seen = first_seen


class IngestWorker:
    """Colour/depth/camera-info callbacks in, keyframes into ``pipeline`` out."""

    def __init__(
        self,
        pipeline: pl.ScenePipeline,
        tf: TransformLookup,
        sync: RgbdSynchronizer[Any, Any, Any],
        telemetry: Telemetry,
        config: IngestConfig,
        logger: Logger,
        clock: Callable[[], float] = time.monotonic,
        now_ns: Callable[[], int] | None = None,
    ) -> None:
        """``clock``: monotonic seconds for TF-wait timeouts; ``now_ns``: the node's ROS
        clock for the stamp range check (None: no check)."""
        self._pipeline: pl.ScenePipeline | None = pipeline
        self._tf: TransformLookup | None = tf
        self.sync = sync
        self.telemetry = telemetry
        self.config = config
        self.logger = logger
        self._clock = clock
        self._now_ns = now_ns
        self._pending: collections.deque[_PendingFrame] = collections.deque()
        self._pending_lock = threading.Lock()
        self._intrinsics_cache: tuple[Any, CameraIntrinsics] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopped = False
        self._wake = threading.Event()
        # Input watchdog: when camera info first came, images seen per stream, warned yet.
        self._first_info: float | None = None
        self._images_seen = {"colour": 0, "depth": 0}
        self._warned_no_images = False

    @property
    def pipeline(self) -> pl.ScenePipeline:
        if self._pipeline is None:
            raise RuntimeError("ingest worker already stopped")
        return self._pipeline

    @property
    def tf(self) -> TransformLookup:
        if self._tf is None:
            raise RuntimeError("ingest worker already stopped")
        return self._tf

    # ------------------------------------------------------------------ callbacks
    def on_color(self, msg: Any) -> None:
        if self._stopped:  # a late message on a destroyed subscription
            return
        self.telemetry.input_frame("color")
        self._images_seen["colour"] += 1
        stamp = stamp_to_ns(msg.header.stamp)
        if self._stamp_ok(stamp, "colour"):
            self.sync.add_color(stamp, msg)
            self._wake.set()

    def on_depth(self, msg: Any) -> None:
        if self._stopped:
            return
        self.telemetry.input_frame("depth")
        self._images_seen["depth"] += 1
        stamp = stamp_to_ns(msg.header.stamp)
        if self._stamp_ok(stamp, "depth"):
            self.sync.add_depth(stamp, msg)
            self._wake.set()

    def _stamp_ok(self, stamp_ns: int, stream: str) -> bool:
        """False (and the drop counted) for an image that must not reach the queues."""
        if stamp_ns == 0:
            self._drop("zero_stamp", f"{stream} image stamped 0 (header stamp not set)")
            return False
        if self._now_ns is None:
            return True
        ahead_s, behind_s = self.config.max_clock_skew_s, self.config.max_stamp_age_s
        if ahead_s <= 0 and behind_s <= 0:
            return True
        now = self._now_ns()
        if now <= 0:  # sim time before the first /clock message: nothing to compare with
            return True
        offset_s = (stamp_ns - now) * 1e-9
        if (ahead_s > 0 and offset_s > ahead_s) or (behind_s > 0 and -offset_s > behind_s):
            self._drop(
                "stamp_out_of_range",
                f"{stream} image stamped {offset_s:+.3f} s from the node clock "
                f"(sync.max_clock_skew_s {ahead_s:g}, sync.max_stamp_age_s {behind_s:g})",
            )
            return False
        return True

    def on_camera_info(self, msg: Any) -> None:
        if self._first_info is None:
            self._first_info = self._clock()
        self.sync.add_camera_info(msg)

    def check_inputs(self) -> bool:
        """Warn once when camera info has arrived for ``no_images_warn_s`` but a colour
        or depth image never did; True when it warned now."""
        first = self._first_info
        if self._warned_no_images or first is None:
            return False
        if self._clock() - first < self.config.no_images_warn_s:
            return False
        missing = [k for k, n in self._images_seen.items() if n == 0]
        if not missing:
            self._warned_no_images = True  # both streams arrived: nothing to watch
            return False
        self._warned_no_images = True
        self.logger.warning(
            f"camera info has arrived for {self.config.no_images_warn_s:g} s but no "
            f"{' or '.join(missing)} image ever did. Check the topic names and QoS; an image "
            "larger than the DDS transport carries is silently never delivered (Fast DDS's "
            "default shared-memory segment is 0.5 MB, a VGA RGB image 0.9 MB): set "
            "FASTRTPS_DEFAULT_PROFILES_FILE to config/fastdds_localhost.xml (one computer) "
            "or config/fastdds_large_images.xml"
        )
        return True

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        if self._stopped:
            raise RuntimeError("a stopped ingest worker cannot be restarted; make a new one")
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llava3d_ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker (waits for at most the keyframe being encoded), forget the
        frames still waiting and let go of the pipeline and TF; a stopped worker is not
        started again (the node makes a new one per activation).

        Why let go: rclpy's executor keeps the entities of its last wait, among them a
        destroyed subscription and so this worker's bound callbacks, until it next
        wakes. Holding the pipeline kept the previous configuration's models and memory
        alive through the next configure (two pipelines' RSS after cleanup/configure)."""
        self._stopped = True
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._pending_lock:
            self._pending.clear()
        self.sync.reset()
        self.telemetry.add_drops(self.sync.take_drops())
        # Released here so that the node's cleanup frees the model and memory.
        self._pipeline = None
        self._tf = None
        self._intrinsics_cache = None

    @property
    def pending_tf_frames(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def _loop(self) -> None:
        period = self.config.period_s
        while not self._stop.is_set():
            self._wake.wait(period)
            self._wake.clear()
            try:
                self.check_inputs()
                while not self._stop.is_set() and self.drain():
                    pass
            except Exception as exc:  # keep ingesting; a bug must not stop the memory
                self.telemetry.drop("internal_error")
                self.logger.error(
                    f"ingest failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0
                )

    # ------------------------------------------------------------------ one step

    def drain(self) -> bool:
        """Move synchronised frames to the TF-wait queue and integrate what is ready, at
        most one keyframe per call so a stop request waits for one encoder call at most.
        True when a keyframe was integrated (more may be ready)."""
        cfg = self.config
        now = self._clock()
        with self._pending_lock:
            for frame in self.sync.pop_frames():
                self.telemetry.count("frames_synced")
                self._pending.append(_PendingFrame(frame, now))
                if len(self._pending) > cfg.backlog:  # encoding can't keep up: drop oldest
                    self._pending.popleft()
                    self.telemetry.drop("backlog_overflow")
            pending, self._pending = self._pending, collections.deque()
        self.telemetry.add_drops(self.sync.take_drops())
        # Oldest first; a frame waiting for TF blocks nothing behind it.
        still_waiting: collections.deque[_PendingFrame] = collections.deque()
        integrated = False
        max_lag_ns = int(cfg.max_lag_s * 1e9)
        # Stamp of the newest waiting frame if it could be integrated now: looked up once,
        # when the first candidate with frames behind it is reached (never when off).
        newest_stamp: int | None = None
        looked_up = max_lag_ns <= 0
        while pending:
            item = pending.popleft()
            frame = item.frame
            camera_frame = cfg.camera_frame or frame.color.header.frame_id
            try:
                t_map_cam = self.tf.lookup(cfg.map_frame, camera_frame, frame.stamp_ns)
            except TransformUnavailableError as exc:
                waiting = now - item.first_seen < cfg.tf_timeout_s
                if waiting and exc.reason in ("future", "unknown_frame"):
                    still_waiting.append(item)
                else:
                    self._drop(f"tf_{exc.reason}", str(exc))
                continue
            problem = pose_problem(t_map_cam, cfg.max_translation_m)
            if problem is not None:
                self._drop(
                    "bad_pose", f"{camera_frame} at {frame.stamp_ns * 1e-9:.3f} s: {problem}"
                )
                continue
            if not looked_up and pending:
                looked_up = True
                newest = pending[-1].frame
                newest_stamp = newest.stamp_ns if self._placeable(newest) else None
            superseded = newest_stamp is not None and newest_stamp - frame.stamp_ns > max_lag_ns
            if self._integrate(frame, t_map_cam, superseded=superseded):
                integrated = True
                break
        still_waiting.extend(pending)
        with self._pending_lock:
            # Frames that arrived meanwhile go behind the ones that waited.
            still_waiting.extend(self._pending)
            self._pending = still_waiting
        return integrated

    def _placeable(self, frame: SyncedFrame[Any, Any, Any]) -> bool:
        """True when ``frame``'s camera pose is known and good (it could be integrated now)."""
        camera_frame = self.config.camera_frame or frame.color.header.frame_id
        try:
            t = self.tf.lookup(self.config.map_frame, camera_frame, frame.stamp_ns)
        except TransformUnavailableError:
            return False
        return pose_problem(t, self.config.max_translation_m) is None

    def _drop(self, reason: str, detail: str) -> None:
        self.telemetry.drop(reason)
        self.logger.warning(f"dropped frame ({reason}): {detail}", throttle_duration_sec=5.0)

    def _intrinsics(self, info: Any) -> CameraIntrinsics:
        cached = self._intrinsics_cache
        if cached is not None and cached[0] is info:
            return cached[1]
        intr = CameraIntrinsics.from_camera_info(
            list(info.k), info.width, info.height, info.distortion_model, list(info.d)
        )
        self._intrinsics_cache = (info, intr)
        return intr

    def _robot_position(self, stamp_ns: int) -> np.ndarray | None:
        try:
            t = self.tf.lookup(self.config.map_frame, self.config.robot_frame, stamp_ns)
        except TransformUnavailableError:
            return None  # the radius bound waits for the next frame with a robot pose
        if pose_problem(t, self.config.max_translation_m) is not None:
            return None  # a bad robot pose must not move the radius bound
        return t[:3, 3]

    def _integrate(
        self, frame: SyncedFrame[Any, Any, Any], t_map_cam: np.ndarray, superseded: bool = False
    ) -> bool:
        """True when the frame was a keyframe and went through the encoder (or failed in
        lifting: then the tick is yielded like a keyframe). ``superseded``: a frame more
        than ``max_lag_s`` newer is ready, so a keyframe candidate is skipped."""
        pipe = self.pipeline
        stamp_s = frame.stamp_ns * 1e-9
        if pipe.keyframes.check(t_map_cam, stamp_s) is None:
            self.telemetry.count("not_keyframe")
            return False
        if superseded:
            self.telemetry.count("superseded")
            return False
        t0 = time.perf_counter()
        try:
            rgb = image_to_rgb(frame.color)
            raw_depth = depth_image_to_array(frame.depth)
            depth = depth_to_meters(raw_depth, frame.depth.encoding)
            intr = self._intrinsics(frame.info)
            t_convert = time.perf_counter() - t0
            robot = self._robot_position(frame.stamp_ns)
            outcome = pipe.process_frame(
                rgb, depth, intr, t_map_cam, stamp_s, robot, stamp_ns=frame.stamp_ns
            )
        except ImageConversionError as exc:
            self._drop(exc.reason, str(exc))
            return False
        except UnsupportedEncodingError as exc:
            self._drop("unknown_encoding", str(exc))
            return False
        except pl.FrameError as exc:
            self._drop(exc.reason, str(exc))
            return True
        except ValueError as exc:  # malformed camera info and the like
            self._drop("bad_input", str(exc))
            return False
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            # A frame too many for the GPU (the language model may hold most of it): drop
            # it, hand the cache back, keep ingesting.
            release_cached_memory()
            self._drop("out_of_memory", f"{type(exc).__name__}: {exc}; {OUT_OF_MEMORY_HINT}")
            return False
        if outcome.keyframe is None:
            return False
        stages = {
            s: t_convert if s == "convert" else outcome.timings.get(s, 0.0) for s in KEYFRAME_STAGES
        }
        total = time.perf_counter() - t0
        slow = total >= self.config.slow_keyframe_s
        self.telemetry.keyframe(total, stages, slow)
        if slow:
            # Frames arriving meanwhile wait in the backlog (and overflow it at 30 Hz):
            # say where the time went, so a burst of drops has a cause in the log.
            parts = {"convert": t_convert, **outcome.timings}
            self.logger.warning(
                f"slow keyframe: {total:.2f} s ("
                + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
                + f"); {self.sync.pending()[0]} colour images arrived meanwhile",
                throttle_duration_sec=10.0,
            )
        return True
