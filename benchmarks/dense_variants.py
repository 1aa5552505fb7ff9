"""Which dense-CLIP variant grounds best? Patch classification accuracy on labelled images.

Needs a real CLIP checkpoint (none is available offline in this project's CI, so the
choice of default in ``llava3d_ros.core.encoders.hf_clip`` rests on the literature until
this is run)::

    .venv/bin/python benchmarks/dense_variants.py --model /path/to/clip-vit-large-patch14-336 \\
        --data /path/to/labelled_images

``--data`` holds ``classes.txt`` (one class name per line; line i is label i) and image
pairs ``NAME.png|jpg`` + ``NAME.labels.png`` (8-bit label map, same size; 255 = ignore).
Every variant is scored from the same tower pass: each patch takes the majority label of
its source pixels (patches with less than ``min_fraction`` of one label are skipped) and
is classified by its most similar class-name embedding.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava3d_ros.core.encoders.base import GROUND, EncoderError, PatchGeometry


def patch_labels(
    labels: np.ndarray, geometry: PatchGeometry, num_classes: int, min_fraction: float = 0.5
) -> np.ndarray:
    """(H, W) int label map -> (grid_h, grid_w) majority label per patch, -1 if unclear."""
    bounds = geometry.patch_pixel_bounds(labels.shape[0], labels.shape[1])
    out = np.full((geometry.grid_height, geometry.grid_width), -1, np.int64)
    for i in range(geometry.grid_height):
        for j in range(geometry.grid_width):
            r0, r1, c0, c1 = bounds[i, j]
            cell = labels[r0:r1, c0:c1].ravel()
            if cell.size == 0:
                continue
            valid = cell[(cell >= 0) & (cell < num_classes)].astype(np.int64)
            counts = np.bincount(valid, minlength=num_classes)
            if counts.max(initial=0) >= min_fraction * cell.size:
                out[i, j] = int(counts.argmax())
    return out


def measure_dense_variants(
    model: str,
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    modes: Sequence[str] | None = None,
    min_fraction: float = 0.5,
    options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Per dense mode: patch accuracy, mean per-class accuracy, patches scored, chance.

    ``model`` is a CLIP checkpoint (directory or cached repo id); ``samples`` yields
    (RGB uint8 image, int label map of the same size); ``options`` are extra hf_clip
    backend options (device, dtype, templates, input_size, ...)."""
    from llava3d_ros.core.encoders.hf_clip import DENSE_MODES
    from llava3d_ros.core.encoders.registry import create_encoders

    modes = list(DENSE_MODES if modes is None else modes)
    if len(class_names) < 2:
        raise ValueError("need at least two class names")
    bundle = create_encoders({"backend": "hf_clip", "model": model, **dict(options or {})})
    if bundle.text is None:
        raise EncoderError("measure_dense_variants needs a CLIP checkpoint with a text tower")
    image = bundle.image
    text = bundle.text.encode_text(list(class_names))  # (C, P), unit length
    n_cls = len(class_names)
    correct = {m: np.zeros(n_cls, np.int64) for m in modes}
    total = np.zeros(n_cls, np.int64)
    for img, labels in samples:
        if labels.shape[:2] != img.shape[:2]:
            raise ValueError(f"label map {labels.shape[:2]} does not match image {img.shape[:2]}")
        target = patch_labels(labels, image.geometry, n_cls, min_fraction)
        mask = target >= 0
        if not mask.any():
            continue
        feats = image.forward_features(image.preprocess([img]), dense_modes=modes)  # type: ignore[attr-defined]
        total += np.bincount(target[mask], minlength=n_cls)
        for m in modes:
            scores = feats[f"{GROUND}:{m}"][0].cpu() @ text.T  # (g, g, C)
            pred = scores.argmax(dim=-1).numpy()
            hit = (pred == target) & mask
            correct[m] += np.bincount(target[hit], minlength=n_cls)
    if total.sum() == 0:
        raise ValueError("no labelled patches in the samples")
    present = total > 0
    report: dict[str, dict[str, float]] = {}
    for m in modes:
        report[m] = {
            "accuracy": float(correct[m].sum() / total.sum()),
            "mean_class_accuracy": float(np.mean(correct[m][present] / total[present])),
            "patches": float(total.sum()),
            "chance": 1.0 / n_cls,
        }
    return report


def _load_dir(data: Path) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    from PIL import Image

    names_file = data / "classes.txt"
    if not names_file.is_file():
        raise SystemExit(f"{names_file} not found")
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    samples = []
    for img_path in sorted(data.iterdir()):
        if img_path.suffix.lower() not in (".png", ".jpg", ".jpeg") or ".labels" in img_path.name:
            continue
        label_path = img_path.with_name(img_path.stem + ".labels.png")
        if not label_path.is_file():
            continue
        img = np.asarray(Image.open(img_path).convert("RGB"))
        lab = np.asarray(Image.open(label_path)).astype(np.int64)
        lab[lab == 255] = -1
        samples.append((img, lab))
    if not samples:
        raise SystemExit(f"no NAME.png + NAME.labels.png pairs in {data}")
    return names, samples


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="CLIP checkpoint directory or repo id")
    parser.add_argument("--data", required=True, type=Path, help="labelled image directory")
    parser.add_argument("--modes", nargs="*", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--min-fraction", type=float, default=0.5)
    args = parser.parse_args(argv)
    names, samples = _load_dir(args.data)
    torch.set_grad_enabled(False)
    report = measure_dense_variants(
        args.model,
        samples,
        names,
        args.modes,
        args.min_fraction,
        {"device": args.device, "dtype": args.dtype},
    )
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
