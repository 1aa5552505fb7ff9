"""``report.png`` and ``report.md`` of a bag evaluation.

``report.png``: left, a top-down view of the room in the map frame: the node's memory
voxels (centroids from a snapshot the node saves at the end, coloured by height), ground-truth
boxes of the objects (green, with their ids) and furniture (grey), the node's object
instances (thin outlines, magenta: objects, orange: furniture, "#id label"), the camera
path and the final viewpoint, and every query's top predicted box (blue: a hit at IoU
0.25, red dashed: a miss) numbered like the table; right, the scores (overall, grounding
by expression kind, QA by question type with its coin-flip floor, instance segmentation)
and one line per query and question with hit/miss. ``report.md``: the same numbers as
tables, plus the object list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report"]

_HIT = "#1f5fbf"
_MISS = "#d62728"
_GT = "#2ca02c"
# The node's instances: apart from ground truth, query boxes and the viridis voxels.
_INST_OBJECT = "#e0119d"
_INST_FURNITURE = "#ff7f0e"


def _footprint(center: Sequence[float], size: Sequence[float], yaw: float) -> np.ndarray:
    hx, hy = size[0] / 2, size[1] / 2
    local = np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy], [hx, hy]])
    c, s = math.cos(yaw), math.sin(yaw)
    return local @ np.array([[c, s], [-s, c]]) + np.asarray(center[:2])


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt(x: Any, spec: str = "{:.3f}") -> str:
    return "n/a" if x is None else spec.format(x)


def _by_kind_text(g: Mapping[str, Any]) -> str:
    return "  ".join(
        f"{k} {_fmt(v['acc_at_0_25'], '{:.2f}')} (n={v['n']})"
        for k, v in g.get("by_kind", {}).items()
    )


def _by_type_text(qa: Mapping[str, Any]) -> str:
    short = {"yes_no": "y/n", "either_or": "either", "distance": "dist", "count": "count"}
    return "  ".join(
        f"{short.get(k, k)} {_fmt(v['accuracy'], '{:.2f}')} (n={v['n']})"
        for k, v in qa.get("by_type", {}).items()
        if v["n"]
    )


def _objects_lines(o: Mapping[str, Any] | None) -> list[str]:
    """The object metrics in two short lines (the side panel is narrow)."""
    if not o or o.get("n_pred_objects") is None:
        return ["Objects: none published (object layer off)"]
    return [
        f"Objects {o['n_pred_objects']}+{o['n_pred_furniture']} segmented vs "
        f"{o['n_gt_objects']}+{o['n_gt_furniture']} visible (objects+furniture); "
        f"label acc {_fmt(o['label_accuracy'], '{:.2f}')}",
        f"  recall@0.25 obj {_fmt(o['object_recall_at_0_25'], '{:.2f}')} / furn "
        f"{_fmt(o['furniture_recall_at_0_25'], '{:.2f}')}  precision@0.25 "
        f"{_fmt(o['object_precision_at_0_25'], '{:.2f}')}  AP@0.25 "
        f"{_fmt(o['object_ap_at_0_25'], '{:.2f}')}  AP@0.5 {_fmt(o['object_ap_at_0_5'], '{:.2f}')}",
    ]


def write_report(
    out: str | Path,
    scene: Mapping[str, Any],
    metrics: Mapping[str, Any],
    ground: Sequence[Mapping[str, Any]],
    qa: Sequence[Mapping[str, Any]],
    cloud_xyz: np.ndarray | None = None,
    objects: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.md`` into ``out``; returns their paths.
    ``objects``: the node's final object list (``results.json``'s ``objects``)."""
    out = Path(out)
    png = out / "report.png"
    md = out / "report.md"
    _plot(png, scene, metrics, ground, qa, cloud_xyz, objects or [])
    md.write_text(_markdown(scene, metrics, ground, qa, objects or []))
    return png, md


# ------------------------------------------------------------------------- figure


