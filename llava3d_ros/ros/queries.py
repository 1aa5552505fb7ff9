"""Query execution: the ``~/ground``, ``~/segment``, ``~/ask`` and ``~/describe`` action
servers.

Admission (llama_ros' rule): at most ``max_concurrent`` goals run at once; a goal beyond
that is rejected at once rather than queued behind a language model.

Every goal goes through one runner (:meth:`QueryServer._run`) that
- validates the goal up front and answers ``BAD_QUERY`` with a message,
- answers ``NOT_ACTIVE`` when the node is not active,
- maps any exception from the work to ``UNKNOWN`` with the exception's message (and logs
  the traceback),
- always releases the admission slot and always sets a terminal state.
Before, an exception inside an execute callback aborted the goal without an error code
and never gave its slot back; ``max_concurrent`` such goals disabled queries until
restart.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from geometry_msgs.msg import Pose, Vector3
from llava3d_interfaces.action import Ask, Describe, Ground, Segment
from llava3d_interfaces.msg import GroundedObject
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.duration import Duration
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_services_default
from rclpy.time import Time
from std_msgs.msg import Header

from llava3d_ros.core import pipeline as pl
from llava3d_ros.core.devices import (
    OUT_OF_MEMORY_HINT,
    is_out_of_memory,
    release_cached_memory,
)
from llava3d_ros.core.geometry import transform_points
from llava3d_ros.core.questions import is_view_question, parse_question
from llava3d_ros.core.spatial import Box3D, Viewpoint
from llava3d_ros.ros.conversions import fill_box_pose
from llava3d_ros.ros.objects import instance_cloud
from llava3d_ros.ros.telemetry import Telemetry
from llava3d_ros.ros.tf_buffer import TransformUnavailableError

# pipeline outcome code -> error code constant name (same names in every action)
ERROR_NAMES = {
    pl.OK: "NONE",
    pl.EMPTY_MEMORY: "EMPTY_MEMORY",
    pl.NO_MATCH: "NO_MATCH",
    pl.BAD_QUERY: "BAD_QUERY",
    pl.MODEL_UNAVAILABLE: "MODEL_UNAVAILABLE",
    pl.CANCELED: "CANCELED",
}

#: Outcome of a goal's work: (error code constant name, message).
Outcome = tuple[str, str]

#: Ask goal modes: auto routes (view question + view model -> view; spatial -> geometry;
#: open -> the 3D model, or the view model when only that one is configured).
ASK_MODES = ("auto", "geometry", "lmm", "view")


def failure_outcome(kind: str, exc: Exception, logger: Any) -> tuple[str, str]:
    """The result code and message of a goal that raised: OUT_OF_MEMORY (the cached GPU
    memory handed back, so the next goal can succeed) or UNKNOWN with the exception."""
    if is_out_of_memory(exc):
        release_cached_memory()
        logger.error(f"{kind} goal ran out of memory: {type(exc).__name__}: {exc}")
        return "OUT_OF_MEMORY", f"out of memory ({exc}); {OUT_OF_MEMORY_HINT}"
    logger.error(f"{kind} goal failed: {traceback.format_exc()}")
    return "UNKNOWN", f"{type(exc).__name__}: {exc}"


class GoalSlots:
    """Counting admission: ``try_acquire`` takes a slot if one is free."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._in_use = 0

    def try_acquire(self) -> bool:
        with self._lock:
            if self._in_use >= self.capacity:
                return False
            self._in_use += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._in_use <= 0:
                raise RuntimeError("released a goal slot that was not taken")
            self._in_use -= 1

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use


def _finite(*values: float) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def validate_ground(goal: Any, pipe: pl.ScenePipeline) -> str | None:
    """Why a Ground goal cannot run, or None."""
    problem = pipe.check_query(goal.query)
    if problem:
        return problem
    if not _finite(goal.min_score) or goal.min_score > 1.0:
        return f"min_score must be in [0, 1] (<= 0 = server default), got {goal.min_score}"
    return None


validate_segment = validate_ground


