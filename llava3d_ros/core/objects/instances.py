"""The object list: what the object layer knows about each instance, as an immutable
snapshot that queries read while the next segmentation update is being computed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from llava3d_ros.core.objects.labels import TopLabels
from llava3d_ros.core.spatial import Box3D

__all__ = ["ObjectInstance", "ObjectSnapshot"]


@dataclass(frozen=True)
class ObjectInstance:
    id: int  # persistent id (>= 1)
    role: str  # "object" or "furniture"
    box: Box3D  # yaw box (minimum-area footprint rectangle x height range)
    aabb: Box3D  # axis-aligned box of the surface points
    points: NDArray[np.float32]  # (N, 3) surface points in the map frame
    colors: NDArray[np.float32]  # (N, 3) their colours, 0..1
    support_id: int  # furniture it stands on (0 = floor or none)
    colour: str  # dominant colour name
    colour_fractions: Mapping[str, float]  # colour name -> fraction of the points
    labels: TopLabels  # most likely names, best first
    first_seen: float
    last_seen: float
    observations: int  # keyframes that gave it a patch above the coverage threshold
    has_feature: bool  # False: no keyframe has seen it yet (no label)

    @property
    def label(self) -> str:
        return self.labels.names[0] if self.labels.names else "object"

    @property
    def label_score(self) -> float:
        return float(self.labels.scores[0]) if self.labels.scores else 0.0


@dataclass(frozen=True)
class ObjectSnapshot:
    """Instances, their pooled features (row i belongs to ``instances[i]``) and label
    probabilities, at one segmentation update."""

    instances: tuple[ObjectInstance, ...] = ()
    features: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # (K, D) unit
    probabilities: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # (K, C)
    version: int = 0  # segmentation updates so far
    stamp: float = 0.0  # newest keyframe stamp it includes
    update_time_s: float = 0.0
    floor_z: float | None = None

    def __len__(self) -> int:
        return len(self.instances)

    def by_id(self, instance_id: int) -> ObjectInstance | None:
        for inst in self.instances:
            if inst.id == instance_id:
                return inst
        return None

    def boxes(self, oriented: bool = True) -> list[Box3D]:
        return [i.box if oriented else i.aabb for i in self.instances]

    def subset(self, roles: Sequence[str]) -> list[int]:
        return [k for k, inst in enumerate(self.instances) if inst.role in roles]
