"""A Ground action server with scripted behaviour, for testing the transport layer
(interfaces, DDS, feedback, cancel) in a separate process, independent of the models.

Goal query "hold" keeps executing (sending feedback) until cancelled; any other query
succeeds with ``max_results`` objects labelled with the query, scores descending.
Images on /llava3d_test/image are echoed back on /llava3d_test/image_echo, to test
that full-size frames cross processes with the Fast DDS profile.
"""

from __future__ import annotations

import sys
import time

import rclpy
from llava3d_interfaces.action import Ground
from llava3d_interfaces.msg import GroundedObject
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image

FEEDBACK_TOPIC = "/llava3d/ground/_action/feedback"


class ScriptedGroundServer(Node):
    def __init__(self) -> None:
        super().__init__("scripted_ground_server")
        self._server = ActionServer(
            self,
            Ground,
            "/llava3d/ground",
            execute_callback=self._execute,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _handle: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup(),
        )
        self._echo = self.create_publisher(Image, "/llava3d_test/image_echo", 10)
        self.create_subscription(Image, "/llava3d_test/image", self._echo.publish, 10)

    def _wait_for_feedback_subscriber(self, timeout: float = 10.0) -> None:
        # Feedback is a topic: publish only once the client's subscription is matched,
        # so the test sees every message rather than racing discovery.
        deadline = time.monotonic() + timeout
        while self.count_subscribers(FEEDBACK_TOPIC) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)

    def _execute(self, goal_handle):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        goal = goal_handle.request
        self._wait_for_feedback_subscriber()
        result = Ground.Result()
        result.header.frame_id = goal.target_frame or "map"
        result.header.stamp = self.get_clock().now().to_msg()
        if goal.query == "hold":
            while rclpy.ok(context=self.context):
                if goal_handle.is_cancel_requested:
                    goal_handle.canceled()
                    result.error_code = Ground.Result.CANCELED
                    result.error_msg = "cancelled by client"
                    return result
                goal_handle.publish_feedback(Ground.Feedback(stage="scoring", progress=0.5))
                time.sleep(0.02)
        for i, stage in enumerate(("encoding_text", "scoring", "clustering")):
            goal_handle.publish_feedback(Ground.Feedback(stage=stage, progress=(i + 1) / 3.0))
        for i in range(goal.max_results):
            obj = GroundedObject(label=goal.query, score=1.0 / (i + 1), num_voxels=10 * (i + 1))
            obj.center.position.x = float(i)
            obj.size.x = obj.size.y = obj.size.z = 0.1
            result.objects.append(obj)
        result.memory_voxels = 1234
        elapsed = time.monotonic() - start
        result.query_time.sec = int(elapsed)
        result.query_time.nanosec = int((elapsed % 1.0) * 1e9)
        goal_handle.succeed()
        return result


def main() -> int:
    rclpy.init()
    node = ScriptedGroundServer()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