def _plot(
    path: Path,
    scene: Mapping[str, Any],
    metrics: Mapping[str, Any],
    ground: Sequence[Mapping[str, Any]],
    qa: Sequence[Mapping[str, Any]],
    cloud: np.ndarray | None,
    instances: Sequence[Mapping[str, Any]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig = plt.figure(figsize=(17, 9.5), dpi=110)
    ax = fig.add_axes((0.035, 0.11, 0.445, 0.83))
    ax.set_anchor("E")  # equal aspect shrinks the map: keep it next to the colour bar
    cax = fig.add_axes((0.488, 0.25, 0.008, 0.5))
    side = fig.add_axes((0.545, 0.02, 0.45, 0.96))
    side.axis("off")

    sx, sy = scene["spec"]["room_size"][:2]
    ax.add_patch(plt.Rectangle((-sx / 2, -sy / 2), sx, sy, fill=False, lw=1.5, ec="black"))
    if cloud is not None and len(cloud):
        z = cloud[:, 2]
        order = np.argsort(z)  # higher voxels drawn last (table tops over the floor)
        sc = ax.scatter(
            cloud[order, 0],
            cloud[order, 1],
            c=z[order],
            cmap="viridis",
            s=3,
            vmin=0.0,
            vmax=max(1.5, float(np.percentile(z, 99))),
            alpha=0.6,
            linewidths=0,
            rasterized=True,
        )
        fig.colorbar(sc, cax=cax).set_label("memory voxel height z (m)")
    else:
        cax.axis("off")
    for o in scene["objects"]:
        fp = _footprint(o["center"], o["size"], o["yaw"])
        if o["role"] == "furniture":
            ax.plot(fp[:, 0], fp[:, 1], color="0.45", lw=1.2)
            ax.text(
                o["center"][0],
                o["center"][1],
                o.get("name") or o["id"],
                color="0.35",
                fontsize=8,
                ha="center",
                va="center",
                style="italic",
            )
        else:
            ax.fill(fp[:, 0], fp[:, 1], color=_GT, alpha=0.25 if o["visible"] else 0.08)
            ax.plot(fp[:, 0], fp[:, 1], color=_GT, lw=1.6)
            ax.annotate(
                o["id"],
                (o["center"][0], o["center"][1]),
                xytext=(0, 9),
                textcoords="offset points",
                color="#1a6e1a",
                fontsize=7.5,
                ha="center",
                fontweight="bold",
            )
    # The node's instances: thin, under the query boxes, labelled at a corner so the
    # labels do not sit on the ground-truth ids at the centres.
    for inst in sorted(instances, key=lambda i: i["role"] != "furniture"):
        color = _INST_FURNITURE if inst["role"] == "furniture" else _INST_OBJECT
        fp = _footprint(inst["center"], inst["size"], inst["yaw"])
        ax.plot(fp[:, 0], fp[:, 1], color=color, lw=0.8, alpha=0.95, zorder=3)
        corner = fp[int(np.argmin(fp[:4, 0] - fp[:4, 1]))]  # the upper-left-most corner
        ax.text(
            corner[0],
            corner[1],
            f"#{inst['id']} {_short(inst['label'], 16)}",
            color=color,
            fontsize=6,
            ha="left",
            va="bottom",
            zorder=4,
            bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.6},
        )
    traj = np.asarray(scene.get("trajectory", []))
    if len(traj):
        ax.plot(traj[:, 0], traj[:, 1], color="#8c564b", lw=0.9, ls="--", alpha=0.8)
    vp = scene.get("viewpoint")
    if vp:
        p, f = vp["position"], vp["forward"]
        ax.annotate(
            "",
            (p[0] + 0.5 * f[0], p[1] + 0.5 * f[1]),
            (p[0], p[1]),
            arrowprops={"arrowstyle": "-|>", "color": "#8c564b", "lw": 2},
        )
        ax.text(p[0], p[1] - 0.15, "viewer", color="#8c564b", fontsize=8, ha="center", va="top")
    for i, r in enumerate(ground, 1):
        if not r["boxes"]:
            continue
        b = r["boxes"][0]
        fp = _footprint(b["center"], b["size"], b["yaw"])
        hit = r["hit_at_0_25"]
        ax.plot(fp[:, 0], fp[:, 1], color=_HIT if hit else _MISS, lw=1.5, ls="-" if hit else "--")
        ax.text(
            fp[:, 0].max(),
            fp[:, 1].max(),
            f"Q{i}",
            color=_HIT if hit else _MISS,
            fontsize=7,
            ha="left",
            va="bottom",
        )
    ax.set_aspect("equal")
    ax.set_xlim(-sx / 2 - 0.2, sx / 2 + 0.2)
    ax.set_ylim(-sy / 2 - 0.2, sy / 2 + 0.2)
    ax.set_xlabel("map x (m)")
    ax.set_ylabel("map y (m)")
    ax.grid(alpha=0.2)
    g = metrics["grounding"]
    ax.set_title(
        f"seed {scene['generator']['seed']}: {len(cloud) if cloud is not None else 0} memory "
        f"voxels, {len(instances)} object instances, ground truth, top predicted box per "
        f"query (map frame, top-down)",
        fontsize=10,
    )
    legend = [
        Line2D([], [], color=_GT, lw=2, label="object (ground truth)"),
        Line2D([], [], color="0.45", lw=2, label="furniture (ground truth)"),
        Line2D([], [], color=_HIT, lw=2, label="top box: hit (IoU >= 0.25)"),
        Line2D([], [], color=_MISS, lw=2, ls="--", label="top box: miss"),
        Line2D([], [], color="#8c564b", lw=1, ls="--", label="camera path"),
        Line2D([], [], color=_INST_OBJECT, lw=0.8, label="node instance: object"),
        Line2D([], [], color=_INST_FURNITURE, lw=0.8, label="node instance: furniture"),
    ]
    ax.legend(
        handles=legend,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.06),
        ncol=4,
        fontsize=8,
        frameon=False,
    )

    # Right column: scores, then one line per query and question.
    qa_m, ing, lat = metrics["spatial_qa"], metrics["ingest"], metrics["latency_ms"]
    lines: list[tuple[str, str]] = [
        (
            f"Grounding  n={g['n']}  Acc@0.25 {_fmt(g['acc_at_0_25'])}  "
            f"Acc@0.5 {_fmt(g['acc_at_0_5'])}  median IoU {_fmt(g['median_iou'])}",
            "black",
        ),
        (f"  by kind Acc@0.25: {_by_kind_text(g)}", "black"),
        (
            f"Spatial QA n={qa_m['n']}  accuracy {_fmt(qa_m['accuracy'])}  chance floor "
            f"{_fmt(qa_m.get('chance_floor'), '{:.2f}')}",
            "black",
        ),
        (f"  by type: {_by_type_text(qa_m)}", "black"),
        *((text, "black") for text in _objects_lines(metrics.get("objects"))),
        (
            f"Ingest {ing['frames_received']}/{ing.get('frames_published', '?')} frames, "
            f"{ing['keyframes']} keyframes ({ing['keyframes_per_s']:.2f}/s), "
            f"{ing['dropped']} dropped",
            "black",
        ),
        (
            f"Latency ground p50 {_fmt(lat['ground_p50'], '{:.0f}')} / p95 "
            f"{_fmt(lat['ground_p95'], '{:.0f}')} ms, ask p50 {_fmt(lat['ask_p50'], '{:.0f}')} ms;"
            f" peak RSS {_fmt(metrics['memory']['peak_rss_mb'], '{:.0f}')} MB",
            "black",
        ),
        ("", "black"),
        (f"{'#':>3} {'query':<40} {'target':<20} {'IoU':>5}", "0.3"),
    ]
    n_head = len(lines) - 2  # the score lines, in bold
    for i, r in enumerate(ground, 1):
        mark = "HIT " if r["hit_at_0_25"] else "miss"
        note = "" if r["boxes"] or r["error"] == "NONE" else f" {r['error']}"
        text = (
            f"Q{i:<2} {_short(r['query'], 40):<40} {_short(r['target'], 20):<20} "
            f"{r['iou']:5.2f} {mark}{note}"
        )
        lines.append((text, _HIT if r["hit_at_0_25"] else _MISS))
    lines += [("", "black"), (f"{'question':<42} {'answer':<24} {'expected':<13}", "0.3")]
    for r in qa:
        ans = r["answer"] or r["error"]
        mark = "ok" if r["correct"] else "WRONG"
        lines.append(
            (
                f"{_short(r['question'], 42):<42} {_short(ans, 24):<24} "
                f"{_short(r['expected'], 13):<13} {mark}",
                _HIT if r["correct"] else _MISS,
            )
        )
    size = max(5.0, min(9.0, 640.0 / max(len(lines), 1)))
    step = 1.0 / max(len(lines) + 1, 1 / 0.022)
    for k, (text, color) in enumerate(lines):
        side.text(
            0.0,
            1.0 - (k + 0.5) * step,
            text,
            family="monospace",
            fontsize=size,
            color=color,
            va="top",
            ha="left",
            transform=side.transAxes,
            fontweight="bold" if k < n_head else "normal",
        )
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------- markdown


