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

Without a ``node`` argument the client owns an rclpy context, a node and a background
executor thread. With a node you spin yourself, pass ``spin=False`` and the blocking
calls only wait on futures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import rclpy
from llava3d_interfaces.action import Ask, Describe, Ground
from rclpy.action import ActionClient
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

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
        )


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
class AskResult(QueryResult):
    answer: str = ""
    answered_by: str = ""
    generated_tokens: int = 0


@dataclass
class DescribeResult(QueryResult):
    caption: str = ""
    answered_by: str = ""


class QueryHandle(Generic[T]):
    """A goal in flight: ``result(timeout)``, ``done()``, ``cancel()``."""

    def __init__(self, client: Llava3DClient, send_future: Any, convert: Callable[[Any, int], T]):
        self._client = client
        self._send_future = send_future
        self._convert = convert
        self._goal_handle: Any = None
        self._result_future: Any = None

    def _wait(self, future: Any, deadline: float) -> bool:
        while not future.done():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def accepted(self, timeout: float = 10.0) -> bool:
        if not self._wait(self._send_future, time.monotonic() + timeout):
            return False
        self._goal_handle = self._send_future.result()
        return bool(self._goal_handle.accepted)

    def done(self) -> bool:
        return self._result_future is not None and self._result_future.done()

    def result(self, timeout: float = 60.0) -> T:
        deadline = time.monotonic() + timeout
        if self._goal_handle is None:
            if not self._wait(self._send_future, deadline):
                return self._client._failure(self._convert, "TIMEOUT", "no answer to the goal")
            self._goal_handle = self._send_future.result()
        if not self._goal_handle.accepted:
            return self._client._failure(
                self._convert, "REJECTED", "the server rejected the goal (busy or not ready)"
            )
        if self._result_future is None:
            self._result_future = self._goal_handle.get_result_async()
        if not self._wait(self._result_future, deadline):
            return self._client._failure(self._convert, "TIMEOUT", f"no result in {timeout} s")
        response = self._result_future.result()
        return self._convert(response.result, response.status)

    def cancel(self, timeout: float = 5.0) -> bool:
        """Request cancellation; True once the server accepted the request."""
        if self._goal_handle is None and not self.accepted(timeout):
            return False
        future = self._goal_handle.cancel_goal_async()
        if not self._wait(future, time.monotonic() + timeout):
            return False
        return len(future.result().goals_canceling) > 0


class Llava3DClient:
    def __init__(
        self, node: Node | None = None, namespace: str = "/llava3d", spin: bool = True
    ) -> None:
        self._owned_context: Context | None = None
        if node is None:
            self._owned_context = Context()
            rclpy.init(context=self._owned_context)
            node = Node("llava3d_client", context=self._owned_context)
        self.node = node
        ns = namespace.rstrip("/")
        self._ground = ActionClient(node, Ground, f"{ns}/ground")
        self._ask = ActionClient(node, Ask, f"{ns}/ask")
        self._describe = ActionClient(node, Describe, f"{ns}/describe")
        self._names = {a: _error_names(a) for a in (Ground, Ask, Describe)}
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
        for client in (self._ground, self._ask, self._describe):
            client.destroy()
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=2.0)
        if self._owned_context is not None:
            self.node.destroy_node()
            rclpy.shutdown(context=self._owned_context)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def wait_for_server(self, timeout: float = 30.0) -> bool:
        """True once all three action servers are reachable."""
        deadline = time.monotonic() + timeout
        return all(
            c.wait_for_server(timeout_sec=max(0.0, deadline - time.monotonic()))
            for c in (self._ground, self._ask, self._describe)
        )

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

    def _to_ask(self, r: Any, status: int) -> AskResult:
        return AskResult(
            **self._base(Ask, r, status),
            answer=r.answer,
            answered_by=r.answered_by,
            generated_tokens=int(r.generated_tokens),
        )

    def _to_describe(self, r: Any, status: int) -> DescribeResult:
        return DescribeResult(
            **self._base(Describe, r, status), caption=r.caption, answered_by=r.answered_by
        )

    @staticmethod
    def _failure(convert: Callable[[Any, int], T], name: str, message: str) -> T:
        result_type = {
            "_to_ground": GroundResult,
            "_to_ask": AskResult,
            "_to_describe": DescribeResult,
        }[convert.__name__]
        return result_type(ok=False, error_code=-1, error_name=name, message=message)  # type: ignore[return-value]

    # ------------------------------------------------------------------ calls

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
        cb = (
            None
            if feedback is None
            else (lambda m: feedback(m.feedback.stage, m.feedback.progress))
        )
        return QueryHandle(
            self, self._ground.send_goal_async(goal, feedback_callback=cb), self._to_ground
        )

    def ground(self, query: str, max_results: int = 0, min_score: float = 0.0,
               target_frame: str = "", timeout: float = 30.0) -> GroundResult:  # fmt: skip
        return self.ground_async(query, max_results, min_score, target_frame).result(timeout)

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
            question=question, mode=mode, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, target_frame=target_frame,
        )  # fmt: skip
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

    def describe(self, point: Sequence[float], size: Sequence[float] = (0.0, 0.0, 0.0),
                 frame_id: str = "", timeout: float = 60.0) -> DescribeResult:  # fmt: skip
        return self.describe_async(point, size, frame_id).result(timeout)
