"""Soak test: the node under a 30 Hz VGA RGB-D stream for a long time, as a robot runs it.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--warmup-minutes 5]
        [--frames 60] [--rate 30] [--width 640] [--height 480] [--seed 0] [--bag DIR]
        [--params FILE] [--node-env KEY=VALUE ...] [--report-s 60] [--out DIR]

(1) A walk-through bag is written with ``llava3d_ros.sim.bag.make_bag`` into a temp dir
    (``--frames`` at ``--rate``; ``--bag DIR`` reuses one). Its messages are read once.
(2) The node starts in its own process (``llava3d-ros up``) with its default parameters
    (``--params`` adds a params file), on the wall clock (no use_sim_time). DDS settings
    the environment leaves unset are filled in as ``llava3d-ros eval`` does (localhost
    Fast DDS profile with its 32 MiB shared-memory segment, a claimed ROS_DOMAIN_ID).
(3) A publisher thread replays the bag's frames in a loop at ``--rate``: each frame's
    images, camera info and transforms are stamped on the wall-clock schedule
    (start + k / rate, as a camera stamps at capture), so stamps continue across loops
    (no time jump, no /clock) and stay near the node clock. /tf_static is published once
    (transient local).
(4) Every ``--report-s`` seconds one line: frames published, frames the node received,
    keyframes integrated (and per second), drops by reason in that interval, voxels,
    TSDF blocks, objects, the node's RSS (VmRSS of /proc/<pid>/status; RssAnon in
    brackets), and from /diagnostics in that interval: keyframes slower than 0.5 s
    ("slow"), garbage-collector pauses of 100 ms or more ("gc") and the collector's total
    pause ("gc ms"), so that a burst of backlog drops can be matched with its cause, and
    keyframe candidates skipped because a newer frame was ready ("supsd", the keyframe
    policy's ``ingest.max_lag_s``; not drops).
    At the end: RSS at the end of the warm-up and at the end, their ratio, the peak,
    the least-squares RSS trend after the warm-up (MB/min), and the first
    report after which RSS never rose more than 10 % above it (the plateau), next to
    when the keyframes integrated reached ``objects.max_keyframes`` (the object layer's
    keyframe store grows until it holds that many).

What the RSS is made of (measured while writing this, see the final note of the task):
the object layer's keyframe store (~0.35 MB per keyframe, 300 kept), the TSDF and voxel
memory (bounded by the scene here), the ingest backlog (up to 2 x sync.queue_size frames
waiting when keyframes come faster than the encoder) and glibc heap that freed 1-2 MB
image buffers leave behind once its dynamic mmap threshold has risen
(``--node-env MALLOC_MMAP_THRESHOLD_=131072`` takes that part away: RSS ~1.3-1.4 GB
instead of ~1.9-2.0 GB at 30 Hz, but every large per-frame buffer then costs page
faults and keyframes/s fell from 7.5 to 5.4-6.3 on this 2-core CPU, with backlog drops;
so the node leaves glibc's default alone).

The last line is ``rss_growth_after_warmup: <final / end-of-warm-up>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava3d_ros.eval.evaluate import prepare_ros_environment
from llava3d_ros.sim import bag as B


@dataclass
class Frame:
    tf: Any  # tf2_msgs/TFMessage (map -> odom -> base_link)
    info: Any
    depth: Any
    color: Any


def load_frames(bag_dir: Path) -> tuple[Any, list[Frame]]:
    """(the /tf_static message, the frames in order) deserialised once."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from llava3d_ros.eval.replay import message_class

    static = None
    pending: dict[str, Any] = {}
    frames: list[Frame] = []
    with Reader(bag_dir) as reader:
        for conn, _log_ns, raw in reader.messages():
            msg = deserialize_message(bytes(raw), message_class(conn.msgtype))
            if conn.topic == B.TF_STATIC_TOPIC:
                static = msg
                continue
            key = {
                B.TF_TOPIC: "tf",
                B.INFO_TOPIC: "info",
                B.DEPTH_TOPIC: "depth",
                B.COLOR_TOPIC: "color",
            }[conn.topic]
            pending[key] = msg
            if key == "color":  # the bag writes tf, info, depth, colour per frame
                frames.append(Frame(**pending))
                pending = {}
    if static is None or not frames:
        raise RuntimeError(f"{bag_dir}: no /tf_static or no frames")
    return static, frames