def _markdown(
    scene: Mapping[str, Any],
    metrics: Mapping[str, Any],
    ground: Sequence[Mapping[str, Any]],
    qa: Sequence[Mapping[str, Any]],
    instances: Sequence[Mapping[str, Any]] = (),
) -> str:
    g, q, ing = metrics["grounding"], metrics["spatial_qa"], metrics["ingest"]
    lat, mem, run = metrics["latency_ms"], metrics["memory"], metrics.get("run", {})
    rows = [
        "# Bag evaluation",
        "",
        f"Scene seed {scene['generator']['seed']}, {scene['bag']['message_counts']} messages, "
        f"{scene['bag']['duration_s']:.1f} s of frames, replayed at x{run.get('rate', '?')}; "
        f"encoder `{run.get('encoder', '?')}`, head `{run.get('head_path') or 'none'}`.",
        "",
        "![report](report.png)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| grounding n | {g['n']} |",
        f"| Acc@0.25 | {_fmt(g['acc_at_0_25'])} |",
        f"| Acc@0.5 | {_fmt(g['acc_at_0_5'])} |",
        f"| median IoU | {_fmt(g['median_iou'])} |",
        f"| spatial QA n | {q['n']} |",
        f"| spatial QA accuracy | {_fmt(q['accuracy'])} |",
        f"| frames received / published | {ing['frames_received']} / "
        f"{ing.get('frames_published', '?')} |",
        f"| keyframes (per s) | {ing['keyframes']} ({ing['keyframes_per_s']:.2f}) |",
        f"| dropped | {ing['dropped']} {ing.get('drop_reasons') or ''} |",
        f"| ground latency p50 / p95 (ms) | {_fmt(lat['ground_p50'], '{:.1f}')} / "
        f"{_fmt(lat['ground_p95'], '{:.1f}')} |",
        f"| ask latency p50 (ms) | {_fmt(lat['ask_p50'], '{:.1f}')} |",
        f"| memory voxels | {mem['voxels']} |",
        f"| node peak RSS (MB) | {_fmt(mem['peak_rss_mb'], '{:.0f}')} |",
        "",
        "## Grounding by expression kind",
        "",
        "| kind | n | Acc@0.25 | Acc@0.5 | median IoU |",
        "|---|---|---|---|---|",
        *(
            f"| {k} | {v['n']} | {_fmt(v['acc_at_0_25'])} | {_fmt(v['acc_at_0_5'])} | "
            f"{_fmt(v['median_iou'])} |"
            for k, v in g.get("by_kind", {}).items()
        ),
        "",
        "## Spatial QA by question type",
        "",
        "Yes/no and either/or questions have a 50 % coin-flip floor; the chance floor is "
        f"the accuracy a coin flip would get on this mix: {_fmt(q.get('chance_floor'))}.",
        "",
        "| type | n | accuracy | coin flip |",
        "|---|---|---|---|",
        *(
            f"| {k} | {v['n']} | {_fmt(v['accuracy'])} | "
            f"{'0.5' if k in ('yes_no', 'either_or') else '0'} |"
            for k, v in q.get("by_type", {}).items()
        ),
        "",
        *_objects_markdown(metrics.get("objects"), instances),
        "## Grounding",
        "",
        "| # | query | kind | target | error | top box centre | instance | IoU | IoU (oriented) "
        "| @0.25 | @0.5 | ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(ground, 1):
        c = r["boxes"][0]["center"] if r["boxes"] else None
        centre = "—" if c is None else "(" + ", ".join(f"{v:.2f}" for v in c) + ")"
        inst = (
            f"#{r['instance_id']} {r.get('instance_label', '')}".strip()
            if r.get("instance_id")
            else "—"
        )
        rows.append(
            f"| Q{i} | {r['query']} | {r.get('kind') or '—'} | {r['target']} | {r['error']} | "
            f"{centre} | {inst} | {r['iou']:.3f} | "
            f"{r['iou_oriented']:.3f} | {'hit' if r['hit_at_0_25'] else 'miss'} | "
            f"{'hit' if r['hit_at_0_5'] else 'miss'} | {r['latency_ms']:.0f} |"
        )
    rows += [
        "",
        "## Spatial questions",
        "",
        "| question | answer | expected | error | correct | ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in qa:
        answer = (r["answer"] or "").replace("|", "/")
        rows.append(
            f"| {r['question']} | {answer} | {r['expected']} | {r['error']} | "
            f"{'yes' if r['correct'] else 'no'} | {r['latency_ms']:.0f} |"
        )
    return "\n".join(rows) + "\n"


def _objects_markdown(
    o: Mapping[str, Any] | None, instances: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The object-instance metrics and the node's final object list."""
    rows = ["## Object instances", ""]
    if not o or o.get("n_pred_objects") is None:
        return [*rows, "The node published no object list (object layer off).", ""]
    rows += [
        "Against the visible ground-truth objects of `scene.json`, ScanRefer IoU "
        "(see `metrics.py`).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| objects / furniture segmented | {o['n_pred_objects']} / {o['n_pred_furniture']} |",
        f"| objects / furniture visible (ground truth) | {o['n_gt_objects']} / "
        f"{o['n_gt_furniture']} |",
        f"| object recall@0.25 / @0.5 | {_fmt(o['object_recall_at_0_25'])} / "
        f"{_fmt(o['object_recall_at_0_5'])} |",
        f"| furniture recall@0.25 / @0.5 | {_fmt(o['furniture_recall_at_0_25'])} / "
        f"{_fmt(o['furniture_recall_at_0_5'])} |",
        f"| object precision@0.25 | {_fmt(o['object_precision_at_0_25'])} |",
        f"| object AP@0.25 / @0.5 | {_fmt(o['object_ap_at_0_25'])} / "
        f"{_fmt(o['object_ap_at_0_5'])} |",
        f"| label accuracy (matched at 0.25) | {_fmt(o['label_accuracy'])} |",
        f"| segmentation updates (last took s) | {o['update_count']} "
        f"({_fmt(o['update_time_s'])}) |",
        f"| list includes the last keyframe | {o.get('includes_last_keyframe')} |",
        "",
        "| id | role | label | score | colour | centre | size | yaw | on | points |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i in instances:
        centre = "(" + ", ".join(f"{v:.2f}" for v in i["center"]) + ")"
        size = "(" + ", ".join(f"{v:.2f}" for v in i["size"]) + ")"
        rows.append(
            f"| #{i['id']} | {i['role']} | {i['label']} | {i['label_score']:.2f} | "
            f"{i['color']} | {centre} | {size} | {i['yaw']:.2f} | "
            f"{'#' + str(i['support_id']) if i['support_id'] else '—'} | {i['num_points']} |"
        )
    return [*rows, ""]
