"""Planner-facing client for the llava3d node (in the style of nav2_simple_commander):
blocking calls that return typed results, async variants with feedback callbacks, and
cancel. Error codes come back as values, never as exceptions, so a planner can branch
on them; only misuse (a server that never appears) raises.

    from llava3d_ros.client import Llava3DClient
    with Llava3DClient() as client:
        client.wait_for_server()
        found = client.ground("the red mug", max_results=3)
        if found.ok:
            print(found.objects[0].center, found.objects[0].score)
        for obj in client.objects():                  # the object list (~/objects)
            print(obj.id, obj.label, obj.color, obj.center)
        seg = client.segment("the mug on the table")  # instances + their surface points
        if seg.ok:
            print(seg.objects[0].instance_id, seg.points[0].shape)

Without a ``node`` argument the client owns an rclpy context, a node and a background
executor thread. With a node you spin yourself, pass ``spin=False`` and the blocking
calls only wait on futures (do not call them from a callback of a single-threaded
executor that spins that node: nothing would complete the futures).

Race-free: rclpy 7.1.6's ``ActionClient.send_goal_async`` sends the request and only
then registers the reply's future, without a lock; a reply taken by the spinning thread
in between is dropped ("Ignoring unexpected goal response") and the caller waited for
ever (a fast REJECTED was reported as TIMEOUT). The same holds for result and cancel
requests. :class:`LockedActionClient` sends and registers under one lock that the
spinning thread takes before it matches replies. Waits use done-callbacks and
``threading.Event`` (no polling), and the goal/result/cancel services have deeper
queues (``queue_depth``), like the node's, so a burst of goals is not lost.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import rclpy
from llava3d_interfaces.action import Ask, Describe, Ground, Segment
from llava3d_interfaces.msg import ObjectList
from rclpy.action import ActionClient
from rclpy.action.client import ClientGoalHandle
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_services_default
from unique_identifier_msgs.msg import UUID

T = TypeVar("T")


def _error_names(action: Any) -> dict[int, str]:
    return {
        getattr(action.Result, n): n
        for n in dir(action.Result)
        if n.isupper() and isinstance(getattr(action.Result, n), int)
    }


@dataclass
class Object3D:
    label: str
    score: float
    center: np.ndarray  # (3,) metres, in ``frame_id``
    orientation_xyzw: np.ndarray  # (4,)
    size: np.ndarray  # (3,) full extents
    num_voxels: int
    instance_id: int = 0  # persistent object id (0: not an object instance)

    @classmethod
    def from_msg(cls, m: Any) -> Object3D:
        p, q = m.center.position, m.center.orientation
        return cls(
            m.label,
            float(m.score),
            np.array([p.x, p.y, p.z]),
            np.array([q.x, q.y, q.z, q.w]),
            np.array([m.size.x, m.size.y, m.size.z]),
            int(m.num_voxels),
            int(m.instance_id),
        )


@dataclass
class SceneObjectInfo:
    """One entry of the object list (llava3d_interfaces/SceneObject)."""

    id: int
    role: str
    label: str
    label_score: float
    top_labels: list[tuple[str, float]]
    color: str
    center: np.ndarray  # (3,) in the list's frame
    orientation_xyzw: np.ndarray
    size: np.ndarray
    support_id: int
    num_points: int
    num_observations: int
    first_seen_s: float
    last_seen_s: float

    @classmethod
    def from_msg(cls, m: Any) -> SceneObjectInfo:
        p, q = m.center.position, m.center.orientation
        return cls(
            int(m.id),
            m.role,
            m.label,
            float(m.label_score),
            list(zip(m.top_labels, (float(v) for v in m.top_scores), strict=False)),
            m.color,
            np.array([p.x, p.y, p.z]),
            np.array([q.x, q.y, q.z, q.w]),
            np.array([m.size.x, m.size.y, m.size.z]),
            int(m.support_id),
            int(m.num_points),
            int(m.num_observations),
            m.first_seen.sec + m.first_seen.nanosec * 1e-9,
            m.last_seen.sec + m.last_seen.nanosec * 1e-9,
        )


def cloud_to_points(msg: Any) -> np.ndarray:
    """(N, 3) float32 x, y, z of a PointCloud2 with float32 x/y/z fields."""
    offsets = {f.name: f.offset for f in msg.fields}
    n = int(msg.width) * int(msg.height)
    if n == 0:
        return np.zeros((0, 3), np.float32)
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(n, msg.point_step)
    cols = [raw[:, offsets[k] : offsets[k] + 4].copy().view("<f4")[:, 0] for k in "xyz"]
    return np.stack(cols, axis=1)


@dataclass
class QueryResult:
    ok: bool
    error_code: int
    error_name: str  # "NONE", "NO_MATCH", ... or "REJECTED" / "TIMEOUT" from the client side
    message: str
    frame_id: str = ""
    objects: list[Object3D] = field(default_factory=list)
    query_time_s: float = 0.0
    status: int = 0  # action_msgs/GoalStatus


@dataclass
class GroundResult(QueryResult):
    memory_voxels: int = 0


@dataclass
class SegmentResult(QueryResult):
    points: list[np.ndarray] = field(default_factory=list)  # (N, 3) per object, frame_id


@dataclass
class AskResult(QueryResult):
    answer: str = ""
    answered_by: str = ""  # "geometry", "lmm" (3D scene) or "view" (2D, one keyframe)
    generated_tokens: int = 0
    model: str = ""  # the checkpoint that answered (empty for geometry)
    view_stamp_ns: int = 0  # view answers: the stamp of the keyframe image asked about


@dataclass
class DescribeResult(QueryResult):
    caption: str = ""
    answered_by: str = ""


def wait_future(future: Any, timeout: float) -> bool:
    """Block until ``future`` is done (True) or ``timeout`` seconds pass (False), woken by
    a done-callback rather than by polling."""
    if future.done():
        return True
    event = threading.Event()
    future.add_done_callback(lambda _f: event.set())
    return event.wait(max(0.0, timeout)) or future.done()


class LockedActionClient(ActionClient):
    """An ``ActionClient`` whose requests cannot lose their replies.

    rclpy 7.1.6 (``rclpy/action/client.py``) sends a goal request
    (``_client_handle.send_goal_request``) and only afterwards stores the reply's future
    in ``_pending_goal_requests``; ``execute``, on the spinning thread, ignores a reply
    whose sequence number is not stored yet. Here every send and its registration hold
    ``_send_lock``, and ``execute`` takes the same lock once before it matches replies:
    a reply can only be taken after its request was sent, so by the time it is matched
    the registration is complete. The lock is not held while ``execute`` runs user
    feedback callbacks, so they may send goals themselves."""

    def __init__(self, node: Node, action_type: Any, action_name: str, queue_depth: int = 100):
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=queue_depth,
            reliability=qos_profile_services_default.reliability,
            durability=qos_profile_services_default.durability,
        )
        self._send_lock = threading.Lock()
        super().__init__(
            node,
            action_type,
            action_name,
            goal_service_qos_profile=qos,
            result_service_qos_profile=qos,
            cancel_service_qos_profile=qos,
        )

    def send_goal_async(
        self, goal: Any, feedback_callback: Any = None, goal_uuid: Any = None
    ) -> Any:
        with self._send_lock:
            return super().send_goal_async(goal, feedback_callback, goal_uuid)

    def _get_result_async(self, goal_handle: Any) -> Any:
        with self._send_lock:
            return super()._get_result_async(goal_handle)

    def _cancel_goal_async(self, goal_handle: Any) -> Any:
        with self._send_lock:
            return super()._cancel_goal_async(goal_handle)

    async def execute(self, taken_data: Any) -> None:
        with self._send_lock:
            pass  # a send in progress on another thread finishes registering first
        await super().execute(taken_data)

    def wait_until_answering(self, timeout_sec: float = 30.0, probe_s: float = 0.5) -> bool:
        """``wait_for_server``, then a round trip the server can answer harmlessly: a
        result request for an unknown goal (answered STATUS_UNKNOWN), repeated until one
        is answered. Needs the node spun by an executor.

        ``wait_for_server`` only says this client has discovered the server. The server
        may not have discovered this client's reply readers yet, and Fast DDS then drops
        the reply after a short wait ("failed to send response (timeout)"): under load a
        first goal was lost that way. Endpoints are announced in the order they were
        created, and the goal reply reader is created before the result one, so once a
        result reply arrives the goal reply can arrive too."""
        deadline = time.monotonic() + timeout_sec
        if not self.wait_for_server(timeout_sec=timeout_sec):
            return False
        while time.monotonic() < deadline:
            probe = ClientGoalHandle(self, UUID(uuid=list(uuid.uuid4().bytes)), None)
            if wait_future(
                self._get_result_async(probe), min(probe_s, deadline - time.monotonic())
            ):
                return True
        return False


class QueryHandle(Generic[T]):
    """A goal in flight: ``result(timeout)``, ``done()``, ``cancel()``. Thread-safe."""

    def __init__(self, client: Llava3DClient, send_future: Any, convert: Callable[[Any, int], T]):
        self._client = client
        self._send_future = send_future
        self._convert = convert
        self._lock = threading.Lock()
        self._result_future: Any = None

    def _goal_handle(self, timeout: float) -> Any:
        """The server's accept/reject answer (a ClientGoalHandle), or None on timeout."""
        if not wait_future(self._send_future, timeout):
            return None
        return self._send_future.result()

    def accepted(self, timeout: float = 10.0) -> bool:
        handle = self._goal_handle(timeout)
        return handle is not None and bool(handle.accepted)

    def done(self) -> bool:
        return self._result_future is not None and self._result_future.done()

    def result(self, timeout: float = 60.0) -> T:
        deadline = time.monotonic() + timeout
        handle = self._goal_handle(timeout)
        if handle is None:
            return self._client._failure(self._convert, "TIMEOUT", "no answer to the goal")
        if not handle.accepted:
            return self._client._failure(
                self._convert, "REJECTED", "the server rejected the goal (busy or not ready)"
            )
        with self._lock:
            if self._result_future is None:
                self._result_future = handle.get_result_async()
            future = self._result_future
        if not wait_future(future, deadline - time.monotonic()):
            return self._client._failure(self._convert, "TIMEOUT", f"no result in {timeout} s")
        response = future.result()
        return self._convert(response.result, response.status)

    def cancel(self, timeout: float = 5.0) -> bool:
        """Request cancellation; True once the server accepted the request."""
        deadline = time.monotonic() + timeout
        handle = self._goal_handle(timeout)
        if handle is None or not handle.accepted:
            return False
        future = handle.cancel_goal_async()
        if not wait_future(future, deadline - time.monotonic()):
            return False
        return len(future.result().goals_canceling) > 0