def _stamp(stamp_ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


class Publisher:
    """Replays ``frames`` in a loop at ``rate`` Hz, restamped with the wall clock."""

    def __init__(self, node: Any, static: Any, frames: list[Frame], rate: float) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.tf = node.create_publisher(TFMessage, B.TF_TOPIC, 100)
        self.tf_static = node.create_publisher(TFMessage, B.TF_STATIC_TOPIC, latched)
        self.info = node.create_publisher(CameraInfo, B.INFO_TOPIC, reliable)
        self.depth = node.create_publisher(Image, B.DEPTH_TOPIC, reliable)
        self.color = node.create_publisher(Image, B.COLOR_TOPIC, reliable)
        self.static, self.frames, self.period = static, frames, 1.0 / rate
        self.published = 0
        self.late = 0  # frames sent more than one period behind schedule
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak_publisher", daemon=True)

    def subscribers_ready(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in (self.color, self.depth, self.tf))

    def start(self) -> None:
        self.tf_static.publish(self.static)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        t0, start_ns = time.monotonic(), time.time_ns()
        k = 0
        while not self._stop.is_set():
            f = self.frames[k % len(self.frames)]
            # Stamped on the nominal schedule, as a camera stamps at capture: when this
            # thread falls behind and catches up in a burst, frames stay 1/rate apart
            # (stamped at send time they came ~1 ms apart, and a colour image could pair
            # with the next frame's depth within the synchroniser's 20 ms slop).
            stamp = _stamp(start_ns + round(k * self.period * 1e9))
            for t in f.tf.transforms:
                t.header.stamp = stamp
            for msg in (f.info, f.depth, f.color):
                msg.header.stamp = stamp
            try:
                self.tf.publish(f.tf)
                self.info.publish(f.info)
                self.depth.publish(f.depth)
                self.color.publish(f.color)
            except Exception:  # the context is shutting down
                return
            self.published += 1
            k += 1
            delay = t0 + k * self.period - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -self.period:
                self.late += 1


class Monitor:
    """Keeps the latest ~/memory_stats and /diagnostics values."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from llava3d_interfaces.msg import MemoryStats

        self.lock = threading.Lock()
        self.stats: Any = None
        self.diag: dict[str, str] = {}
        node.create_subscription(MemoryStats, "/llava3d/memory_stats", self._on_stats, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_stats(self, msg: Any) -> None:
        with self.lock:
            self.stats = msg

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            if status.name == "llava3d: memory":
                with self.lock:
                    self.diag = {kv.key: kv.value for kv in status.values}

    def read(self) -> tuple[Any, dict[str, str]]:
        with self.lock:
            return self.stats, dict(self.diag)


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values["VmRSS"], values["RssAnon"]


def _delta(now: dict[str, str], before: dict[str, str], key: str) -> str:
    """A monotonic /diagnostics counter's change over the interval ('-': not reported)."""
    if key not in now:
        return "-"
    return str(int(float(now[key]) - float(before.get(key, 0))))


def _drops(stats: Any) -> Counter[str]:
    if stats is None:
        return Counter()
    return Counter(dict(zip(stats.drop_reasons, (int(c) for c in stats.drop_counts), strict=True)))


def plateau_index(values: list[float], tolerance: float = 0.10) -> int | None:
    """First index after which no value rises more than ``tolerance`` (relative) above
    it. The tolerance is wide on purpose: at 30 Hz VGA the node's RSS swings by about
    +-5 % from one minute to the next (glibc keeping and reusing freed image buffers)."""
    for i, v in enumerate(values):
        if all(w <= (1.0 + tolerance) * v for w in values[i:]):
            return i
    return None


def slope_per_minute(minutes: list[float], values: list[float]) -> float:
    """Least-squares slope (units per minute); 0 for fewer than two points."""
    if len(values) < 2:
        return 0.0
    mx, my = sum(minutes) / len(minutes), sum(values) / len(values)
    sxx = sum((x - mx) ** 2 for x in minutes)
    return sum((x - mx) * (y - my) for x, y in zip(minutes, values, strict=True)) / sxx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup-minutes", type=float, default=5.0)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bag", type=Path, default=None, help="reuse this bag directory")
    ap.add_argument("--params", type=Path, default=None, help="extra node params file")
    ap.add_argument(
        "--node-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the node process (e.g. MALLOC_ARENA_MAX=2)",
    )
    ap.add_argument("--report-s", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=None, help="directory for the node's log")
    ap.add_argument(
        "--keep-bag", action="store_true", help="keep the generated bag (about 1 GB) after the run"
    )
    args = ap.parse_args(argv)
    if args.warmup_minutes >= args.minutes:
        ap.error("--warmup-minutes must be shorter than --minutes")

    tmp = Path(tempfile.mkdtemp(prefix="llava3d_soak_"))
    try:
        return _soak(args, tmp)
    finally:
        # The generated bag is about 1 GB: left in /tmp after every run, a few soaks fill a disk.
        if args.keep_bag:
            print(f"bag kept: {tmp / 'bag'}", flush=True)
        else:
            shutil.rmtree(tmp / "bag", ignore_errors=True)


