"""``llava3d-ros make-bag``: a synthetic RGB-D walk-through of a composed room as a
rosbag2, plus ``scene.json`` with the ground truth.

The room (floor, walls, furniture, real scanned objects at non-overlapping poses) and the
camera path come from :mod:`llava3d_ros.sim.scene` and are fully decided by the seed;
frames are rendered headless with pyrender (EGL). The bag holds what a robot with an
RGB-D camera (RealSense-style topic names) and a localisation stack would record:

===============================================  ====================================
``/camera/color/image_raw``                      sensor_msgs/Image, rgb8
``/camera/aligned_depth_to_color/image_raw``     sensor_msgs/Image, 16UC1 millimetres,
                                                 registered to colour, 0 = no return
``/camera/color/camera_info``                    sensor_msgs/CameraInfo, plumb_bob, D = 0
``/tf``                                          map -> odom, odom -> base_link per frame
``/tf_static``                                   base_link -> camera_link ->
                                                 camera_color_optical_frame (latched)
===============================================  ====================================

Frames (REP-103/105): ``map`` (the room: z up, floor at z = 0), ``odom`` (a fixed
offset from map, as after a localisation correction), ``base_link`` (the sensor rig's
body: x forward, y left, z up; it carries the camera's height and pitch, since the
walk-through moves and tilts the camera freely), ``camera_link`` (x forward) and
``camera_color_optical_frame`` (x right, y down, z forward; the images' frame_id).
Every transform on /tf is stamped with the image stamp of its frame, so a lookup at an
image stamp is exact.

Bag metadata is rosbag2 version 9 (each topic with its RIHS01 type hash; the hashes of
ROS 2 Jazzy's message definitions, identical to the wheels' rclpy types); storage mcap
(default) or sqlite3. Stamps start at :data:`START_TIME_NS`; message receive times
(the bag's log times) equal the header stamps, in the order tf, camera_info, depth,
colour within a frame.

Optional depth noise (``noise=True``): axial Gaussian noise growing with the square of
the distance (the Kinect model of Nguyen, Izadi and Lovell, 3DIMPVT 2012: sigma(z) =
1.2 mm + 1.9 mm * (z - 0.4 m)^2), missing depth at occlusion edges (half the pixels
whose 3x3 neighbourhood spans more than 2 cm + 10% of the depth: occlusion jumps, not
slanted surfaces), small random dropout blobs (~1% of
the pixels) and no return beyond 6 m.

``scene.json`` (written into the bag directory, next to ``metadata.yaml``): the
generator settings, camera intrinsics, frames and topics, the scene spec (reproducible
with :meth:`SceneSpec.from_dict`), the viewpoint the node answers from (base_link at the
last frame), every object and piece of furniture (:class:`SceneObject`: id, category,
names, yaw box, axis-aligned box of its points, support, visibility in the
walk-through), referring expressions and spatial questions with exact answers.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from llava3d_ros.core.geometry import quaternion_from_rotation_matrix
from llava3d_ros.core.spatial import Viewpoint
from llava3d_ros.sim import expressions as ex
from llava3d_ros.sim.assets import vocabulary
from llava3d_ros.sim.scene import compose_room, walkthrough_poses

__all__ = [
    "COLOR_TOPIC",
    "DEPTH_TOPIC",
    "FRAMES",
    "INFO_TOPIC",
    "SCENE_FILE",
    "START_TIME_NS",
    "BagConfig",
    "Walkthrough",
    "WalkthroughFrame",
    "add_depth_noise",
    "base_link_poses",
    "load_scene",
    "make_bag",
    "rig_transforms",
    "run",
]

COLOR_TOPIC = "/camera/color/image_raw"
DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "/camera/color/camera_info"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
SCENE_FILE = "scene.json"
SCENE_FORMAT = "llava3d_ros.scene"
SCENE_VERSION = 1
#: Header stamp of the first frame (2023-11-14T22:13:20Z): a plausible wall-clock time,
#: so stamps look like a real recording and never like "time zero / not set".
START_TIME_NS = 1_700_000_000 * 1_000_000_000

FRAMES = {
    "map": "map",
    "odom": "odom",
    "base": "base_link",
    "camera_link": "camera_link",
    "optical": "camera_color_optical_frame",
}

# Static rig: camera_link 5 cm ahead of and 20 cm above base_link; the colour optical
# frame 15 mm to the left of camera_link (RealSense-like), rotated to the optical axes.
_BASE_TO_CAMERA_LINK_XYZ = (0.05, 0.0, 0.20)
_CAMERA_LINK_TO_OPTICAL_XYZ = (0.0, 0.015, 0.0)
# map -> odom: a fixed localisation correction (translation, yaw), not the identity, so
# a consumer that skips odom gets visibly wrong poses.
_MAP_TO_ODOM_XYZ = (0.40, -0.25, 0.0)
_MAP_TO_ODOM_YAW = math.radians(7.0)

NOISE_MAX_RANGE_M = 6.0


@dataclass(frozen=True)
class BagConfig:
    seed: int = 0
    frames: int = 200
    rate: float = 10.0  # Hz: frame period of the recording
    storage: str = "mcap"  # or "sqlite3"
    width: int = 640
    height: int = 480
    objects: int = 6
    noise: bool = False
    loops: float = 1.0  # laps of the walk-through loop

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError("a walk-through needs at least 2 frames")
        if not self.rate > 0:
            raise ValueError("rate must be > 0 Hz")
        if self.storage not in ("mcap", "sqlite3"):
            raise ValueError("storage must be 'mcap' or 'sqlite3'")
        if self.width < 32 or self.height < 32:
            raise ValueError("images must be at least 32x32")


# ------------------------------------------------------------------------- transforms


def _translation(xyz: Sequence[float]) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = xyz
    return t


def _yaw(angle: float) -> np.ndarray:
    t = np.eye(4)
    c, s = math.cos(angle), math.sin(angle)
    t[:2, :2] = [[c, -s], [s, c]]
    return t


#: camera_link (x forward, y left, z up) <- optical (x right, y down, z forward).
_LINK_FROM_OPTICAL_ROT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rig_transforms() -> tuple[np.ndarray, np.ndarray]:
    """(T_base_camera_link, T_camera_link_optical): the static rig."""
    t_link_opt = _translation(_CAMERA_LINK_TO_OPTICAL_XYZ)
    t_link_opt[:3, :3] = _LINK_FROM_OPTICAL_ROT
    return _translation(_BASE_TO_CAMERA_LINK_XYZ), t_link_opt


def map_to_odom() -> np.ndarray:
    return _translation(_MAP_TO_ODOM_XYZ) @ _yaw(_MAP_TO_ODOM_YAW)


def base_link_poses(t_map_optical: np.ndarray) -> np.ndarray:
    """(N, 4, 4) T_map_base_link for camera poses (N, 4, 4) T_map_optical."""
    t_base_link, t_link_opt = rig_transforms()
    t_opt_base = np.linalg.inv(t_base_link @ t_link_opt)
    return np.asarray(t_map_optical) @ t_opt_base


# ------------------------------------------------------------------------- depth noise


def add_depth_noise(depth_m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A Kinect-like sensor model on metric depth (0 = no return); see the module doc."""
    d = depth_m.astype(np.float32).copy()
    valid = d > 0
    sigma = 0.0012 + 0.0019 * np.square(np.maximum(d - 0.4, 0.0))
    d[valid] += (rng.standard_normal(int(valid.sum())) * sigma[valid]).astype(np.float32)
    # Occlusion edges: the 3x3 neighbourhood spans more than 2 cm + 10 % of the depth.
    pad = np.pad(np.where(valid, d, np.nan), 1, mode="edge")
    h, w = d.shape
    stack = np.stack([pad[i : i + h, j : j + w] for i in range(3) for j in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
        span = np.nanmax(stack, axis=0) - np.nanmin(stack, axis=0)
    edge = np.nan_to_num(span, nan=1.0) > 0.02 + 0.1 * d  # jumps, not slanted surfaces
    d[edge & (rng.random(d.shape) < 0.5)] = 0.0
    # Dropout blobs: seeds on ~0.1% of pixels grown to ~3x3 (about 1% of the image).
    seeds = rng.random(d.shape) < 0.0011
    blob = np.zeros_like(seeds)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            blob |= np.roll(np.roll(seeds, dy, axis=0), dx, axis=1)
    d[blob] = 0.0
    d[d > NOISE_MAX_RANGE_M] = 0.0
    d[~valid] = 0.0
    return np.maximum(d, 0.0)


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth -> 16UC1 millimetres (0 stays 0 = no return; clipped at 65.535 m)."""
    return np.clip(np.round(depth_m * 1000.0), 0, 65535).astype(np.uint16)


# ------------------------------------------------------------------------- messages


class _Messages:
    """rosbags message builders (Jazzy type store; its hashes equal the rclpy ones)."""

    def __init__(self) -> None:

        self.store = get_typestore(Stores.ROS2_JAZZY)
        t = self.store.types
        self.Time = t["builtin_interfaces/msg/Time"]
        self.Header = t["std_msgs/msg/Header"]
        self.Image = t["sensor_msgs/msg/Image"]
        self.CameraInfo = t["sensor_msgs/msg/CameraInfo"]
        self.Roi = t["sensor_msgs/msg/RegionOfInterest"]
        self.TFMessage = t["tf2_msgs/msg/TFMessage"]
        self.TransformStamped = t["geometry_msgs/msg/TransformStamped"]
        self.Transform = t["geometry_msgs/msg/Transform"]
        self.Vector3 = t["geometry_msgs/msg/Vector3"]
        self.Quaternion = t["geometry_msgs/msg/Quaternion"]

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return self.Header(stamp=self.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def image(self, stamp_ns: int, frame_id: str, arr: np.ndarray, encoding: str) -> Any:
        h, w = arr.shape[:2]
        data = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        return self.Image(
            header=self.header(stamp_ns, frame_id),
            height=h,
            width=w,
            encoding=encoding,
            is_bigendian=0,
            step=int(data.size // h),
            data=data,
        )

    def camera_info(self, stamp_ns: int, frame_id: str, intr: Any) -> Any:
        k = np.array([intr.fx, 0, intr.cx, 0, intr.fy, intr.cy, 0, 0, 1], dtype=np.float64)
        p = np.array([intr.fx, 0, intr.cx, 0, 0, intr.fy, intr.cy, 0, 0, 0, 1, 0], np.float64)
        return self.CameraInfo(
            header=self.header(stamp_ns, frame_id),
            height=intr.height,
            width=intr.width,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=k,
            r=np.eye(3).reshape(-1),
            p=p,
            binning_x=0,
            binning_y=0,
            roi=self.Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )

    def transform(self, stamp_ns: int, parent: str, child: str, t: np.ndarray) -> Any:

        q = quaternion_from_rotation_matrix(t[:3, :3])
        return self.TransformStamped(
            header=self.header(stamp_ns, parent),
            child_frame_id=child,
            transform=self.Transform(
                translation=self.Vector3(x=float(t[0, 3]), y=float(t[1, 3]), z=float(t[2, 3])),
                rotation=self.Quaternion(
                    x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])
                ),
            ),
        )

    def tf(self, transforms: list[Any]) -> Any:
        return self.TFMessage(transforms=transforms)

    def serialize(self, msg: Any) -> bytes:
        return bytes(self.store.serialize_cdr(msg, msg.__msgtype__))


def _qos(transient_local: bool, depth: int) -> Any:

    zero = QosTime(0, 0)  # 0 = the RMW default (infinite)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


# ------------------------------------------------------------------------- the bag


def _progress(total: int, desc: str, enabled: bool) -> Any:

    return tqdm(
        total=total,
        desc=desc,
        unit="frame",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )


@dataclass
class WalkthroughFrame:
    """One rendered step of the walk-through (what the bag stores for it, and more)."""

    index: int
    stamp_ns: int
    t_map_optical: np.ndarray  # (4, 4) camera pose
    t_map_base: np.ndarray  # (4, 4) base_link pose
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 = no return (noisy when config.noise)
    instance: np.ndarray  # (H, W) int32 ground-truth instance ids (0 = room)


class Walkthrough:
    """The room of ``config.seed`` and its rendered walk-through, frame by frame.

    ``frames()`` renders lazily (a renderer lives while it runs); ``visibility`` fills
    in as frames are rendered; ``document()`` then builds ``scene.json``."""

    def __init__(self, config: BagConfig) -> None:

        self.config = config
        self.spec = compose_room(config.seed, n_objects=config.objects)
        self.poses = walkthrough_poses(self.spec, config.frames, config.seed, loops=config.loops)
        self.base_poses = base_link_poses(self.poses)
        period_ns = round(1e9 / config.rate)
        self.stamps = [START_TIME_NS + i * period_ns for i in range(config.frames)]
        self.visibility: dict[int, list[int]] = {}
        self.intrinsics: Any = None

    def frames(self, progress: bool = False) -> Iterator[WalkthroughFrame]:
        from llava3d_ros.sim.render import RGBDRenderer
        from llava3d_ros.sim.scene import build_pyrender_scene

        cfg = self.config
        noise_rng = np.random.default_rng(cfg.seed + 104_729)
        renderer = RGBDRenderer(cfg.width, cfg.height)
        self.intrinsics = renderer.intrinsics
        try:
            scene = build_pyrender_scene(self.spec, renderer)
            bar = _progress(cfg.frames, "rendering", progress)
            for i, (pose, base, stamp) in enumerate(
                zip(self.poses, self.base_poses, self.stamps, strict=True)
            ):
                frame = renderer.render(scene, pose)
                depth = frame.depth
                if cfg.noise:
                    depth = add_depth_noise(depth, noise_rng)
                ids, px = np.unique(frame.instance, return_counts=True)
                for k, n in zip(ids.tolist(), px.tolist(), strict=True):
                    if k:
                        v = self.visibility.setdefault(int(k), [0, 0])
                        v[0] += 1
                        v[1] = max(v[1], int(n))
                yield WalkthroughFrame(i, stamp, pose, base, frame.rgb, depth, frame.instance)
                bar.update(1)
            bar.close()
        finally:
            renderer.close()

    def document(self, message_counts: dict[str, int], seconds: float) -> dict[str, Any]:
        """``scene.json``: ground truth, expressions and questions (after ``frames()``)."""

        cfg, intr, stamps = self.config, self.intrinsics, self.stamps
        if intr is None:
            from llava3d_ros.sim.render import default_intrinsics

            intr = default_intrinsics(cfg.width, cfg.height)
        viewpoint = Viewpoint.from_transform(self.base_poses[-1], forward_axis="x")
        visibility = {k: (v[0], v[1]) for k, v in self.visibility.items()}
        objects = ex.objects_from_spec(self.spec, visibility)
        absent = [(c, names[0]) for c, names in vocabulary("object").items()]
        return {
            "format": SCENE_FORMAT,
            "version": SCENE_VERSION,
            "generator": {**asdict(cfg), "seconds": round(seconds, 1)},
            "bag": {
                "storage": cfg.storage,
                "duration_s": (stamps[-1] - stamps[0]) / 1e9,
                "start_ns": stamps[0],
                "end_ns": stamps[-1],
                "message_counts": message_counts,
            },
            "topics": {
                "color": COLOR_TOPIC,
                "depth": DEPTH_TOPIC,
                "camera_info": INFO_TOPIC,
                "tf": TF_TOPIC,
                "tf_static": TF_STATIC_TOPIC,
            },
            "frames": dict(FRAMES),
            "camera": {
                "width": intr.width,
                "height": intr.height,
                "fx": intr.fx,
                "fy": intr.fy,
                "cx": intr.cx,
                "cy": intr.cy,
                "depth_encoding": "16UC1",
                "depth_noise": cfg.noise,
            },
            "viewpoint": {
                **ex.viewpoint_to_dict(viewpoint),
                "frame": FRAMES["base"],
                "stamp_ns": stamps[-1],
                "note": "base_link at the last frame, forward = +x (what the node answers from)",
            },
            "trajectory": [[round(float(v), 4) for v in p[:3, 3]] for p in self.poses],
            "objects": [o.to_dict() for o in objects],
            "expressions": ex.referring_expressions(objects, viewpoint),
            "questions": ex.spatial_questions(
                objects, viewpoint, cfg.seed, absent_categories=absent
            ),
            "spec": self.spec.to_dict(),
        }


def make_bag(
    out: str | Path,
    config: BagConfig = BagConfig(),
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Render the walk-through and write the bag directory ``out`` (rosbag2 + scene.json).
    Returns the scene document."""

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (use --force to replace it)")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    walk = Walkthrough(config)
    t_map_odom = map_to_odom()
    t_odom_map = np.linalg.inv(t_map_odom)
    t_base_link, t_link_opt = rig_transforms()
    stamps = walk.stamps
    m = _Messages()
    plugin = StoragePlugin.MCAP if config.storage == "mcap" else StoragePlugin.SQLITE3
    counts = {COLOR_TOPIC: 0, DEPTH_TOPIC: 0, INFO_TOPIC: 0, TF_TOPIC: 0, TF_STATIC_TOPIC: 0}
    try:
        with Writer(out, version=9, storage_plugin=plugin) as writer:
            ts = m.store
            conns = {
                TF_STATIC_TOPIC: writer.add_connection(
                    TF_STATIC_TOPIC,
                    "tf2_msgs/msg/TFMessage",
                    typestore=ts,
                    offered_qos_profiles=[_qos(True, 1)],
                ),
                TF_TOPIC: writer.add_connection(
                    TF_TOPIC,
                    "tf2_msgs/msg/TFMessage",
                    typestore=ts,
                    offered_qos_profiles=[_qos(False, 100)],
                ),
                INFO_TOPIC: writer.add_connection(
                    INFO_TOPIC,
                    "sensor_msgs/msg/CameraInfo",
                    typestore=ts,
                    offered_qos_profiles=[_qos(False, 10)],
                ),
                DEPTH_TOPIC: writer.add_connection(
                    DEPTH_TOPIC,
                    "sensor_msgs/msg/Image",
                    typestore=ts,
                    offered_qos_profiles=[_qos(False, 10)],
                ),
                COLOR_TOPIC: writer.add_connection(
                    COLOR_TOPIC,
                    "sensor_msgs/msg/Image",
                    typestore=ts,
                    offered_qos_profiles=[_qos(False, 10)],
                ),
            }

            def write(topic: str, log_ns: int, msg: Any) -> None:
                writer.write(conns[topic], log_ns, m.serialize(msg))
                counts[topic] += 1

            static = m.tf(
                [
                    m.transform(stamps[0], FRAMES["base"], FRAMES["camera_link"], t_base_link),
                    m.transform(stamps[0], FRAMES["camera_link"], FRAMES["optical"], t_link_opt),
                ]
            )
            write(TF_STATIC_TOPIC, stamps[0], static)
            for f in walk.frames(progress):
                stamp = f.stamp_ns
                intr = walk.intrinsics
                tf = m.tf(
                    [
                        m.transform(stamp, FRAMES["map"], FRAMES["odom"], t_map_odom),
                        m.transform(
                            stamp, FRAMES["odom"], FRAMES["base"], t_odom_map @ f.t_map_base
                        ),
                    ]
                )
                write(TF_TOPIC, stamp, tf)
                write(INFO_TOPIC, stamp + 1, m.camera_info(stamp, FRAMES["optical"], intr))
                write(
                    DEPTH_TOPIC,
                    stamp + 2,
                    m.image(stamp, FRAMES["optical"], depth_to_mm(f.depth), "16UC1"),
                )
                write(COLOR_TOPIC, stamp + 3, m.image(stamp, FRAMES["optical"], f.rgb, "rgb8"))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # never leave half a bag behind
        raise
    doc = walk.document(counts, time.monotonic() - t_start)
    (out / SCENE_FILE).write_text(json.dumps(doc, indent=1))
    return doc


def load_scene(bag_dir: str | Path) -> dict[str, Any]:
    """The ``scene.json`` of a bag directory made by :func:`make_bag`."""
    path = Path(bag_dir) / SCENE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {bag_dir} a bag made by make-bag?")
    doc = json.loads(path.read_text())
    if doc.get("format") != SCENE_FORMAT:
        raise ValueError(f"{path} is not a {SCENE_FORMAT} document")
    return doc


# ------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BagConfig()
    parser.add_argument("--seed", type=int, default=d.seed, help="decides room, objects, path")
    parser.add_argument("--out", required=True, type=Path, help="bag directory to create")
    parser.add_argument("--frames", type=int, default=d.frames, help="frames to render")
    parser.add_argument("--rate", type=float, default=d.rate, help="frame rate (Hz)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default=d.storage)
    parser.add_argument("--objects", type=int, default=d.objects, help="scanned objects")
    parser.add_argument("--width", type=int, default=d.width, help="image width (px)")
    parser.add_argument("--height", type=int, default=d.height, help="image height (px)")
    parser.add_argument("--noise", action="store_true", help="Kinect-like depth noise/holes")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> BagConfig:
    return BagConfig(
        seed=args.seed,
        frames=args.frames,
        rate=args.rate,
        storage=args.storage,
        width=args.width,
        height=args.height,
        objects=args.objects,
        noise=args.noise,
    )


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    doc = make_bag(
        args.out, config_from_args(args), overwrite=args.force, progress=not args.no_progress
    )
    visible = sum(o["visible"] for o in doc["objects"] if o["role"] == "object")
    print(
        f"wrote {args.out}: {doc['bag']['message_counts'][COLOR_TOPIC]} frames "
        f"({doc['bag']['duration_s']:.1f} s), {len(doc['objects'])} objects/furniture "
        f"({visible} objects seen), {len(doc['expressions'])} expressions, "
        f"{len(doc['questions'])} questions in {time.monotonic() - t0:.1f} s"
    )
    return 0