def validate_ask(goal: Any, pipe: pl.ScenePipeline) -> str | None:
    mode = goal.mode or "auto"
    if mode not in ASK_MODES:
        return f"mode {mode!r}: use {', '.join(ASK_MODES)}"
    problem = pipe.check_query(goal.question)
    if problem:
        return problem
    if not _finite(goal.temperature, goal.top_p) or goal.temperature < 0:
        return "temperature must be finite and >= 0; top_p finite"
    if goal.top_p > 1.0:
        return f"top_p must be in [0, 1], got {goal.top_p}"
    return None


def validate_describe(goal: Any, pipe: pl.ScenePipeline) -> str | None:
    p, s = goal.center.position, goal.size
    if not _finite(p.x, p.y, p.z, s.x, s.y, s.z) or min(s.x, s.y, s.z) < 0:
        return "center must be finite and size >= 0"
    return None


class QueryServer:
    """The three query action servers of one configuration."""

    def __init__(
        self,
        node: Any,
        pipeline: pl.ScenePipeline,
        telemetry: Telemetry,
        tf: Any,
        *,
        map_frame: str,
        robot_frame: str,
        max_concurrent: int,
        callback_group: Any,
        goal_queue_depth: int = 100,
        is_active: Callable[[], bool],
        on_grounded: Callable[[Header, list[Box3D], str], None] | None = None,
    ) -> None:
        self._node = node
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.tf = tf
        self.map_frame = map_frame
        self.robot_frame = robot_frame
        self.slots = GoalSlots(max_concurrent)
        self._is_active = is_active
        self._on_grounded = on_grounded
        self._logger = node.get_logger()

        # rclpy's default service QoS keeps 10 requests: of 20 simultaneous goals 4-10
        # got neither accept nor reject. Same reliability, deeper history.
        services_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=goal_queue_depth,
            reliability=qos_profile_services_default.reliability,
            durability=qos_profile_services_default.durability,
        )

        def server(action: Any, kind: str, body: Any, validate: Any) -> ActionServer:
            # "~/ground": relative to the node, so namespaced nodes do not collide.
            return ActionServer(
                node,
                action,
                f"~/{kind}",
                execute_callback=lambda gh: self._run(gh, action, kind, body, validate),
                goal_callback=self._admit,
                cancel_callback=lambda _g: CancelResponse.ACCEPT,
                callback_group=callback_group,
                goal_service_qos_profile=services_qos,
                result_service_qos_profile=services_qos,
                cancel_service_qos_profile=services_qos,
            )

        self._servers = [
            server(Ground, "ground", self._ground, validate_ground),
            server(Segment, "segment", self._segment, validate_segment),
            server(Ask, "ask", self._ask, validate_ask),
            server(Describe, "describe", self._describe, validate_describe),
        ]

    def destroy(self) -> None:
        for s in self._servers:
            s.destroy()
        self._servers = []

    # ------------------------------------------------------------------ the runner

    def _admit(self, _goal: Any) -> GoalResponse:
        if self.slots.try_acquire():
            return GoalResponse.ACCEPT
        self._logger.warning(
            f"rejecting goal: {self.slots.capacity} queries already running",
            throttle_duration_sec=2.0,
        )
        return GoalResponse.REJECT

    def _run(
        self,
        goal_handle: Any,
        action: Any,
        kind: str,
        body: Callable[[Any, Any], Outcome],
        validate: Callable[[Any, pl.ScenePipeline], str | None],
    ) -> Any:
        t0 = time.perf_counter()
        result = action.Result()
        try:
            if not self._is_active():
                code, message = "NOT_ACTIVE", "the node is not active"
            else:
                problem = validate(goal_handle.request, self.pipeline)
                if problem:
                    code, message = "BAD_QUERY", problem
                else:
                    code, message = body(goal_handle, result)
        except Exception as exc:  # every goal gets an answer; a bug says what it was
            code, message = failure_outcome(kind, exc, self._logger)
        finally:
            self.slots.release()
        elapsed = time.perf_counter() - t0
        result.query_time = Duration(seconds=elapsed).to_msg()
        result.error_code = getattr(action.Result, code)
        result.error_msg = message
        self.telemetry.latency(kind, elapsed)
        self.telemetry.count(f"{kind}_{code.lower()}")
        try:
            if code == "CANCELED" and goal_handle.is_cancel_requested:
                goal_handle.canceled()
            elif code == "NONE":
                goal_handle.succeed()
            else:
                goal_handle.abort()
        except Exception as exc:  # e.g. the goal already ended; the result still goes out
            self._logger.warning(f"{kind}: cannot set the goal state: {exc}")
        return result

    # ------------------------------------------------------------------ helpers

    def _header(self, frame_id: str) -> Header:
        return Header(frame_id=frame_id, stamp=self._node.get_clock().now().to_msg())

    def _results_frame(self, target_frame: str) -> tuple[str, np.ndarray | None]:
        """(frame name, T_target_map or None for the map frame). Raises on TF failure."""
        if not target_frame or target_frame == self.map_frame:
            return self.map_frame, None
        return target_frame, self.tf.lookup(target_frame, self.map_frame, 0)

    def _viewpoint(self) -> Viewpoint | None:
        try:
            t = self.tf.lookup(self.map_frame, self.robot_frame, 0)
            return Viewpoint.from_transform(t, forward_axis="x")
        except (TransformUnavailableError, ValueError):
            return None

    @staticmethod
    def to_msgs(
        boxes: list[Box3D], t_target_map: np.ndarray | None, instance_ids: list[int] | None = None
    ) -> list[GroundedObject]:
        ids = instance_ids if instance_ids is not None else [0] * len(boxes)
        out = []
        for box, instance_id in zip(boxes, ids, strict=False):
            obj = GroundedObject(
                label=box.label,
                score=float(box.score),
                num_voxels=int(box.num_voxels),
                instance_id=int(instance_id),
            )
            obj.center = fill_box_pose(Pose(), box, t_target_map)
            obj.size = Vector3(x=float(box.size[0]), y=float(box.size[1]), z=float(box.size[2]))
            out.append(obj)
        return out

    # ------------------------------------------------------------------ ground

    def _ground(self, goal_handle: Any, result: Any) -> Outcome:
        goal = goal_handle.request

        def stage(name: str, progress: float) -> None:
            goal_handle.publish_feedback(Ground.Feedback(stage=name, progress=progress))

        try:
            frame_id, t_target_map = self._results_frame(goal.target_frame)
        except TransformUnavailableError as exc:
            return "TRANSFORM_FAILED", str(exc)
        outcome = self.pipeline.ground(
            goal.query,
            int(goal.max_results),
            float(goal.min_score),
            cancel=lambda: goal_handle.is_cancel_requested,
            on_stage=stage,
            viewpoint=self._viewpoint(),
        )
        result.header = self._header(frame_id)
        result.memory_voxels = outcome.memory_voxels
        result.objects = self.to_msgs(outcome.boxes, t_target_map, outcome.instance_ids)
        if self._on_grounded is not None and outcome.code in (pl.OK, pl.NO_MATCH):
            self._on_grounded(self._header(self.map_frame), outcome.boxes, goal.query)
        stage("done", 1.0)
        return ERROR_NAMES[outcome.code], outcome.message

    # ------------------------------------------------------------------ segment

    def _segment(self, goal_handle: Any, result: Any) -> Outcome:
        goal = goal_handle.request

        def stage(name: str, progress: float) -> None:
            goal_handle.publish_feedback(Segment.Feedback(stage=name, progress=progress))

        try:
            frame_id, t_target_map = self._results_frame(goal.target_frame)
        except TransformUnavailableError as exc:
            return "TRANSFORM_FAILED", str(exc)
        stage("scoring", 0.2)
        outcome = self.pipeline.segment(
            goal.query, int(goal.max_results), float(goal.min_score), self._viewpoint()
        )
        result.header = self._header(frame_id)
        result.objects = self.to_msgs(outcome.boxes, t_target_map, outcome.instance_ids)
        stage("extracting", 0.7)
        result.points = [
            instance_cloud(result.header, m.instance, t_target_map) for m in outcome.matches
        ]
        stage("done", 1.0)
        return ERROR_NAMES[outcome.code], outcome.message

    # ------------------------------------------------------------------ ask

    def _ask(self, goal_handle: Any, result: Any) -> Outcome:
        goal = goal_handle.request
        mode = goal.mode or "auto"
        try:
            frame_id, t_target_map = self._results_frame(goal.target_frame)
        except TransformUnavailableError as exc:
            return "TRANSFORM_FAILED", str(exc)
        result.header = self._header(frame_id)
        pipe = self.pipeline
        if mode == "view" or (
            mode == "auto" and pipe.view is not None and is_view_question(goal.question)
        ):
            return self._ask_model(goal_handle, goal, result, t_target_map, view=True)
        parsed = parse_question(goal.question) if mode in ("auto", "geometry") else None
        if parsed is not None and not pipe.can_answer(parsed):
            parsed = None  # an object-list question without the object layer: open question
        if parsed is None:
            if mode == "geometry":
                return (
                    "UNSUPPORTED_QUESTION",
                    "not a spatial question (where, left/right, front/behind, above/below, "
                    "on, next to, between, how far, which is bigger, how big, how many, what "
                    "is on, what colour, list the objects)",
                )
            # An open question: the 3D model, or the view model when it is the only one.
            view = mode == "auto" and pipe.lmm is None and pipe.view is not None
            return self._ask_model(goal_handle, goal, result, t_target_map, view=view)
        goal_handle.publish_feedback(Ask.Feedback(stage="grounding", partial_answer=""))
        code, answer, message = pipe.ask_spatial(
            parsed, self._viewpoint(), cancel=lambda: goal_handle.is_cancel_requested
        )
        result.answered_by = Ask.Result.ANSWERED_BY_GEOMETRY
        if answer is not None:
            result.answer = answer.text
            result.objects = self.to_msgs(answer.objects, t_target_map)
        goal_handle.publish_feedback(Ask.Feedback(stage="done", partial_answer=result.answer))
        return ERROR_NAMES[code], message

    def _ask_model(
        self, goal_handle: Any, goal: Any, result: Any, t_target_map: Any, *, view: bool
    ) -> Outcome:
        """An answer streamed from a language model, the 3D one over the scene memory or
        (``view``) the 2D one over a kept keyframe image: feedback carries the answer so
        far; cancel stops generation between tokens."""
        partial: list[str] = []

        def on_text(delta: str) -> None:
            partial.append(delta)
            goal_handle.publish_feedback(
                Ask.Feedback(stage="generating", partial_answer="".join(partial))
            )

        stage = "encoding_view" if view else "prefill"
        goal_handle.publish_feedback(Ask.Feedback(stage=stage, partial_answer=""))
        ask = self.pipeline.ask_view if view else self.pipeline.ask_open
        out = ask(
            goal.question,
            max_new_tokens=int(goal.max_new_tokens),
            temperature=float(goal.temperature),
            top_p=float(goal.top_p),
            on_text=on_text,
            cancel=lambda: goal_handle.is_cancel_requested,
        )
        result.answer = out.text
        result.answered_by = Ask.Result.ANSWERED_BY_VIEW if view else Ask.Result.ANSWERED_BY_LMM
        result.model = out.model
        if out.view_stamp_ns:
            result.view_stamp = Time(nanoseconds=out.view_stamp_ns).to_msg()
        result.generated_tokens = out.num_tokens
        result.objects = self.to_msgs(out.boxes, t_target_map)
        return ERROR_NAMES[out.code], out.message

    # ------------------------------------------------------------------ describe

    def _describe(self, goal_handle: Any, result: Any) -> Outcome:
        goal = goal_handle.request
        pipe = self.pipeline
        p = goal.center.position
        size = np.array([goal.size.x, goal.size.y, goal.size.z])
        point = np.array([p.x, p.y, p.z])
        source = goal.header.frame_id or self.map_frame
        try:
            if source != self.map_frame:
                t = self.tf.lookup(self.map_frame, source, 0)
                point = transform_points(t, point[None])[0]
        except TransformUnavailableError as exc:
            return "TRANSFORM_FAILED", str(exc)
        result.header = self._header(self.map_frame)
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
            result.objects = self.to_msgs(out.boxes, None)
            return ERROR_NAMES[out.code], out.message
        code, caption, boxes = pipe.describe_region(point, size)
        result.caption = caption
        result.answered_by = Describe.Result.ANSWERED_BY_GEOMETRY
        result.objects = self.to_msgs(boxes, None)
        return ERROR_NAMES[code], "" if code == pl.OK else caption
