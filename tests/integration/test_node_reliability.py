"""The node under bad goals, namespaces and parameter changes, over real DDS, from a
plain rclpy client (no code of this package on the client side but the message types)."""

from __future__ import annotations

from pathlib import Path

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from llava3d_interfaces.action import Ask, Describe, Ground
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient

from tests.integration.test_node import NO_HEAD, NodeUnderTest, write_params
from tests.ros_harness import wait_future, wait_until


def test_bad_goals_get_bad_query_and_never_use_up_the_slots(
    client_side, start_process, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """min_score > 1 raised inside the execute callback: the goal aborted with error
    code NONE and its slot was never released; max_concurrent such goals disabled every
    query until restart."""
    n = NodeUnderTest(
        client_side, start_process, tmp_path, **{"query.max_concurrent": 2}, **NO_HEAD
    )
    for bad in (2.0, float("inf"), float("nan"), 1e30, 5.0):
        r = n.send(n.ground, Ground.Goal(query="the mug", min_score=bad))
        assert r.result.error_code == Ground.Result.BAD_QUERY, r.result.error_msg
        assert "min_score" in r.result.error_msg
    r = n.send(n.ask, Ask.Goal(question="Where is the mug?", mode="nonsense"))
    assert r.result.error_code == Ask.Result.BAD_QUERY and "mode" in r.result.error_msg
    goal = Describe.Goal()
    goal.center.position.x = float("nan")
    r = n.send(n.describe, goal)
    assert r.result.error_code == Describe.Result.BAD_QUERY
    # The slots are all free again: good goals are accepted and answered.
    for _ in range(4):
        r = n.send(n.ground, Ground.Goal(query="the mug"))
        assert r.result.error_code == Ground.Result.MODEL_UNAVAILABLE
    assert n.proc.alive()


def test_namespaced_nodes_do_not_collide(client_side, start_process, tmp_path) -> None:  # type: ignore[no-untyped-def]
    params = write_params(tmp_path, **NO_HEAD)
    for ns in ("robot1", "robot2"):
        start_process(
            [
                "-m",
                "llava3d_ros.cli",
                "up",
                "--params",
                str(params),
                "--ros-args",
                "-r",
                f"__ns:=/{ns}",
            ],
            name=ns,
        )
    node = client_side.node
    for ns in ("robot1", "robot2"):
        client = ActionClient(node, Ground, f"/{ns}/llava3d/ground")
        assert client.wait_for_server(timeout_sec=60.0), ns
        handle = wait_future(client.send_goal_async(Ground.Goal(query="mug")), 10.0, "accept")
        assert handle.accepted
        r = wait_future(handle.get_result_async(), 30.0, "result")
        assert r.result.error_code == Ground.Result.MODEL_UNAVAILABLE
        names = {n for n, _ in node.get_service_names_and_types()}
        assert f"/{ns}/llava3d/save_memory" in names
    # Nothing was served under the un-namespaced name.
    assert not ActionClient(node, Ground, "/llava3d/ground").wait_for_server(timeout_sec=0.5)


def _set(n: NodeUnderTest, name: str, value: float) -> tuple[bool, str]:
    p = ParameterMsg(
        name=name,
        value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value),
    )
    r = n.service(SetParameters, "/llava3d/set_parameters", SetParameters.Request(parameters=[p]))
    return r.results[0].successful, r.results[0].reason


def test_parameters_change_while_unconfigured_only(
    client_side, start_process, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    n = NodeUnderTest(client_side, start_process, tmp_path, **NO_HEAD)
    ok, reason = _set(n, "memory.voxel_size", 0.1)
    assert not ok and "unconfigured" in reason
    change = ChangeState.Request()
    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP):
        change.transition.id = transition
        assert n.service(ChangeState, "/llava3d/change_state", change).success
    ok, reason = _set(n, "memory.voxel_size", 0.1)
    assert ok, reason
    ok, _ = _set(n, "memory.voxel_size", 5.0)  # outside the documented range
    assert not ok
    for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        change.transition.id = transition
        assert n.service(ChangeState, "/llava3d/change_state", change).success
    count = len(n.stats)
    wait_until(lambda: len(n.stats) > count + 1, 30.0, "stats after re-activation")
    assert abs(n.latest().voxel_size - 0.1) < 1e-6