class Llava3DClient:
    def __init__(
        self,
        node: Node | None = None,
        namespace: str = "/llava3d",
        spin: bool = True,
        queue_depth: int = 100,
    ) -> None:
        self._owned_context: Context | None = None
        if node is None:
            self._owned_context = Context()
            rclpy.init(context=self._owned_context)
            node = Node("llava3d_client", context=self._owned_context)
        self.node = node
        ns = namespace.rstrip("/")
        self._ground = LockedActionClient(node, Ground, f"{ns}/ground", queue_depth)
        self._ask = LockedActionClient(node, Ask, f"{ns}/ask", queue_depth)
        self._describe = LockedActionClient(node, Describe, f"{ns}/describe", queue_depth)
        self._segment = LockedActionClient(node, Segment, f"{ns}/segment", queue_depth)
        self._names = {a: _error_names(a) for a in (Ground, Ask, Describe, Segment)}
        self._objects_topic = f"{ns}/objects"
        self._objects_sub: Any = None
        self._objects_msg: Any = None
        self._objects_event = threading.Event()
        self._executor: SingleThreadedExecutor | None = None
        self._thread: threading.Thread | None = None
        if spin:
            self._executor = SingleThreadedExecutor(context=node.context)
            self._executor.add_node(node)
            self._thread = threading.Thread(target=self._executor.spin, daemon=True)
            self._thread.start()

    def __enter__(self) -> Llava3DClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for client in (self._ground, self._ask, self._describe, self._segment):
            client.destroy()
        if self._objects_sub is not None:
            self.node.destroy_subscription(self._objects_sub)
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=2.0)
        if self._owned_context is not None:
            self.node.destroy_node()
            rclpy.shutdown(context=self._owned_context)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def wait_for_server(self, timeout: float = 30.0) -> bool:
        """True once all four action servers are reachable; with the client's own
        executor, once each has answered a round trip (a first goal's reply cannot then be
        dropped for discovery still under way: ``LockedActionClient.wait_until_answering``)."""
        deadline = time.monotonic() + timeout

        def ready(c: LockedActionClient) -> bool:
            left = max(0.0, deadline - time.monotonic())
            if self._executor is not None:
                return c.wait_until_answering(timeout_sec=left)
            return bool(c.wait_for_server(timeout_sec=left))

        return all(ready(c) for c in (self._ground, self._ask, self._describe, self._segment))

    # ------------------------------------------------------------------ conversion

    def _base(self, action: Any, r: Any, status: int) -> dict[str, Any]:
        name = self._names[action].get(r.error_code, str(r.error_code))
        q = r.query_time
        return {
            "ok": r.error_code == action.Result.NONE,
            "error_code": int(r.error_code),
            "error_name": name,
            "message": r.error_msg,
            "frame_id": r.header.frame_id,
            "objects": [Object3D.from_msg(o) for o in r.objects],
            "query_time_s": q.sec + q.nanosec * 1e-9,
            "status": status,
        }

    def _to_ground(self, r: Any, status: int) -> GroundResult:
        return GroundResult(**self._base(Ground, r, status), memory_voxels=int(r.memory_voxels))

    def _to_segment(self, r: Any, status: int) -> SegmentResult:
        return SegmentResult(
            **self._base(Segment, r, status), points=[cloud_to_points(c) for c in r.points]
        )

    def _to_ask(self, r: Any, status: int) -> AskResult:
        return AskResult(
            **self._base(Ask, r, status),
            answer=r.answer,
            answered_by=r.answered_by,
            generated_tokens=int(r.generated_tokens),
            model=r.model,
            view_stamp_ns=int(r.view_stamp.sec) * 1_000_000_000 + int(r.view_stamp.nanosec),
        )

    def _to_describe(self, r: Any, status: int) -> DescribeResult:
        return DescribeResult(
            **self._base(Describe, r, status), caption=r.caption, answered_by=r.answered_by
        )

    @staticmethod
    def _failure(convert: Callable[[Any, int], T], name: str, message: str) -> T:
        result_type = {
            "_to_ground": GroundResult,
            "_to_segment": SegmentResult,
            "_to_ask": AskResult,
            "_to_describe": DescribeResult,
        }[convert.__name__]
        return result_type(ok=False, error_code=-1, error_name=name, message=message)

    # ------------------------------------------------------------------ calls

    def _send_staged(
        self,
        client: Any,
        goal: Any,
        convert: Callable[[Any, int], T],
        feedback: Callable[[str, float], None] | None,
    ) -> QueryHandle[T]:
        """Send a goal whose feedback is (stage, progress)."""
        cb = (
            None
            if feedback is None
            else (lambda m: feedback(m.feedback.stage, m.feedback.progress))
        )
        return QueryHandle(self, client.send_goal_async(goal, feedback_callback=cb), convert)

    def ground_async(
        self,
        query: str,
        max_results: int = 0,
        min_score: float = 0.0,
        target_frame: str = "",
        feedback: Callable[[str, float], None] | None = None,
    ) -> QueryHandle[GroundResult]:
        goal = Ground.Goal(
            query=query, max_results=max_results, min_score=min_score, target_frame=target_frame
        )
        return self._send_staged(self._ground, goal, self._to_ground, feedback)

    def ground(
        self,
        query: str,
        max_results: int = 0,
        min_score: float = 0.0,
        target_frame: str = "",
        timeout: float = 30.0,
    ) -> GroundResult:
        return self.ground_async(query, max_results, min_score, target_frame).result(timeout)

    def segment_async(
        self,
        query: str,
        max_results: int = 0,
        min_score: float = 0.0,
        target_frame: str = "",
        feedback: Callable[[str, float], None] | None = None,
    ) -> QueryHandle[SegmentResult]:
        goal = Segment.Goal(
            query=query, max_results=max_results, min_score=min_score, target_frame=target_frame
        )
        return self._send_staged(self._segment, goal, self._to_segment, feedback)

    def segment(
        self,
        query: str,
        max_results: int = 0,
        min_score: float = 0.0,
        target_frame: str = "",
        timeout: float = 30.0,
    ) -> SegmentResult:
        """Instances an expression refers to, with boxes and surface points."""
        return self.segment_async(query, max_results, min_score, target_frame).result(timeout)

    def _on_objects(self, msg: Any) -> None:
        self._objects_msg = msg
        self._objects_event.set()

    def objects(self, timeout: float = 5.0, fresh: bool = False) -> list[SceneObjectInfo]:
        """The node's object list (``~/objects``): the latest message, or the next one
        with ``fresh`` (or when none came yet). Empty when none arrives in ``timeout``."""
        if self._objects_sub is None:
            from rclpy.qos import QoSProfile, ReliabilityPolicy

            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            self._objects_sub = self.node.create_subscription(
                ObjectList, self._objects_topic, self._on_objects, qos
            )
        if fresh or self._objects_msg is None:
            self._objects_event.clear()
            self._objects_event.wait(timeout)
        msg = self._objects_msg
        return [] if msg is None else [SceneObjectInfo.from_msg(o) for o in msg.objects]

    def ask_async(
        self,
        question: str,
        mode: str = "auto",
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        target_frame: str = "",
        on_partial: Callable[[str, str], None] | None = None,
    ) -> QueryHandle[AskResult]:
        """``on_partial(stage, answer_so_far)`` sees the streamed answer."""
        goal = Ask.Goal(
            question=question,
            mode=mode,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            target_frame=target_frame,
        )
        cb = None
        if on_partial is not None:
            cb = lambda m: on_partial(m.feedback.stage, m.feedback.partial_answer)  # noqa: E731
        return QueryHandle(
            self, self._ask.send_goal_async(goal, feedback_callback=cb), self._to_ask
        )

    def ask(
        self, question: str, mode: str = "auto", timeout: float = 120.0, **kw: Any
    ) -> AskResult:
        return self.ask_async(question, mode, **kw).result(timeout)

    def describe_async(
        self,
        point: Sequence[float],
        size: Sequence[float] = (0.0, 0.0, 0.0),
        frame_id: str = "",
        max_new_tokens: int = 0,
    ) -> QueryHandle[DescribeResult]:
        goal = Describe.Goal(max_new_tokens=max_new_tokens)
        goal.header.frame_id = frame_id
        goal.center.position.x, goal.center.position.y, goal.center.position.z = map(float, point)
        goal.size.x, goal.size.y, goal.size.z = map(float, size)
        return QueryHandle(self, self._describe.send_goal_async(goal), self._to_describe)

    def describe(
        self,
        point: Sequence[float],
        size: Sequence[float] = (0.0, 0.0, 0.0),
        frame_id: str = "",
        timeout: float = 60.0,
    ) -> DescribeResult:
        return self.describe_async(point, size, frame_id).result(timeout)
