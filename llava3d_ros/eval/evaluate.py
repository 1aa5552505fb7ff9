"""``llava3d-ros eval``: the real node, a bag replayed into it, queries from a client,
scores.

1. The node starts in its own process (``llava3d-ros up``) with ``use_sim_time``,
   reliable image subscriptions and the default grounding head when it is installed
   (``encoder.head_path``), plus any params file the user passes (``--params``, applied
   last, so it can override all of this).
2. This process replays the bag with ``/clock`` (:mod:`~llava3d_ros.eval.replay`) at
   ``--rate`` times real time, with a progress bar, then keeps ``/clock`` running and
   waits until ingest has drained: every published colour frame received and the node's
   counters (keyframes, drops, voxels) unchanged for ``DRAIN_QUIET_S``. When the node runs
   its object layer, it then waits (``objects_timeout_s``) for an object list
   (``/llava3d/objects``) whose ``data_stamp`` reaches the last integrated keyframe: the
   layer re-segments in a background worker, so it lags ingest by a second or two.
3. A separate client (:class:`~llava3d_ros.client.Llava3DClient`, its own ROS context and
   node) sends every referring expression as a ``/llava3d/ground`` goal and every
   question as a ``/llava3d/ask`` goal, one at a time, and times the round trips.
4. Scores (:mod:`~llava3d_ros.eval.metrics`, including the object instances against the
   scene's boxes) go to ``metrics.json``; every query with the node's raw answer, and
   the final object list, to ``results.json``; ``report.png`` and ``report.md`` show them
   (:mod:`~llava3d_ros.eval.report`). ``node.log`` keeps the node's output.

DDS environment: variables the user has set are kept. Otherwise this command selects
the package's localhost Fast DDS profile (``config/fastdds_localhost.xml``: 32 MiB
shared memory, loopback UDP; VGA frames do not fit the default segment), localhost-only
discovery, and claims a ``ROS_DOMAIN_ID`` in 201-232 that no other evaluation on this
machine holds, so evaluations never meet a robot's nodes or each other.

Queries file (YAML): a list of ``{query: str, target: object_id}`` (object ids as in
``scene.json``, e.g. ``mug_2``, or the bare instance id) and ``{question: str, answer:
str}``. YAML reads an unquoted ``Yes``/``No`` as a boolean and ``2`` as a number; both are
accepted (booleans become "Yes"/"No", integers counts, other numbers distances in
metres). Without ``--queries`` the bag's ``scene.json`` expressions and questions are
used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors import safe_open
from tqdm import tqdm

from llava3d_ros.client import Llava3DClient
from llava3d_ros.core.objects.object_map import ObjectConfig
from llava3d_ros.eval import metrics as M
from llava3d_ros.eval.replay import BagReplayer
from llava3d_ros.eval.report import write_report
from llava3d_ros.sim.bag import COLOR_TOPIC, load_scene
from llava3d_ros.sim.expressions import SceneObject, object_by_id

__all__ = [
    "DRAIN_QUIET_S",
    "OBJECTS_TIMEOUT_S",
    "EvalConfig",
    "EvalResult",
    "evaluate",
    "load_queries",
    "prepare_ros_environment",
    "run",
]

#: Ingest counts as drained once the node's counters stayed unchanged this long.
DRAIN_QUIET_S = 2.0
#: Longest wait after the drain for an object list that includes the last keyframe.
OBJECTS_TIMEOUT_S = 30.0
# The node writes one float keyframe stamp into MemoryStats and ObjectList through two
# conversions that can disagree by ~0.3 us; keyframes are >= one frame period apart.
_STAMP_TOL_NS = 1_000_000
_EVAL_DOMAINS = range(201, 233)  # clear of the tests' 101-200; Fast DDS allows <= 232
_REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------- environment


def package_file(*parts: str) -> Path:
    """A file shipped with the package: the source tree first (editable installs, a
    clone), then ``<prefix>/share/llava3d_ros`` (pip / colcon installs)."""
    for root in (_REPO_ROOT, Path(sys.prefix) / "share" / "llava3d_ros"):
        path = root.joinpath(*parts)
        if path.is_file():
            return path
    try:  # a sourced ROS 2 workspace
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory("llava3d_ros")).joinpath(*parts)
        if path.is_file():
            return path
    except Exception:
        pass
    raise FileNotFoundError(f"{'/'.join(parts)} is not installed with llava3d_ros")


def _claim_domain() -> int:
    from llava3d_ros.ros.domains import claim_domain_id

    return claim_domain_id(_EVAL_DOMAINS, "llava3d_ros_eval_domains")


def prepare_ros_environment(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Fill in the DDS settings the user left unset (see the module doc); returns what
    was set. Call before rclpy creates a context in this process."""
    if env is None:
        env = os.environ
    changed: dict[str, str] = {}

    def default(key: str, value: str) -> None:
        if not env.get(key):
            env[key] = value
            changed[key] = value

    profile = env.get("FASTRTPS_DEFAULT_PROFILES_FILE") or env.get("FASTDDS_DEFAULT_PROFILES_FILE")
    if not profile:
        profile = str(package_file("config", "fastdds_localhost.xml"))
    default("FASTRTPS_DEFAULT_PROFILES_FILE", profile)  # Fast DDS 2.x (Jazzy)
    default("FASTDDS_DEFAULT_PROFILES_FILE", profile)  # Fast DDS 3.x (Kilted)
    default("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if not env.get("ROS_LOCALHOST_ONLY"):
        default("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if not env.get("ROS_DOMAIN_ID"):
        default("ROS_DOMAIN_ID", str(_claim_domain()))
    return changed


# ------------------------------------------------------------------------- queries


def _answer_text(value: Any) -> str:
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f} m"
    return str(value).strip()


def load_queries(
    path: str | Path | None, scene: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(grounding queries, questions) from a YAML file, or the scene's own."""
    objects = [SceneObject.from_dict(o) for o in scene["objects"]]
    if path is None:
        ground = [dict(e) for e in scene.get("expressions", [])]
        ask = [dict(q) for q in scene.get("questions", [])]
    else:
        items = yaml.safe_load(Path(path).read_text()) or []
        if isinstance(items, Mapping):  # also accept {queries: [...], questions: [...]}
            items = [*items.get("queries", []), *items.get("questions", [])]
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a list of {{query, target}} / {{question, answer}}")
        ground, ask = [], []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise ValueError(f"{path}: item {i} is not a mapping: {item!r}")
            if "query" in item and "target" in item:
                ground.append({**item, "query": str(item["query"]), "target": item["target"]})
            elif "question" in item and "answer" in item:
                ask.append(
                    {
                        **item,
                        "question": str(item["question"]),
                        "answer": _answer_text(item["answer"]),
                    }
                )
            else:
                raise ValueError(
                    f"{path}: item {i} needs query+target or question+answer: {dict(item)!r}"
                )
    for g in ground:  # resolve targets now: a typo fails before the node starts
        g["target"] = object_by_id(objects, g["target"]).id
    return ground, ask


def fill_kinds(ground: list[dict[str, Any]], scene: Mapping[str, Any]) -> None:
    """Give queries without a ``kind`` the kind of the scene expression with the same
    text ("" when there is none), so a queries file (the demo's) is split by kind too."""
    kinds = {e["query"]: e.get("kind", "") for e in scene.get("expressions", [])}
    for g in ground:
        if not g.get("kind"):
            g["kind"] = kinds.get(g["query"], "")


# ------------------------------------------------------------------------- evaluation


@dataclass
class EvalConfig:
    bag: Path
    out: Path
    queries: Path | None = None
    rate: float = 1.0
    params: Path | None = None  # extra node params file, applied last
    ground_queries: list[dict[str, Any]] | None = None  # instead of a queries file
    questions: list[dict[str, Any]] | None = None
    progress: bool = True
    log_level: str = "info"
    start_timeout_s: float = 180.0
    drain_timeout_s: float = 600.0
    query_timeout_s: float = 120.0
    objects_timeout_s: float = OBJECTS_TIMEOUT_S
    stats_period_s: float = 0.25  # node param, in bag (sim) seconds
    verbose: bool = True


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    ground: list[dict[str, Any]] = field(default_factory=list)
    qa: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None
    objects: list[dict[str, Any]] = field(default_factory=list)  # the node's final list


def _head_in_use(params: dict[str, Any]) -> str:
    """The grounding head the node loads: the params' ``encoder.head_path``, else the
    shipped default (the node's own fallback, see ``ros.params``); "" when none."""
    from llava3d_ros.ros.params import encoder_config_from_params

    encoder = params.get("encoder", {})
    if encoder.get("backend", "dinov2_onnx") != "dinov2_onnx":
        return ""
    resolved = encoder_config_from_params("dinov2_onnx", dict(encoder))
    return str(resolved.get("head_path", ""))


def _node_params(cfg: EvalConfig, path: Path) -> dict[str, Any]:
    params: dict[str, Any] = {
        "use_sim_time": True,
        "qos_reliability": "reliable",
        "qos_depth": 10,
        "stats_period_s": cfg.stats_period_s,
        # The evaluation's own snapshot ("memory") goes next to its other outputs.
        "snapshot": {"dir": str(Path(cfg.out).resolve())},
    }
    # The node itself picks up the shipped grounding head (encoder.head_path default).
    doc = {"/**": {"ros__parameters": params}}
    if cfg.params is not None:
        user = yaml.safe_load(Path(cfg.params).read_text()) or {}
        for section in user.values():  # any node key: its ros__parameters win
            extra = (section or {}).get("ros__parameters", {})
            _deep_update(params, extra)

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return params


def _deep_update(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        elif "." in k:  # dotted keys ("encoder.head_path") nest like the node's names
            head, rest = k.split(".", 1)
            node = dst.setdefault(head, {})
            _deep_update(node, {rest: v})
        else:
            dst[k] = v


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _save_snapshot(monitor: Any, path: Path, cfg: EvalConfig) -> np.ndarray:
    """Ask the node to save its memory as snapshot ``path.stem`` (its snapshot directory
    is the output directory); its voxel centroids (N, 3), or the last memory cloud's
    points when the service fails."""
    from llava3d_interfaces.srv import SaveMemory

    client = monitor.node.create_client(SaveMemory, "/llava3d/save_memory")
    try:
        if client.wait_for_service(timeout_sec=30.0):
            future = client.call_async(SaveMemory.Request(name=path.stem))
            deadline = time.monotonic() + cfg.query_timeout_s
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            if future.done() and future.result() is not None and future.result().success:
                with safe_open(str(path), framework="np") as f:
                    return np.asarray(f.get_tensor("centroids"), dtype=np.float64).reshape(-1, 3)
            _say(cfg, f"save_memory failed: {future.result() if future.done() else 'timeout'}")
    finally:
        monitor.node.destroy_client(client)
    if monitor.cloud is not None:
        return _cloud_points(monitor.cloud)[0]
    return np.zeros((0, 3))


def _cloud_points(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float xyz and (N, 3) uint8 colours of a PointCloud2 (x, y, z, rgb)."""
    offsets = {f.name: f.offset for f in msg.fields}
    n = int(msg.width) * int(msg.height)
    if n == 0 or not {"x", "y", "z"} <= set(offsets):
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    buf = np.frombuffer(bytes(msg.data), np.uint8).reshape(n, int(msg.point_step))

    def col(name: str, dtype: str) -> np.ndarray:
        o = offsets[name]
        return buf[:, o : o + 4].copy().view(dtype).reshape(-1)

    xyz = np.column_stack([col("x", "<f4"), col("y", "<f4"), col("z", "<f4")]).astype(float)
    if "rgb" in offsets:
        rgb = col("rgb", "<u4")
        colors = np.column_stack([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255]).astype(np.uint8)
    else:
        colors = np.full((n, 3), 128, np.uint8)
    return xyz, colors


def _objects_expected(params: Mapping[str, Any]) -> bool:
    """Does the node publish ``~/objects``? ``objects.enabled`` and ``objects_period_s``
    > 0, with the node's defaults where the params leave them unset."""
    from llava3d_ros.ros.params import OutputSettings

    section = params.get("objects")
    enabled = (section if isinstance(section, Mapping) else {}).get(
        "enabled", ObjectConfig().enabled
    )
    period = params.get("objects_period_s", OutputSettings().objects_period_s)
    return bool(enabled) and float(period) > 0


def _stamp_ns(t: Any) -> int:
    return int(t.sec) * 10**9 + int(t.nanosec)


def objects_include(data_stamp_ns: int, keyframe_stamp_ns: int) -> bool:
    """Does a segmentation with ``data_stamp`` include the keyframe stamped so?"""
    return data_stamp_ns >= keyframe_stamp_ns - _STAMP_TOL_NS


def _object_record(o: Any) -> dict[str, Any]:
    """One llava3d_interfaces/SceneObject as JSON (box as centre, size, yaw)."""
    p, q = o.center.position, o.center.orientation
    box = M.box_from_pose((p.x, p.y, p.z), (o.size.x, o.size.y, o.size.z), (q.x, q.y, q.z, q.w))
    return {
        "id": int(o.id),
        "role": str(o.role),
        "label": str(o.label),
        "label_score": round(float(o.label_score), 4),
        "top_labels": [
            [str(n), round(float(v), 4)] for n, v in zip(o.top_labels, o.top_scores, strict=False)
        ],
        "color": str(o.color),
        "center": [round(float(v), 4) for v in box.center],
        "size": [round(float(v), 4) for v in box.size],
        "yaw": round(box.yaw, 4),
        "support_id": int(o.support_id),
        "num_points": int(o.num_points),
        "num_observations": int(o.num_observations),
    }


class _Monitor:
    """The evaluator's own node: the replayer's publishers plus the node's stats, memory
    cloud and object list, spun in a background thread."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from llava3d_interfaces.msg import MemoryStats, ObjectList
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import PointCloud2

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node("llava3d_eval_player", context=self.context)
        self.lock = threading.Lock()
        self.stats: Any = None
        self.stats_wall = 0.0
        self.stats_seq = 0
        self.cloud: Any = None
        self.cloud_wall = 0.0
        self.diagnostics: dict[str, str] = {}
        self.objects: Any = None  # the latest llava3d_interfaces/ObjectList
        self.node.create_subscription(MemoryStats, "/llava3d/memory_stats", self._on_stats, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.node.create_subscription(
            PointCloud2, "/llava3d/memory_cloud", self._on_cloud, QoSProfile(depth=2)
        )
        self.node.create_subscription(
            ObjectList, "/llava3d/objects", self._on_objects, QoSProfile(depth=2)
        )
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # torn down at close()
            self.executor.spin()

    def _on_stats(self, msg: Any) -> None:
        with self.lock:
            self.stats, self.stats_wall = msg, time.monotonic()
            self.stats_seq += 1

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name == "llava3d: memory":
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}

    def _on_cloud(self, msg: Any) -> None:
        with self.lock:
            self.cloud, self.cloud_wall = msg, time.monotonic()

    def _on_objects(self, msg: Any) -> None:
        with self.lock:
            self.objects = msg

    def latest_objects(self) -> Any:
        with self.lock:
            return self.objects

    def latest(self) -> tuple[Any, float]:
        with self.lock:
            return self.stats, self.stats_wall

    def latest_seq(self) -> tuple[Any, float, int]:
        with self.lock:
            return self.stats, self.stats_wall, self.stats_seq

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def _drops(stats: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in zip(stats.drop_reasons, stats.drop_counts, strict=True)}


def _say(cfg: EvalConfig, text: str) -> None:
    if cfg.verbose:
        print(text, flush=True)


class _NodeProcess:
    def __init__(self, params_file: Path, log_path: Path, log_level: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        args = [
            sys.executable,
            "-m",
            "llava3d_ros.cli",
            "up",
            "--params",
            str(params_file),
            "--log-level",
            log_level,
        ]
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def _wait(predicate: Any, timeout: float, what: str, node: _NodeProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if node is not None and not node.alive():
            raise RuntimeError(f"the node exited while waiting for {what}:\n{node.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Run one evaluation (see the module doc); writes the outputs under ``cfg.out``."""
    t_total = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = load_scene(cfg.bag)
    objects = [SceneObject.from_dict(o) for o in scene["objects"]]
    if cfg.ground_queries is not None or cfg.questions is not None:
        ground_q = [dict(g) for g in cfg.ground_queries or []]
        for g in ground_q:
            g["target"] = object_by_id(objects, g["target"]).id
        ask_q = [{**q, "answer": _answer_text(q["answer"])} for q in cfg.questions or []]
    else:
        ground_q, ask_q = load_queries(cfg.queries, scene)
    fill_kinds(ground_q, scene)
    env_set = prepare_ros_environment()
    params_file = out / "node_params.yaml"
    params = _node_params(cfg, params_file)
    _say(
        cfg,
        f"bag {cfg.bag}: {scene['bag']['message_counts'][COLOR_TOPIC]} frames, "
        f"{scene['bag']['duration_s']:.1f} s; {len(ground_q)} grounding queries, "
        f"{len(ask_q)} questions; ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')}",
    )

    node = _NodeProcess(params_file, out / "node.log", cfg.log_level)
    monitor: _Monitor | None = None
    client: Llava3DClient | None = None
    ticker = None
    replayer: BagReplayer | None = None
    timings: dict[str, float] = {}
    try:
        monitor = _Monitor()
        replayer = BagReplayer(monitor.node, cfg.bag, cfg.rate)
        # Pre-roll: a sim-time node's timers (ingest, stats) fire only while /clock moves;
        # held 1 s short of the bag so no frame is "from the future" when it starts.
        ticker = replayer.clock_ticker(
            replayer.start_ns - 600 * 10**9, until_ns=replayer.start_ns - 10**9
        )
        client = Llava3DClient()
        t0 = time.monotonic()
        _wait(
            lambda: client.wait_for_server(timeout=0.5),
            cfg.start_timeout_s,
            "the node's action servers",
            node,
        )
        _wait(
            lambda: monitor.latest()[0] is not None,
            cfg.start_timeout_s,
            "the node's memory stats (active)",
            node,
        )
        _wait(replayer.subscribers_ready, cfg.start_timeout_s, "the node's subscriptions", node)
        timings["node_start_s"] = time.monotonic() - t0
        _say(
            cfg,
            f"node ready in {timings['node_start_s']:.1f} s "
            f"(head: {_head_in_use(params) or 'none'})",
        )
        ticker.stop()
        ticker = None

        # Replay with a progress bar over colour frames.

        n_color = replayer.counts.get(COLOR_TOPIC, 0)
        bar = tqdm(
            total=n_color,
            desc=f"replay x{cfg.rate:g}",
            unit="frame",
            disable=not cfg.progress,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
        )

        def on_message(topic: str, _stamp: int) -> None:
            if topic != COLOR_TOPIC:
                return
            bar.update(1)
            stats, _ = monitor.latest()
            if stats is not None:
                bar.set_postfix(
                    keyframes=int(stats.keyframes_integrated),
                    voxels=int(stats.num_voxels),
                    drops=sum(int(c) for c in stats.drop_counts),
                    refresh=False,
                )

        replay = replayer.play(on_message)
        bar.close()
        ticker = replayer.clock_ticker(replayer.end_ns)  # post-roll: keep timers running
        published = replay.messages.get(COLOR_TOPIC, 0)

        # Drained: all frames in and the counters quiet over several *fresh* stats
        # messages (a busy node publishes stats late: a stale message proves nothing).
        t_end = time.monotonic()
        state: dict[str, Any] = {"key": None, "since": t_end, "seq": -1, "fresh": 0}

        def drained() -> bool:
            stats, wall, seq = monitor.latest_seq()
            if stats is None or wall < t_end or seq == state["seq"]:
                return False
            state["seq"] = seq
            key = (
                int(stats.frames_received),
                int(stats.keyframes_integrated),
                sum(int(c) for c in stats.drop_counts),
                int(stats.num_voxels),
            )
            if key != state["key"]:
                state["key"], state["since"], state["fresh"] = key, wall, 0
                return False
            state["fresh"] += 1
            all_in = key[0] >= published or wall - t_end > 10.0  # lost frames never come
            return all_in and state["fresh"] >= 3 and wall - state["since"] >= DRAIN_QUIET_S

        _wait(drained, cfg.drain_timeout_s, "ingest to drain", node)
        t_drained = time.monotonic()
        t_last_change = state["since"]  # when the node last integrated or dropped
        timings["replay_wall_s"] = replay.wall_s
        timings["drain_wait_s"] = t_drained - t_end
        stats, _ = monitor.latest()
        # The memory's voxels for the report: a snapshot through the node's own service
        # (the memory cloud topic is subsampled and published on a timer).
        cloud_xyz = _save_snapshot(monitor, out / "memory.safetensors", cfg)
        drops = _drops(stats)
        _say(
            cfg,
            f"ingest drained: {stats.frames_received}/{published} frames received, "
            f"{stats.keyframes_integrated} keyframes, {stats.num_voxels} voxels, "
            f"drops {drops or 'none'}",
        )
        objects_msg, objects_complete = _wait_for_objects(monitor, node, cfg, params)
        timings["objects_wait_s"] = time.monotonic() - t_drained
        object_records = (
            [_object_record(o) for o in objects_msg.objects] if objects_msg is not None else []
        )
        labels = {r["id"]: r["label"] for r in object_records}

        # Queries, one at a time, from the separate client.
        t_q = time.monotonic()
        ground_records = [_ground_one(client, g, objects, cfg, labels) for g in ground_q]
        qa_records = [_ask_one(client, q, cfg) for q in ask_q]
        timings["queries_wall_s"] = time.monotonic() - t_q
        peak_rss = _peak_rss_mb(node.proc.pid)
        with monitor.lock:
            diagnostics = dict(monitor.diagnostics)
    finally:
        if ticker is not None:
            ticker.stop()
        if replayer is not None:
            replayer.close()
        if client is not None:
            client.close()
        if monitor is not None:
            monitor.close()
        node_code = node.stop()

    # Wall time from the first message to the node's last counter change (the quiet
    # period that proves the drain is not ingest time).
    ingest_wall = max(t_last_change, replay.wall_end) - replay.wall_start
    ingest = {
        "frames_received": int(stats.frames_received),
        "keyframes": int(stats.keyframes_integrated),
        "keyframes_per_s": round(int(stats.keyframes_integrated) / max(ingest_wall, 1e-9), 3),
        "dropped": int(sum(drops.values())),
        "frames_published": int(published),
        "not_received": max(0, int(published) - int(stats.frames_received)),
        "drop_reasons": drops,
        "ingest_wall_s": round(ingest_wall, 2),
        "replay_lag_max_s": round(replay.max_lag_s, 3),
        # The node's own per-keyframe stage medians (ms), from its last /diagnostics.
        "keyframe_p50_ms": {
            k.removeprefix("keyframe_").removesuffix("_p50_ms"): float(v)
            for k, v in diagnostics.items()
            if k.startswith("keyframe_") and k.endswith("_p50_ms")
        },
    }
    memory = {
        "voxels": int(stats.num_voxels),
        "peak_rss_mb": None if peak_rss is None else round(peak_rss, 1),
        "memory_bytes": int(stats.memory_bytes),
        "voxel_size_m": round(float(stats.voxel_size), 4),
    }
    timings["total_s"] = time.monotonic() - t_total
    errors: dict[str, int] = {}
    for r in [*ground_records, *qa_records]:
        errors[r["error"]] = errors.get(r["error"], 0) + 1
    extra = {
        "run": {
            "bag": str(cfg.bag),
            "scene_seed": scene["generator"]["seed"],
            "bag_frames": scene["bag"]["message_counts"][COLOR_TOPIC],
            "bag_duration_s": scene["bag"]["duration_s"],
            "rate": cfg.rate,
            "queries": str(cfg.queries) if cfg.queries else "scene.json",
            "encoder": str(stats.encoder),
            "head_path": _head_in_use(params),
            "error_codes": errors,
            "node_exit_code": node_code,
            "dds_defaults_applied": sorted(env_set),
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
        }
    }
    objects_m = M.objects_summary(
        object_records if objects_msg is not None else None,
        scene["objects"],
        update_time_s=None if objects_msg is None else float(objects_msg.update_time_s),
        update_count=None if objects_msg is None else int(objects_msg.update_count),
    )
    # Whether the scored list includes the last keyframe (None: the node published none).
    objects_m["includes_last_keyframe"] = objects_complete
    metrics = M.summarize(ground_records, qa_records, ingest, memory, extra, objects_m)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {"ground": ground_records, "spatial_qa": qa_records, "objects": object_records},
            indent=1,
        )
        + "\n"
    )

    write_report(out, scene, metrics, ground_records, qa_records, cloud_xyz, object_records)
    return EvalResult(metrics, ground_records, qa_records, out, object_records)


def _wait_for_objects(
    monitor: _Monitor, node: _NodeProcess, cfg: EvalConfig, params: Mapping[str, Any]
) -> tuple[Any, bool | None]:
    """The node's object list once it includes the last integrated keyframe, and whether
    it does: (None, None) when the node runs no object layer. A timeout is reported and
    the latest list is scored anyway (``objects.includes_last_keyframe`` false), since
    the grounding and QA numbers are still worth having."""
    if not _objects_expected(params):
        return monitor.latest_objects(), None  # object layer off: no list is coming

    def caught_up() -> bool:
        stats, msg = monitor.latest()[0], monitor.latest_objects()
        # Caught up: the last keyframe segmented and its best-view crops encoded (what a
        # running node reaches seconds after the robot stops).
        return (
            stats is not None
            and msg is not None
            and objects_include(_stamp_ns(msg.data_stamp), _stamp_ns(stats.last_keyframe_stamp))
            and int(msg.pending_crops) == 0
        )

    try:
        _wait(caught_up, cfg.objects_timeout_s, "the object layer", node)
        return monitor.latest_objects(), True
    except TimeoutError:
        stats, msg = monitor.latest()[0], monitor.latest_objects()
        last = _stamp_ns(stats.last_keyframe_stamp) * 1e-9 if stats is not None else float("nan")
        if msg is None:
            what = "no object list arrived on /llava3d/objects"
        else:
            what = (
                f"the newest object list (/llava3d/objects, update {msg.update_count}) "
                f"has data_stamp {_stamp_ns(msg.data_stamp) * 1e-9:.3f} s (last "
                f"integrated keyframe {last:.3f} s) and {msg.pending_crops} crops "
                "pending"
            )
        print(
            f"warning: after {cfg.objects_timeout_s:.0f} s {what}; scoring the object list "
            f"as it is (see node.log)",
            file=sys.stderr,
            flush=True,
        )
        return msg, False


def _ground_one(
    client: Any,
    g: Mapping[str, Any],
    objects: Sequence[SceneObject],
    cfg: EvalConfig,
    labels: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """One grounding goal scored; ``labels``: instance id -> label of the object list."""
    target = object_by_id(objects, g["target"])
    t0 = time.perf_counter()
    r = client.ground(g["query"], timeout=cfg.query_timeout_s)
    latency = (time.perf_counter() - t0) * 1e3
    pred = None
    boxes = []
    for o in r.objects:
        box = M.box_from_pose(o.center, o.size, o.orientation_xyzw)
        boxes.append(
            {
                "center": [round(float(v), 4) for v in box.center],
                "size": [round(float(v), 4) for v in box.size],
                "yaw": round(box.yaw, 4),
                "score": round(float(o.score), 4),
                "label": o.label,
                "num_voxels": int(o.num_voxels),
                "instance_id": int(o.instance_id),
            }
        )
    if r.ok and r.objects:
        top = r.objects[0]
        pred = M.box_from_pose(top.center, top.size, top.orientation_xyzw)
    scores = M.score_grounding(pred, target.box(), target.aabb_min, target.aabb_max)
    return {
        "query": g["query"],
        "target": target.id,
        "kind": g.get("kind", ""),
        "error": r.error_name,
        "message": r.message,
        "frame_id": r.frame_id,
        "boxes": boxes,
        # The top box's object instance (0: a voxel-relevancy region) and its label.
        "instance_id": boxes[0]["instance_id"] if boxes else 0,
        "instance_label": (labels or {}).get(boxes[0]["instance_id"], "") if boxes else "",
        "iou": round(scores["iou"], 4),
        "iou_oriented": round(scores["iou_oriented"], 4),
        "hit_at_0_25": scores["hit_at_0_25"],
        "hit_at_0_5": scores["hit_at_0_5"],
        "latency_ms": round(latency, 2),
        "server_ms": round(r.query_time_s * 1e3, 2),
    }


def _ask_one(client: Any, q: Mapping[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = client.ask(q["question"], timeout=cfg.query_timeout_s)
    latency = (time.perf_counter() - t0) * 1e3
    return {
        "question": q["question"],
        "expected": q["answer"],
        "kind": q.get("kind", ""),
        "answer": r.answer,
        "error": r.error_name,
        "message": r.message,
        "answered_by": r.answered_by,
        "correct": M.score_answer(q["answer"], r.answer, M.answered(r.error_name, q["answer"])),
        "latency_ms": round(latency, 2),
        "server_ms": round(r.query_time_s * 1e3, 2),
    }


# ------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", required=True, type=Path, help="bag directory from make-bag")
    parser.add_argument("--queries", type=Path, help="YAML queries (default: scene.json's)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--rate", type=float, default=1.0, help="playback rate (x real time)")
    parser.add_argument("--params", type=Path, help="extra node params file (applied last)")
    parser.add_argument("--log-level", default="info", help="the node's ROS log level")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def print_summary(metrics: Mapping[str, Any]) -> None:
    g, qa, ing = metrics["grounding"], metrics["spatial_qa"], metrics["ingest"]
    lat, mem = metrics["latency_ms"], metrics["memory"]

    def f(x: Any, fmt: str = "{:.3f}") -> str:
        return "n/a" if x is None else fmt.format(x)

    print(
        f"grounding   n={g['n']}  Acc@0.25={f(g['acc_at_0_25'])}  Acc@0.5={f(g['acc_at_0_5'])}"
        f"  median IoU={f(g['median_iou'])}"
    )
    kinds = "  ".join(
        f"{k} {f(v['acc_at_0_25'], '{:.2f}')} (n={v['n']})" for k, v in g.get("by_kind", {}).items()
    )
    print(f"  by kind   Acc@0.25: {kinds}")
    print(f"spatial QA  n={qa['n']}  accuracy={f(qa['accuracy'])}")
    # Only the types asked; yes/no and either/or sit on a 50 % coin-flip floor.
    types = "  ".join(
        f"{k} {f(v['accuracy'], '{:.2f}')} (n={v['n']})"
        for k, v in qa.get("by_type", {}).items()
        if v["n"]
    )
    print(f"  by type   {types or 'none'}; chance floor {f(qa.get('chance_floor'), '{:.2f}')}")
    o = metrics.get("objects")
    if o is not None and o.get("n_pred_objects") is not None:
        print(
            f"objects     {o['n_pred_objects']} objects + {o['n_pred_furniture']} furniture "
            f"segmented vs {o['n_gt_objects']} + {o['n_gt_furniture']} visible: "
            f"recall@0.25={f(o['object_recall_at_0_25'])}  "
            f"precision@0.25={f(o['object_precision_at_0_25'])}  "
            f"AP@0.25={f(o['object_ap_at_0_25'])}  label acc={f(o['label_accuracy'])}"
        )
    elif o is not None:
        print("objects     none published (object layer off)")
    print(
        f"ingest      {ing['frames_received']}/{ing['frames_published']} frames, "
        f"{ing['keyframes']} keyframes ({ing['keyframes_per_s']:.2f}/s), "
        f"{ing['dropped']} dropped"
    )
    print(
        f"latency     ground p50 {f(lat['ground_p50'], '{:.0f}')} ms, "
        f"p95 {f(lat['ground_p95'], '{:.0f}')} ms; ask p50 {f(lat['ask_p50'], '{:.0f}')} ms"
    )
    print(f"memory      {mem['voxels']} voxels, node peak RSS {f(mem['peak_rss_mb'], '{:.0f}')} MB")
    codes = metrics.get("run", {}).get("error_codes", {})
    if set(codes) - {"NONE"}:
        print(f"error codes {codes}")  # e.g. MODEL_UNAVAILABLE when no grounding head is set


def run(args: argparse.Namespace) -> int:
    cfg = EvalConfig(
        bag=args.bag,
        out=args.out,
        queries=args.queries,
        rate=args.rate,
        params=args.params,
        log_level=args.log_level,
        progress=not args.no_progress,
    )
    result = evaluate(cfg)
    print_summary(result.metrics)
    print(
        f"wrote {args.out}/metrics.json, report.png, report.md, results.json "
        f"in {result.metrics['run']['timings_s']['total_s']:.0f} s"
    )
    return 0
