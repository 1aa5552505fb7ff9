from __future__ import annotations

import math

import numpy as np
import pytest

from llava3d_ros.core.geometry import make_transform
from llava3d_ros.core.keyframes import KeyframePolicy, KeyframeSelector


def _pose(x: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    h = math.radians(yaw_deg) / 2
    return make_transform([x, 0, 0], [0, 0, math.sin(h), math.cos(h)])


def test_reasons_in_order() -> None:
    sel = KeyframeSelector(KeyframePolicy(0.1, 10.0, 2.0, 0.0))
    assert sel.check(_pose(), 0.0) == "first"
    sel.accept(_pose(), 0.0)
    assert sel.check(_pose(0.05), 0.1) is None
    assert sel.check(_pose(0.11), 0.1) == "moved"
    assert sel.check(_pose(0.0, 11.0), 0.1) == "turned"
    assert sel.check(_pose(0.0, 9.0), 0.1) is None
    assert sel.check(_pose(), 2.0) == "timer"
    assert sel.check(_pose(), -1.0) == "first"  # time went backwards


def test_min_interval_caps_rate_and_validation() -> None:
    sel = KeyframeSelector(KeyframePolicy(0.1, 10.0, 0.0, 0.5))
    sel.accept(_pose(), 0.0)
    assert sel.check(_pose(1.0), 0.4) is None
    assert sel.check(_pose(1.0), 0.5) == "moved"
    assert sel.check(_pose(), 100.0) is None  # timer disabled
    with pytest.raises(ValueError, match="min_translation_m"):
        KeyframePolicy(min_translation_m=-1.0)