def _soak(args: argparse.Namespace, tmp: Path) -> int:
    env_set = prepare_ros_environment()
    out = args.out or tmp
    out.mkdir(parents=True, exist_ok=True)
    bag_dir = args.bag
    if bag_dir is None:
        bag_dir = tmp / "bag"
        t = time.monotonic()
        config = B.BagConfig(
            seed=args.seed, frames=args.frames, rate=args.rate, width=args.width, height=args.height
        )
        B.make_bag(bag_dir, config, progress=False)
        print(
            f"bag: {args.frames} frames {args.width}x{args.height} at {args.rate:g} Hz "
            f"in {time.monotonic() - t:.0f} s -> {bag_dir}",
            flush=True,
        )

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    static, frames = load_frames(bag_dir)
    node_env = dict(os.environ, PYTHONUNBUFFERED="1")
    node_env.update(kv.split("=", 1) for kv in args.node_env)
    log_path = out / "node.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "llava3d_ros.cli", "up"]
    if args.params is not None:
        cmd += ["--params", str(args.params)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=node_env)
    print(
        f"node pid {proc.pid}: {' '.join(cmd[1:])}; env {env_set or 'as set'} "
        f"{' '.join(args.node_env)}; log {log_path}",
        flush=True,
    )

    context = Context()
    # Python's own SIGINT handling: Ctrl-C ends the soak (and stops the node) at once;
    # rclpy's handler would only shut the context down and the loop would run on.
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = Node("llava3d_soak", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    monitor = Monitor(node)
    publisher = Publisher(node, static, frames, args.rate)
    rows: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 180.0
        while not (publisher.subscribers_ready() and monitor.read()[0] is not None):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not come up; see {log_path}")
            time.sleep(0.1)
        publisher.start()
        t0 = time.monotonic()
        last_stats, last_pub, last_t = monitor.read()[0], 0, t0
        last_diag = monitor.read()[1]
        header = (
            f"{'min':>5} {'pub':>6} {'recv':>6} {'kf':>5} {'kf/s':>5} {'voxels':>7} "
            f"{'tsdf':>6} {'obj':>4} {'rss [anon] MB':>15} {'slow':>4} {'gc':>3} "
            f"{'gc ms':>6} {'supsd':>5}  drops in the interval"
        )
        print(header, flush=True)
        end = t0 + args.minutes * 60.0
        next_report = t0 + args.report_s
        while time.monotonic() < end:
            time.sleep(max(0.0, min(next_report, end) - time.monotonic()))
            if proc.poll() is not None:
                raise RuntimeError(f"the node exited ({proc.returncode}); see {log_path}")
            now = time.monotonic()
            stats, diag = monitor.read()
            rss, anon = rss_mb(proc.pid)
            pub = publisher.published
            recv = int(stats.frames_received - last_stats.frames_received)
            kf = int(stats.keyframes_integrated - last_stats.keyframes_integrated)
            drops = _drops(stats) - _drops(last_stats)
            row = {
                "minute": (now - t0) / 60.0,
                "rss": rss,
                "anon": anon,
                "keyframes": int(stats.keyframes_integrated),
            }
            rows.append(row)
            print(
                f"{row['minute']:5.1f} {pub - last_pub:6d} {recv:6d} {kf:5d} "
                f"{kf / (now - last_t):5.2f} {stats.num_voxels:7d} "
                f"{diag.get('tsdf_blocks', '-'):>6} {diag.get('objects', '-'):>4} "
                f"{rss:7.0f} [{anon:5.0f}] {_delta(diag, last_diag, 'slow_keyframes'):>4} "
                f"{_delta(diag, last_diag, 'gc_long_pauses'):>3} "
                f"{_delta(diag, last_diag, 'gc_pause_total_ms'):>6} "
                f"{_delta(diag, last_diag, 'superseded'):>5}  {dict(drops) or '-'}",
                flush=True,
            )
            last_stats, last_pub, last_t, last_diag = stats, pub, now, diag
            next_report += args.report_s
    finally:
        publisher.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    if not rows:
        return 1
    stats = last_stats
    # The report nearest to the end of the warm-up (reports come every --report-s).
    base = min(rows, key=lambda r: abs(r["minute"] - args.warmup_minutes))
    final = rows[-1]
    rss_values = [r["rss"] for r in rows]
    plateau = plateau_index(rss_values)
    max_kf = _max_keyframes(args.params)
    full_at = next((r["minute"] for r in rows if r["keyframes"] >= max_kf), None)
    print(
        f"frames published: {publisher.published} ({publisher.late} late by > 1 period); "
        f"received by the node: {stats.frames_received}; keyframes: "
        f"{stats.keyframes_integrated}; drops: {dict(_drops(stats)) or 'none'}; skipped by "
        f"the keyframe policy: {last_diag.get('not_keyframe', '-')} not keyframes, "
        f"{last_diag.get('superseded', '-')} superseded by a newer ready frame"
    )
    print(
        f"RSS MB: after warm-up ({base['minute']:.1f} min) {base['rss']:.0f}, final "
        f"{final['rss']:.0f}, peak {max(rss_values):.0f}; RssAnon {base['anon']:.0f} -> "
        f"{final['anon']:.0f}"
    )
    print(
        f"slowest keyframe {last_diag.get('keyframe_latency_max_ms', '-')} ms, "
        f"{last_diag.get('slow_keyframes', '-')} over 0.5 s (causes: WARN lines in the node "
        f"log); garbage collector: {last_diag.get('gc_full_collections', '-')} full "
        f"collections, longest pause {last_diag.get('gc_pause_max_ms', '-')} ms"
    )
    after = [r for r in rows if r["minute"] >= base["minute"]]
    trend = slope_per_minute([r["minute"] for r in after], [r["rss"] for r in after])
    print(f"RSS trend after warm-up: {trend:+.1f} MB/min over {len(after)} reports")
    print(
        "RSS plateau (no later report > 10 % above): "
        + (f"from {rows[plateau]['minute']:.1f} min" if plateau is not None else "none")
        + f"; object keyframe store (objects.max_keyframes {max_kf}) full "
        + (f"at {full_at:.1f} min" if full_at is not None else "not yet")
    )
    print(f"rss_growth_after_warmup: {final['rss'] / base['rss']:.3f}")
    return 0


def _max_keyframes(params: Path | None) -> int:
    from llava3d_ros.core.objects.object_map import ObjectConfig

    value = ObjectConfig().max_keyframes
    if params is not None:
        import yaml

        doc = yaml.safe_load(params.read_text()) or {}
        for section in doc.values():
            objects = (section or {}).get("ros__parameters", {}).get("objects", {})
            value = int(objects.get("max_keyframes", value))
    return value


if __name__ == "__main__":
    sys.exit(main())
