"""The scene frame LLaVA-3D's position embeddings expect, fitted to a robot's map (issue 13,
item 2): a map origin 100 m away, a floor that is not at z 0, a tilted floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llava3d_ros.core.lmm import Llava3DChat, LmmAnswer, TextBox, load_llava3d
from llava3d_ros.core.lmm.scene_frame import SceneFrame, fit_floor, fit_scene_frame
from tests.lmm_fixtures import make_tiny_checkpoint

MM = 16


def _room(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scene-frame points of a 5 x 4 m room (floor at z 0, centred on the origin): floor,
    two walls, a table top at 0.75 m, a mug on it. Returns (points, is_floor)."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(-2.5, 2.5, (900, 2)) * [1, 0.8], np.zeros(900)]
    wall_x = np.c_[np.full(200, -2.5), rng.uniform(-2, 2, 200), rng.uniform(0, 2.4, 200)]
    wall_y = np.c_[rng.uniform(-2.5, 2.5, 200), np.full(200, 2.0), rng.uniform(0, 2.4, 200)]
    table = np.c_[rng.uniform(0.5, 1.5, (250, 2)), np.full(250, 0.75)]
    mug = np.c_[rng.uniform(0.9, 1.0, (30, 2)), rng.uniform(0.75, 0.85, 30)]
    pts = np.vstack([floor, wall_x, wall_y, table, mug])
    is_floor = np.zeros(len(pts), bool)
    is_floor[:900] = True
    return pts + rng.normal(0.0, 0.005, pts.shape), is_floor


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _to_map(pts: np.ndarray, rotation: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return pts @ rotation.T + shift


@pytest.mark.parametrize(
    ("yaw", "tilt", "shift"),
    [
        (0.0, 0.0, (100.0, 0.0, 0.0)),
        (30.0, 0.0, (100.0, -40.0, 3.2)),
        (30.0, 8.0, (-60.0, 100.0, -1.5)),
    ],
)
def test_the_fitted_frame_puts_the_floor_at_zero_and_the_room_in_the_middle(
    yaw: float, tilt: float, shift: tuple[float, float, float]
) -> None:
    room, is_floor = _room()
    placed = _rot("x", tilt) @ _rot("z", yaw)
    in_map = _to_map(room, placed, np.array(shift))
    frame = fit_scene_frame(in_map)
    scene = frame.to_scene(in_map)
    assert abs(frame.tilt_deg - tilt) < 0.5
    assert np.abs(scene[is_floor, 2]).max() < 0.03  # the floor at z 0
    table = (room[:, 2] > 0.74) & (room[:, 2] < 0.76)
    assert np.median(scene[table, 2]) == pytest.approx(0.75, abs=0.02)
    lo, hi = np.quantile(scene[:, :2], 0.01, axis=0), np.quantile(scene[:, :2], 0.99, axis=0)
    assert np.abs((lo + hi) / 2).max() < 1e-9  # xy centred
    assert np.abs(scene[:, :2]).max() < 4.0  # room scale, whatever the map origin
    # Distances are kept (rigid) and the round trip is exact.
    np.testing.assert_allclose(frame.to_map(scene), in_map, atol=1e-9)
    np.testing.assert_allclose(
        np.linalg.norm(scene[1:] - scene[:-1], axis=1),
        np.linalg.norm(in_map[1:] - in_map[:-1], axis=1),
        atol=1e-9,
    )


def test_a_level_map_keeps_its_axes() -> None:
    room, _ = _room()
    frame = fit_scene_frame(room + np.array([100.0, 0.0, 0.0]))
    # A fitted tilt under min_tilt_deg is noise: the map's axes are kept exactly.
    np.testing.assert_array_equal(frame.rotation, np.eye(3))
    assert frame.origin[0] == pytest.approx(100.0, abs=0.1)


def test_without_a_floor_the_map_z_stays_up() -> None:
    rng = np.random.default_rng(3)
    # The camera saw one wall only: every plane through its points is vertical.
    wall = np.c_[np.full(300, 5.0), rng.uniform(0, 4, 300), rng.uniform(0.2, 2.4, 300)]
    assert fit_floor(wall) is None
    frame = fit_scene_frame(wall)
    np.testing.assert_array_equal(frame.rotation, np.eye(3))
    assert frame.origin[2] == pytest.approx(np.quantile(wall[:, 2], 0.02))
    assert fit_scene_frame(np.empty((0, 3))).tilt_deg == 0.0


def test_boxes_go_back_to_the_map() -> None:
    room, _ = _room()
    frame = fit_scene_frame(_to_map(room, _rot("z", 30.0), np.array([100.0, 0.0, 3.0])))
    box = TextBox(center=(1.0, 0.5, 0.8), size=(0.2, 0.4, 0.1), start=3, end=30)
    back = frame.box_to_map(box)
    np.testing.assert_allclose(back.center, frame.to_map(np.array([[1.0, 0.5, 0.8]]))[0])
    np.testing.assert_allclose(back.size, (0.2, 0.4, 0.1), atol=1e-9)
    assert back.size[2] == pytest.approx(0.1, abs=1e-9)  # level: height kept
    assert (back.start, back.end) == (3, 30)
    # A tilted frame: the map box is the axis-aligned box around the rotated one.
    tilted = SceneFrame(_rot("x", 10.0), np.zeros(3))
    t = tilted.box_to_map(TextBox((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 0, 1))
    assert t.size[1] > 1.0 and t.size[2] > 1.0


# -- through the language model ------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Llava3DChat:
    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("lmm") / "tiny", seed=0, mm_hidden_size=MM)
    return Llava3DChat(*load_llava3d(ckpt, device="cpu"))


def test_a_map_100_m_away_gives_the_model_the_same_inputs(chat: Llava3DChat) -> None:
    """Before, map coordinates went straight into the position MLPs: the same room 100 m
    away (and on a floor 3 m up, tilted 5 degrees) was a different input. Now every scene
    token and click gets the scene-frame position it would have at the origin."""
    room, _ = _room()
    room = room[::6]
    feats = torch.randn(len(room), MM, generator=torch.Generator().manual_seed(0))
    placed = _rot("x", 5.0)
    shift = np.array([100.0, -20.0, 3.0])
    far = _to_map(room, placed, shift)
    click_room = np.array([1.0, 1.0, 0.8])
    click_far = _to_map(click_room[None], placed, shift)[0]
    question = "What is at <boxes> ?"
    near_frame, far_frame = fit_scene_frame(room), fit_scene_frame(far)
    near = chat.prepare(
        question, torch.as_tensor(room), feats, location=click_room, frame=near_frame
    )
    away = chat.prepare(question, torch.as_tensor(far), feats, location=click_far, frame=far_frame)
    np.testing.assert_allclose(near.locations, away.locations, atol=2e-3)
    same = (near.inputs_embeds - away.inputs_embeds).abs().max().item()
    assert same < 1e-2  # the two floors are fitted from different noise: ~5e-3
    # Without the frame the inputs differ (the position MLPs see 100 m).
    raw = chat.prepare(question, torch.as_tensor(far), feats, location=click_far)
    assert (raw.inputs_embeds - away.inputs_embeds).abs().max().item() > 20 * same
    # Coordinates written in the question are moved too.
    written = chat.prepare(
        "What is at [{:.3f},{:.3f},{:.3f}] ?".format(*click_far),
        torch.as_tensor(far),
        feats,
        frame=far_frame,
    )
    np.testing.assert_allclose(written.locations, away.locations, atol=2e-3)


def test_answer_boxes_come_back_in_the_map_frame(
    chat: Llava3DChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    room, _ = _room()
    far = room[::6] + np.array([100.0, 0.0, 3.0])
    frame = fit_scene_frame(far)
    text = "It is at [1.00,0.50,0.80,0.20,0.40,0.10]."
    box = TextBox((1.0, 0.5, 0.8), (0.2, 0.4, 0.1), 9, 41)

    def fake_generate(*_a: object, **_k: object) -> LmmAnswer:
        return LmmAnswer(text, [box], 5, 0.0, 0.0, False)

    monkeypatch.setattr(chat, "_generate", fake_generate)
    feats = torch.zeros(len(far), MM)
    ans = chat.answer("Where is the mug?", torch.as_tensor(far), feats, frame=frame)
    assert ans.text == text  # the streamed text is not rewritten
    np.testing.assert_allclose(ans.boxes[0].center, frame.to_map(np.array([box.center]))[0])
    assert ans.boxes[0].center[0] > 90.0
