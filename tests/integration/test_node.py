"""The llava3d node in its own process over real DDS: lifecycle, ingest of real RGB-D
frames with TF, drops by reason for bad input, memory services, actions' error codes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from llava3d_interfaces.action import Ask, Describe, Ground
from llava3d_interfaces.msg import MemoryStats
from llava3d_interfaces.srv import ClearMemory, LoadMemory, SaveMemory

# rclpy's ActionClient can lose a goal reply sent from the test thread while its
# executor spins (llava3d_ros.client.LockedActionClient says how); tests use the fix.
from llava3d_ros.client import LockedActionClient
from tests.rgbd_player import RgbdPlayer, middlebury_frame
from tests.ros_harness import wait_future, wait_until

S = 1_000_000_000


def write_params(tmp_path: Path, **overrides: object) -> Path:
    params = {
        # Reliable and deeper than any burst a test sends: with the default depth 5 a
        # loaded 2-core machine lost images of a 9-frame burst before the node took them.
        "qos_reliability": "reliable",
        "qos_depth": 50,
        "stats_period_s": 0.1,
        "cloud_period_s": 0.0,
        "tf": {"timeout_s": 2.0},
        "keyframes": {"min_translation_m": 0.05, "max_interval_s": 0.0},
        "memory": {"voxel_size": 0.05},
        # Tests send bursts and count keyframes: every candidate in order, as a bag replay
        # would (skipping stale candidates, the live default, is unit-tested on the worker).
        "ingest": {"max_lag_s": 0.0},
    }
    for key, value in overrides.items():
        node = params
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
        node[leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


class NodeUnderTest:
    def __init__(
        self,
        client_side,
        start_process,
        tmp_path: Path,
        proc_name: str = "llava3d",  # type: ignore[no-untyped-def]
        entry: tuple[str, ...] = ("-m", "llava3d_ros.cli"),
        **overrides: object,
    ):
        params = write_params(tmp_path, **overrides)
        self.proc = start_process([*entry, "up", "--params", str(params)], name=proc_name)
        node = client_side.node
        self.node = node
        self.stats: list[MemoryStats] = []
        node.create_subscription(MemoryStats, "/llava3d/memory_stats", self.stats.append, 10)
        self.ground = LockedActionClient(node, Ground, "/llava3d/ground")
        self.ask = LockedActionClient(node, Ask, "/llava3d/ask")
        self.describe = LockedActionClient(node, Describe, "/llava3d/describe")
        self.player = RgbdPlayer(node)
        assert self.ground.wait_until_answering(timeout_sec=60.0), self.proc.log_text()
        wait_until(self.player.subscribers_ready, 30.0, "node subscriptions")
        wait_until(lambda: len(self.stats) > 0, 30.0, "memory stats")

    def latest(self) -> MemoryStats:
        return self.stats[-1]

    def drops(self) -> dict[str, int]:
        s = self.latest()
        return dict(zip(s.drop_reasons, s.drop_counts, strict=True))

    def service(self, srv_type, name: str, request):  # type: ignore[no-untyped-def]
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=10.0)
        return wait_future(client.call_async(request), 30.0, name)

    def send(self, client, goal):  # type: ignore[no-untyped-def]
        handle = wait_future(client.send_goal_async(goal), 10.0, "goal acceptance")
        assert handle.accepted
        return wait_future(handle.get_result_async(), 60.0, "result")


@pytest.fixture
def real_frame():  # type: ignore[no-untyped-def]
    return middlebury_frame()


def _feed(n: NodeUnderTest, frame, count: int, start_s: int = 10, **kw) -> None:  # type: ignore[no-untyped-def]
    n.player.publish_static()
    for i in range(count):
        stamp = (start_s + i) * S
        n.player.publish_pose(stamp, x=0.1 * i)
        n.player.publish_frame(frame, stamp, **kw)


NO_HEAD = {"encoder.head_path": "none"}  # DINOv2 features only: grounding is off


def test_ingest_real_frames_and_memory_services(
    client_side, start_process, tmp_path, real_frame
) -> None:  # type: ignore[no-untyped-def]
    snaps = tmp_path / "snapshots"
    n = NodeUnderTest(
        client_side, start_process, tmp_path, **NO_HEAD, **{"snapshot.dir": str(snaps)}
    )
    _feed(n, real_frame, 4)
    wait_until(lambda: n.latest().keyframes_integrated >= 4, 60.0, "4 keyframes")
    stats = n.latest()
    assert stats.num_voxels > 100
    assert stats.encoder == "dinov2_onnx" and stats.feature_dim == 384
    assert sum(stats.drop_counts) == 0, n.drops()
    # The camera looks along +x from x = 0 .. 0.3 m: the memory spans the frame's depth.
    valid_m = real_frame.depth_mm[real_frame.depth_mm > 0] / 1000.0
    assert valid_m.min() - 0.1 < stats.bounds_min.x < valid_m.min() + 0.5
    assert valid_m.max() - 0.5 < stats.bounds_max.x < valid_m.max() + 0.3 + 0.1

    # Without a grounding head there are no text-aligned features: grounding says so.
    r = n.send(n.ground, Ground.Goal(query="the motorcycle"))
    assert r.result.error_code == Ground.Result.MODEL_UNAVAILABLE
    assert "grounding model" in r.result.error_msg
    assert r.result.memory_voxels == stats.num_voxels
    # Open questions without an LMM, geometry-only mode, bad input.
    r = n.send(n.ask, Ask.Goal(question="What colour is the motorcycle?"))
    assert r.result.error_code == Ask.Result.MODEL_UNAVAILABLE
    r = n.send(n.ask, Ask.Goal(question="Tell me a story", mode="geometry"))
    assert r.result.error_code == Ask.Result.UNSUPPORTED_QUESTION
    r = n.send(n.ground, Ground.Goal(query="   "))
    assert r.result.error_code == Ground.Result.BAD_QUERY
    r = n.send(n.ground, Ground.Goal(query="x" * 10_000))
    assert r.result.error_code == Ground.Result.BAD_QUERY and "limit" in r.result.error_msg
    # Describe a point on the motorcycle (in the memory): a geometric caption.
    goal = Describe.Goal()
    goal.header.frame_id = "map"
    lo = np.array([stats.bounds_min.x, stats.bounds_min.y, stats.bounds_min.z])
    hi = np.array([stats.bounds_max.x, stats.bounds_max.y, stats.bounds_max.z])
    mid = (lo + hi) / 2
    goal.center.position.x, goal.center.position.y, goal.center.position.z = map(float, mid)
    goal.size.x = goal.size.y = goal.size.z = 4.0
    r = n.send(n.describe, goal)
    assert r.result.error_code == Describe.Result.NONE, r.result.error_msg
    assert "region" in r.result.caption and len(r.result.objects) == 1

    # Save, clear, load back (named snapshots in snapshot.dir); a corrupt snapshot is
    # refused and the memory kept.
    saved = n.service(SaveMemory, "/llava3d/save_memory", SaveMemory.Request(name="mem"))
    assert saved.success and saved.name == "mem.safetensors", saved.message
    snap = snaps / "mem.safetensors"
    assert saved.num_voxels == stats.num_voxels and snap.stat().st_size == saved.bytes
    cleared = n.service(ClearMemory, "/llava3d/clear_memory", ClearMemory.Request())
    assert cleared.success and cleared.cleared_voxels == stats.num_voxels
    r = n.send(n.describe, goal)
    assert r.result.error_code == Describe.Result.EMPTY_MEMORY
    loaded = n.service(LoadMemory, "/llava3d/load_memory", LoadMemory.Request(name="mem"))
    assert loaded.success and loaded.num_voxels == stats.num_voxels
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (snaps / "bad.safetensors").write_bytes(bytes(data))
    refused = n.service(LoadMemory, "/llava3d/load_memory", LoadMemory.Request(name="bad"))
    assert not refused.success and "memory unchanged" in refused.message
    assert refused.num_voxels == stats.num_voxels
    # Names only: no path escapes the snapshot directory, nothing else is overwritten.
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (snaps / "notes.safetensors").write_text("not a snapshot")
    for name in ("../victim", str(victim), "a/b", ".hidden", "x" * 100, "notes"):
        r = n.service(SaveMemory, "/llava3d/save_memory", SaveMemory.Request(name=name))
        assert not r.success, name
        r = n.service(LoadMemory, "/llava3d/load_memory", LoadMemory.Request(name=name))
        assert not r.success and r.num_voxels == stats.num_voxels, name
    assert victim.read_text() == "keep me"
    assert (snaps / "notes.safetensors").read_text() == "not a snapshot"
    assert sorted(p.name for p in snaps.iterdir()) == [
        "bad.safetensors",
        "mem.safetensors",
        "notes.safetensors",
    ]
    assert n.proc.alive()


def test_bad_inputs_are_dropped_counted_and_the_node_keeps_serving(
    client_side, start_process, tmp_path, real_frame
) -> None:  # type: ignore[no-untyped-def]
    n = NodeUnderTest(client_side, start_process, tmp_path, **{"tf.timeout_s": 0.3}, **NO_HEAD)
    n.player.publish_static()
    t = 10 * S
    n.player.publish_pose(t, 0.0)
    n.player.publish_frame(real_frame, t, color_encoding="yuv422")
    t += S
    n.player.publish_pose(t, 0.2)
    small = real_frame.depth_mm[::2, ::2]
    n.player.publish_frame(real_frame, t, depth=np.ascontiguousarray(small))
    t += S
    n.player.publish_pose(t, 0.4)
    nan_depth = np.full(real_frame.depth_mm.shape, np.nan, np.float32)
    n.player.publish_frame(real_frame, t, depth=nan_depth, depth_encoding="32FC1")
    t += S
    n.player.publish_pose(t, 0.6)
    n.player.publish_frame(real_frame, t, depth=np.zeros_like(real_frame.depth_mm))
    t += S
    n.player.publish_pose(t, 0.8)
    n.player.publish_frame(real_frame, t, frame_id="unknown_camera")
    expected = {"unknown_encoding", "size_mismatch", "no_valid_depth", "tf_unknown_frame"}
    wait_until(lambda: expected <= set(n.drops()), 30.0, f"drops {expected}")
    drops = n.drops()
    assert drops["no_valid_depth"] == 2  # NaN (32FC1) and zero (16UC1) depth
    assert drops["unknown_encoding"] == 1 and drops["size_mismatch"] == 1
    # A good frame after all that is integrated; queries are answered throughout.
    t += S
    n.player.publish_pose(t, 1.0)
    n.player.publish_frame(real_frame, t)
    wait_until(lambda: n.latest().keyframes_integrated >= 1, 30.0, "a good keyframe")
    r = n.send(n.ground, Ground.Goal(query="the motorcycle"))
    assert r.result.error_code == Ground.Result.MODEL_UNAVAILABLE
    assert n.proc.alive()


def test_missing_camera_info_is_counted(client_side, start_process, tmp_path, real_frame) -> None:  # type: ignore[no-untyped-def]
    n = NodeUnderTest(client_side, start_process, tmp_path)
    _feed(n, real_frame, 3, info=False)
    wait_until(lambda: n.drops().get("no_camera_info", 0) >= 2, 30.0, "no_camera_info drops")
    assert n.latest().keyframes_integrated == 0


def test_lifecycle_transitions(client_side, start_process, tmp_path, real_frame) -> None:  # type: ignore[no-untyped-def]
    n = NodeUnderTest(client_side, start_process, tmp_path)
    state = n.service(GetState, "/llava3d/get_state", GetState.Request())
    assert state.current_state.label == "active"
    change = ChangeState.Request()
    change.transition.id = Transition.TRANSITION_DEACTIVATE
    assert n.service(ChangeState, "/llava3d/change_state", change).success
    r = n.send(n.ground, Ground.Goal(query="anything"))
    assert r.result.error_code == Ground.Result.NOT_ACTIVE
    change.transition.id = Transition.TRANSITION_ACTIVATE
    assert n.service(ChangeState, "/llava3d/change_state", change).success
    wait_until(n.player.subscribers_ready, 30.0, "re-created subscriptions")
    _feed(n, real_frame, 2)
    wait_until(lambda: n.latest().keyframes_integrated >= 2, 60.0, "keyframes after re-activation")
    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP):
        change.transition.id = transition
        assert n.service(ChangeState, "/llava3d/change_state", change).success
    state = n.service(GetState, "/llava3d/get_state", GetState.Request())
    assert state.current_state.label == "unconfigured"
    change.transition.id = Transition.TRANSITION_CONFIGURE
    assert n.service(ChangeState, "/llava3d/change_state", change).success
    assert n.proc.alive()


def test_planner_client_api(client_side, start_process, tmp_path, real_frame) -> None:  # type: ignore[no-untyped-def]
    from llava3d_ros.client import Llava3DClient

    n = NodeUnderTest(client_side, start_process, tmp_path, **NO_HEAD)
    with Llava3DClient() as client:  # its own context, node and executor thread
        assert client.wait_for_server(30.0)
        empty = client.describe((1.0, 0.0, 1.0))
        assert not empty.ok and empty.error_name == "EMPTY_MEMORY"
        _feed(n, real_frame, 2)
        wait_until(lambda: n.latest().keyframes_integrated >= 2, 60.0, "keyframes")
        stages: list[str] = []
        handle = client.ground_async("the motorcycle", feedback=lambda s, _p: stages.append(s))
        found = handle.result(30.0)
        assert not found.ok and found.error_name == "MODEL_UNAVAILABLE"
        assert found.memory_voxels > 0 and found.query_time_s > 0
        answer = client.ask("Where is the motorcycle?", mode="geometry")
        assert answer.error_name == "MODEL_UNAVAILABLE"  # grounding model needed for phrases
        described = client.describe((2.5, 0.0, 1.0), size=(4.0, 4.0, 4.0), frame_id="map")
        assert described.ok and described.answered_by == "geometry"
        assert described.objects[0].num_voxels > 0


def test_sim_time_follows_clock_received_off_the_query_executor(
    client_side, start_process, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """With use_sim_time, result and stats stamps follow /clock, which the internal
    sensor node receives (not the node serving queries: every /clock message there cost a
    wait-set rebuild on its executor), and reporting does not stop when /clock does."""
    from builtin_interfaces.msg import Time
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    n = NodeUnderTest(client_side, start_process, tmp_path, use_sim_time=True, **NO_HEAD)
    clock = n.node.create_publisher(
        Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    )
    wait_until(lambda: clock.get_subscription_count() > 0, 30.0, "a /clock subscriber")

    # An endpoint is discovered before the participant's node names arrive (rmw sends them
    # on ros_discovery_info), so the graph reports "_NODE_NAME_UNKNOWN_" for a while.
    def clock_readers() -> set[str]:
        return {i.node_name for i in n.node.get_subscriptions_info_by_topic("/clock")}

    wait_until(lambda: "_NODE_NAME_UNKNOWN_" not in clock_readers(), 30.0, "/clock readers named")
    readers = clock_readers()
    assert readers == {"llava3d_sensors"}, readers
    # A clock source publishes a stream; so does this one until the node has the time: a
    # single sample can be sent before the node's reader has matched this writer (the
    # writer matches first), and a volatile reader never gets it.
    last_publish = [-1.0]

    def stamped() -> bool:
        if time.monotonic() - last_publish[0] > 0.2:
            clock.publish(Clock(clock=Time(sec=1234, nanosec=500_000_000)))
            last_publish[0] = time.monotonic()
        s = n.latest().header.stamp
        return (s.sec, s.nanosec) == (1234, 500_000_000)

    wait_until(stamped, 30.0, "stats stamped with the /clock time")
    count = len(n.stats)
    wait_until(lambda: len(n.stats) >= count + 3, 30.0, "stats while /clock is paused")
    r = n.send(n.ground, Ground.Goal(query="anything"))
    assert (r.result.header.stamp.sec, r.result.header.stamp.nanosec) == (1234, 500_000_000)


def test_the_node_on_a_cuda_device(client_side, start_process, tmp_path, real_frame) -> None:  # type: ignore[no-untyped-def]
    """``device: cuda``: configure puts every stage on the device, frames are integrated
    there, queries and snapshots are answered. Without a GPU the node runs on the emulated
    device (tests/cuda_emulation.py: CUDA's placement rules, CPU kernels)."""
    import torch

    entry = (
        ("-m", "llava3d_ros.cli") if torch.cuda.is_available() else ("tests/emulated_cuda_node.py",)
    )
    snaps = tmp_path / "snapshots"
    n = NodeUnderTest(
        client_side,
        start_process,
        tmp_path,
        entry=entry,
        device="cuda",
        **{"snapshot.dir": str(snaps)},
    )
    log = n.proc.log_text()
    assert "device cuda: encoder cuda, memory cuda, geometry CUDA:0" in log  # the TSDF too
    _feed(n, real_frame, 4)
    wait_until(lambda: n.latest().keyframes_integrated >= 4, 90.0, "4 keyframes")
    stats = n.latest()
    assert stats.num_voxels > 100 and sum(stats.drop_counts) == 0, n.drops()
    r = n.send(n.ground, Ground.Goal(query="the motorcycle"))
    assert r.result.error_code in (Ground.Result.NONE, Ground.Result.NO_MATCH), r.result
    assert r.result.memory_voxels == stats.num_voxels
    saved = n.service(SaveMemory, "/llava3d/save_memory", SaveMemory.Request(name="mem"))
    assert saved.success and saved.num_voxels == stats.num_voxels, saved.message
    cleared = n.service(ClearMemory, "/llava3d/clear_memory", ClearMemory.Request())
    assert cleared.success
    loaded = n.service(LoadMemory, "/llava3d/load_memory", LoadMemory.Request(name="mem"))
    assert loaded.success and loaded.num_voxels == stats.num_voxels, loaded.message
    assert n.proc.alive()
