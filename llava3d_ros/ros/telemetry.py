"""Node telemetry: counters, drops by reason, latencies and rates behind one lock, and
the messages built from them (``~/memory_stats``, ``/diagnostics``).

The sensor thread, the ingest worker and the query threads all write here while the
stats timer reads; every access holds the lock and readers get a copied snapshot, so a
reader never iterates a deque or dict another thread is changing (that raised "deque
mutated during iteration" under load, and the multi-threaded executor re-raised it).

Counters are monotonic for the lifetime of the node: deactivate/activate and
cleanup/configure do not reset them (a monitoring tool differencing two readings must
never see them go backwards).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from llava3d_interfaces.msg import MemoryStats
from std_msgs.msg import Header

if TYPE_CHECKING:
    from llava3d_ros.core.memory import VoxelPatchMemory

#: Per-keyframe stages whose medians /diagnostics reports (convert: ROS images -> arrays).
KEYFRAME_STAGES: tuple[str, ...] = ("convert", "lift", "encode", "fuse")
#: Query kinds whose latencies are kept.
QUERY_KINDS: tuple[str, ...] = ("ground", "ask", "describe")


@dataclass(frozen=True)
class TelemetrySnapshot:
    """A consistent copy of the telemetry at one instant."""

    counters: Mapping[str, int]
    drops: Mapping[str, int]
    latency_p50_s: Mapping[str, float]
    latency_p95_s: Mapping[str, float]
    input_rate_hz: float
    keyframe_rate_hz: float
    keyframe_max_s: float = 0.0  # the slowest keyframe of the node's lifetime
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def total_drops(self) -> int:
        return int(sum(self.drops.values()))


class Telemetry:
    """Thread-safe counters and timings of one node lifetime."""

    def __init__(
        self,
        window: int = 200,
        rate_window_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._keyframe_max_s = 0.0
        self._clock = clock
        self._rate_window_s = rate_window_s
        self._counters: Counter[str] = Counter()
        self._drops: Counter[str] = Counter()
        self._window = window
        self._latencies: dict[str, deque[float]] = {}
        self._input_times: deque[float] = deque(maxlen=1000)
        self._keyframe_times: deque[float] = deque(maxlen=1000)

    # ------------------------------------------------------------------ writers

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._drops[reason] += n

    def add_drops(self, counts: Mapping[str, int]) -> None:
        """Add drop counts reported elsewhere (the synchroniser hands over its deltas)."""
        with self._lock:
            for reason, n in counts.items():
                if n:
                    self._drops[reason] += int(n)

    def latency(self, kind: str, seconds: float) -> None:
        with self._lock:
            self._latency(kind, seconds)

    def _latency(self, kind: str, seconds: float) -> None:
        q = self._latencies.get(kind)
        if q is None:
            q = self._latencies[kind] = deque(maxlen=self._window)
        q.append(float(seconds))

    def input_frame(self, stream: str) -> None:
        """One message received on ``stream`` ("color", "depth"); colour sets the input rate."""
        with self._lock:
            self._counters[f"{stream}_received"] += 1
            if stream == "color":
                self._input_times.append(self._clock())

    def keyframe(self, total_s: float, stages: Mapping[str, float], slow: bool = False) -> None:
        """``slow``: the ingest worker found it slow enough to let its backlog fill (counted
        so that a burst of backlog drops can be matched with its cause)."""
        with self._lock:
            self._counters["keyframes"] += 1
            if slow:
                self._counters["slow_keyframes"] += 1
            self._keyframe_max_s = max(self._keyframe_max_s, float(total_s))
            self._keyframe_times.append(self._clock())
            self._latency("keyframe", total_s)
            for stage, seconds in stages.items():
                self._latency(stage, seconds)

    # ------------------------------------------------------------------ readers

    def snapshot(self) -> TelemetrySnapshot:
        with self._lock:
            now = self._clock()
            lat = {k: np.asarray(v, dtype=np.float64) for k, v in self._latencies.items() if v}
            return TelemetrySnapshot(
                counters=dict(self._counters),
                drops={k: v for k, v in sorted(self._drops.items()) if v},
                latency_p50_s={k: float(np.median(v)) for k, v in lat.items()},
                latency_p95_s={k: float(np.percentile(v, 95)) for k, v in lat.items()},
                input_rate_hz=self._rate(self._input_times, now),
                keyframe_rate_hz=self._rate(self._keyframe_times, now),
                keyframe_max_s=self._keyframe_max_s,
            )

    def _rate(self, times: Iterable[float], now: float) -> float:
        w = self._rate_window_s
        return sum(1 for t in times if now - t <= w) / w


# --------------------------------------------------------------------------- messages


def memory_stats_msg(
    header: Header,
    snap: TelemetrySnapshot,
    memory: VoxelPatchMemory | None,
    encoder: str,
    objects: tuple[int, int] = (0, 0),
) -> MemoryStats:
    """``~/memory_stats`` from a telemetry snapshot and the pipeline's memory (or None
    before configure); ``objects``: (objects, furniture) in the latest segmentation."""
    msg = MemoryStats(header=header)
    msg.num_objects, msg.num_furniture = (int(v) for v in objects)
    msg.frames_received = int(snap.counters.get("color_received", 0))
    msg.drop_reasons = list(snap.drops)
    msg.drop_counts = [int(v) for v in snap.drops.values()]
    if memory is None:
        return msg
    st = memory.stats()
    msg.num_voxels, msg.max_voxels = int(st.num_voxels), int(st.max_voxels)
    msg.voxel_size = float(st.voxel_size)
    msg.feature_dim = int(sum(st.feature_dims.values()))
    msg.encoder = encoder
    msg.memory_bytes = int(st.memory_bytes)
    msg.keyframes_integrated = int(st.frames_integrated)
    msg.voxels_evicted = int(st.voxels_evicted)
    if st.newest_stamp is not None:
        sec = int(st.newest_stamp // 1)
        msg.last_keyframe_stamp.sec = sec
        msg.last_keyframe_stamp.nanosec = min(round((st.newest_stamp - sec) * 1e9), 999_999_999)
    bounds = memory.bounds()
    if bounds is not None:
        lo, hi = (b.cpu().numpy().astype(float) for b in bounds)
        msg.bounds_min.x, msg.bounds_min.y, msg.bounds_min.z = (float(v) for v in lo)
        msg.bounds_max.x, msg.bounds_max.y, msg.bounds_max.z = (float(v) for v in hi)
    return msg


def diagnostics_msg(
    header: Header,
    snap: TelemetrySnapshot,
    active: bool,
    memory_voxels: int,
    pending_tf_frames: int,
    extra: Mapping[str, str] | None = None,
) -> DiagnosticArray:
    """One ``llava3d: memory`` status: rates, drops, latencies and the memory size."""

    def p50_ms(kind: str) -> str:
        return f"{1e3 * snap.latency_p50_s.get(kind, 0.0):.1f}"

    tf_drops = sum(v for k, v in snap.drops.items() if k.startswith("tf_"))
    values = {
        "input_rate_hz": f"{snap.input_rate_hz:.2f}",
        "keyframe_rate_hz": f"{snap.keyframe_rate_hz:.2f}",
        "tf_drops": str(tf_drops),
        "total_drops": str(snap.total_drops),
        "ground_latency_p50_ms": p50_ms("ground"),
        "keyframe_latency_p50_ms": p50_ms("keyframe"),
        "keyframe_latency_max_ms": f"{1e3 * snap.keyframe_max_s:.1f}",
        "slow_keyframes": str(snap.counters.get("slow_keyframes", 0)),
        # Frames the keyframe policy skipped (not drops): no motion, or a newer frame ready.
        "not_keyframe": str(snap.counters.get("not_keyframe", 0)),
        "superseded": str(snap.counters.get("superseded", 0)),
        **{f"keyframe_{s}_p50_ms": p50_ms(s) for s in KEYFRAME_STAGES},
        "memory_voxels": str(memory_voxels),
        "pending_tf_frames": str(pending_tf_frames),
        **snap.extra,
        **(extra or {}),
    }
    status = DiagnosticStatus(name="llava3d: memory", hardware_id="llava3d")
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    if not active:
        status.level, status.message = DiagnosticStatus.WARN, "inactive"
    elif snap.input_rate_hz == 0.0:
        status.level, status.message = DiagnosticStatus.WARN, "no colour images for 5 s"
    else:
        status.level, status.message = DiagnosticStatus.OK, "integrating"
    return DiagnosticArray(header=header, status=[status])
