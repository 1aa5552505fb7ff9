"""Colour names of an object's points: planted colours, shading, histograms, inputs."""

from __future__ import annotations

import numpy as np
import pytest

from llava3d_ros.core.objects.colour import (
    COLOUR_FAMILIES,
    COLOUR_NAMES,
    colour_histogram,
    colour_name,
    pixel_colour_names,
)

# sRGB (0-1) of a typical object of each colour, fully lit.
PLANTED = {
    "red": (0.8, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.1),
    "yellow": (0.95, 0.85, 0.1),
    "green": (0.2, 0.7, 0.2),
    "dark green": (0.06, 0.22, 0.08),
    "blue": (0.1, 0.3, 0.85),
    "purple": (0.5, 0.2, 0.7),
    "pink": (1.0, 0.6, 0.75),
    "brown": (0.45, 0.28, 0.12),
    "beige": (0.9, 0.8, 0.62),
    "black": (0.06, 0.06, 0.06),
    "white": (0.95, 0.95, 0.95),
    "grey": (0.35, 0.35, 0.35),
}


def _object(
    rgb: tuple[float, float, float],
    brightness: float = 1.0,
    n: int = 2000,
    seed: int = 0,
    shade: tuple[float, float] = (0.6, 1.0),
) -> np.ndarray:
    """Points of a matte object: per-point shading in ``shade`` (surface orientation),
    times the light level ``brightness``, plus sensor noise; float 0-1."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(*shade, (n, 1))
    x = np.asarray(rgb)[None] * s * brightness + rng.normal(0.0, 0.015, (n, 3))
    return np.clip(x, 0.0, 1.0)


def test_vocabulary_is_fixed_and_grouped() -> None:
    assert COLOUR_NAMES == (
        "red",
        "orange",
        "yellow",
        "green",
        "dark green",
        "blue",
        "purple",
        "pink",
        "brown",
        "beige",
        "black",
        "white",
        "grey",
        "silver",
    )
    grouped = [n for family in COLOUR_FAMILIES for n in family]
    assert sorted(grouped) == sorted(COLOUR_NAMES)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_colours_are_named(name: str) -> None:
    assert colour_name(_object(PLANTED[name])) == name


@pytest.mark.parametrize("brightness", [0.3, 0.4, 0.5, 0.7, 1.0, 1.2])
def test_red_survives_dimming(brightness: float) -> None:
    points = _object(PLANTED["red"], brightness)
    assert colour_name(points) == "red"
    assert colour_histogram(points)["red"] > 0.8


@pytest.mark.parametrize("brightness", [0.4, 0.5, 0.7])
def test_dim_white_is_white_or_grey_never_black(brightness: float) -> None:
    points = _object(PLANTED["white"], brightness, shade=(0.8, 1.0))
    assert colour_name(points) in ("white", "grey")
    assert colour_histogram(points)["black"] < 0.1


def test_white_in_shade_is_still_white() -> None:
    # A white mug on the shadow side of a room reads V ~0.45-0.6 (rendered assets).
    points = _object(PLANTED["white"], 0.55, shade=(0.9, 1.0))
    assert colour_name(points) == "white"
    assert colour_name(_object(PLANTED["grey"], 1.0, shade=(0.9, 1.0))) == "grey"


def test_known_light_level_undoes_dimming() -> None:
    # At 30 % light a white surface (V ~0.25) is what a black pan reads in full light;
    # a caller that knows the light level passes it.
    dim = _object(PLANTED["white"], 0.3, shade=(0.8, 1.0))
    assert colour_name(dim, light=0.3) == "white"
    assert colour_name(_object(PLANTED["black"], 1.0)) == "black"
    assert colour_name(_object(PLANTED["black"], 1.2)) == "black"


@pytest.mark.parametrize("name", ["green", "blue", "purple", "yellow"])
def test_chromatic_names_survive_moderate_dimming(name: str) -> None:
    assert colour_name(_object(PLANTED[name], 0.6)) == name


def test_histogram_fractions_for_a_partly_red_object() -> None:
    red = _object(PLANTED["red"], n=400, seed=1)
    white = _object(PLANTED["white"], n=600, seed=2, shade=(0.8, 1.0))
    hist = colour_histogram(np.concatenate([red, white]))
    assert list(hist) == list(COLOUR_NAMES)
    assert sum(hist.values()) == pytest.approx(1.0)
    assert hist["red"] == pytest.approx(0.4, abs=0.05)
    assert hist["white"] + hist["grey"] == pytest.approx(0.6, abs=0.05)
    # A white object with a red label: the chromatic part names it only when it is large.
    assert colour_name(np.concatenate([red[:100], white])) == "white"
    assert colour_name(np.concatenate([red, white])) == "red"


def test_specular_highlights_and_shadows_do_not_rename() -> None:
    body = _object(PLANTED["blue"], n=1900)
    highlights = np.ones((60, 3))
    shadows = np.zeros((40, 3))
    points = np.concatenate([body, highlights, shadows])
    assert colour_name(points) == "blue"
    hist = colour_histogram(points)
    assert hist["white"] < 0.03 and hist["black"] < 0.03


def test_polished_metal_reads_silver_but_plain_white_does_not() -> None:
    rng = np.random.default_rng(3)
    mid = rng.uniform(0.45, 0.75, 700)
    dark = rng.uniform(0.03, 0.12, 80)
    bright = rng.uniform(0.92, 1.0, 220)
    v = np.concatenate([mid, dark, bright])
    metal = np.clip(v[:, None] * np.array([[1.0, 1.0, 1.02]]), 0, 1)
    assert colour_name(metal) == "silver"
    hist = colour_histogram(metal)
    assert hist["silver"] > 0.9 and hist["white"] == hist["grey"] == hist["black"] == 0.0
    assert colour_name(_object(PLANTED["white"])) == "white"


def test_input_formats_agree() -> None:
    points = _object(PLANTED["green"])
    as_uint8 = np.round(points * 255).astype(np.uint8)
    assert colour_name(as_uint8) == colour_name(points) == colour_name(points * 255.0)
    image = as_uint8[:1600].reshape(40, 40, 3)  # an (H, W, 3) crop works as well
    assert colour_name(image) == "green"
    with_nan = np.concatenate([points, np.full((50, 3), np.nan)])
    assert colour_histogram(with_nan) == colour_histogram(points)


def test_pixel_names() -> None:
    px = np.array([[255, 0, 0], [0, 0, 255], [10, 10, 10], [90, 90, 90], [250, 250, 250]])
    assert pixel_colour_names(px.astype(np.uint8)) == ["red", "blue", "black", "grey", "white"]


@pytest.mark.parametrize(
    "bad", [np.zeros((0, 3)), np.full((4, 3), np.nan), np.zeros((5, 4)), np.zeros(3)[0]]
)
def test_bad_inputs_raise(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        colour_name(bad)


def test_bad_light_raises() -> None:
    with pytest.raises(ValueError, match="light"):
        colour_name(_object(PLANTED["red"]), light=0.0)


@pytest.mark.slow
def test_rendered_assets_get_their_labelled_colour() -> None:
    """Real textures under a composed room's lights (needs offscreen GL)."""
    pytest.importorskip("pyrender")
    from llava3d_ros.sim.assets import catalog
    from llava3d_ros.sim.render import RGBDRenderer
    from llava3d_ros.sim.scene import build_pyrender_scene, compose_room, object_views

    try:
        renderer = RGBDRenderer(160, 120)
    except Exception as exc:  # no EGL / GL on this machine
        pytest.skip(f"offscreen OpenGL unavailable: {exc}")
    specs = catalog()
    wanted = ["ketchup", "white_bowl", "yellow_bowl", "red_ramekin", "green_wine_bottle"]
    assets = [a for a in wanted if a in specs]
    if len(assets) < 3:
        pytest.skip("asset packages not installed")
    try:
        hits = 0
        for k, asset_id in enumerate(assets):
            spec = compose_room(k, n_objects=1, object_assets=[asset_id])
            scene = build_pyrender_scene(spec, renderer)
            iid = spec.objects[0].instance_id
            (pose,) = object_views(spec, 1, k, instance_id=iid)
            frame = renderer.render(scene, pose)
            name = colour_name(frame.rgb[frame.instance == iid])
            hits += name == specs[asset_id].attributes["colour"]
    finally:
        renderer.close()
    assert hits >= len(assets) - 1
