"""Headless RGB-D + instance-mask rendering with pyrender (OpenGL through EGL).

``PYOPENGL_PLATFORM`` must name the GL platform before PyOpenGL is first imported; this
module sets it to ``egl`` (with ``os.environ.setdefault``, so an explicit ``osmesa`` or a
display-backed setting from the caller wins) before importing pyrender. Import this
module before anything else that imports OpenGL in the same process.

Camera convention: poses passed in are ``T_world_camera_optical`` (REP-103 optical frame:
x right, y down, z forward), 4x4, mapping camera coordinates to world coordinates.
pyrender cameras look down -z with y up (OpenGL), so the pose handed to pyrender is
``T_world_optical @ diag(1, -1, -1, 1)``. Intrinsics follow the OpenCV convention
(pixel (u, v) = (column, row) index, integer coordinates at pixel centres); GL puts pixel
centres at +0.5, hence the half-pixel shift on cx, cy below.

Each frame is two passes over the same scene: a shaded colour pass and a flat
segmentation pass (``RenderFlags.SEG``, multisampling off) whose depth is returned, so
depth and instance ids agree pixel for pixel. Depth is the optical z in metres, 0 where
no surface was hit. The colour pass is not antialiased unless asked for
(``RGBDRenderer(antialias=True)``): pyrender's 4x MSAA costs ~2.4x the CPU time on Mesa's
llvmpipe. Measured on this 2-core CPU (loaded by other jobs) for composed rooms with
~0.5 M vertices: ~140 ms CPU per 640x480 frame, ~330 ms with antialiasing; the first frame
of a scene also uploads its textures.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyrender
import pyrender.renderer as _pyrender_renderer
import trimesh
from OpenGL.GL import GL_MULTISAMPLE
from pyrender.constants import GLTF, RenderFlags

from llava3d_ros.core.geometry import CameraIntrinsics
from llava3d_ros.sim.assets import load_asset

__all__ = [
    "OPTICAL_TO_GL",
    "CameraIntrinsics",  # core.geometry's, re-exported: frames carry the node's type
    "RGBDRenderer",
    "RenderScene",
    "RenderedFrame",
    "colorize_depth",
    "colorize_instance",
    "default_intrinsics",
    "frame_panel",
    "mesh_from_trimesh",
]

#: Optical (x right, y down, z forward) -> OpenGL camera (x right, y up, z backward).
OPTICAL_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])

_MAX_INSTANCE_ID = (1 << 24) - 1  # ids travel as 24-bit RGB in the segmentation pass
_SMOOTH_MIN_FACES = 2000


def default_intrinsics(width: int = 640, height: int = 480) -> CameraIntrinsics:
    """A 525 px focal length at VGA (Kinect / RealSense-like, ~63 deg horizontal FOV),
    scaled with the width, principal point at the image centre."""
    f = 525.0 * width / 640.0
    return CameraIntrinsics(
        fx=f, fy=f, cx=(width - 1) / 2.0, cy=(height - 1) / 2.0, width=width, height=height
    )


@dataclass
class RenderedFrame:
    """One rendered view. ``instance``: 0 = room / nothing, k = the scene's instance id k."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 = no hit
    instance: np.ndarray  # (H, W) int32
    intrinsics: CameraIntrinsics
    T_world_camera: np.ndarray  # (4, 4) world <- camera optical


def mesh_from_trimesh(
    geometries: trimesh.Scene | trimesh.Trimesh | Iterable[trimesh.Trimesh],
    roughness: float = 0.7,
    metallic: float = 0.0,
    smooth: bool | None = None,
) -> pyrender.Mesh:
    """A pyrender mesh with opaque PBR materials from trimesh geometry.

    pyrender's own conversion marks every material ``BLEND`` (sorting artefacts) and
    keeps glTF's metallic default of 1, which renders diffuse scans nearly black without
    an environment map; here materials are opaque and dielectric, textures repeat (the
    room planes tile their textures). ``smooth`` (interpolated vertex normals) defaults
    to on for dense meshes (scans) and off for low-poly ones, whose shared corners would
    otherwise average the normals of perpendicular faces into shading gradients.
    """
    if isinstance(geometries, trimesh.Scene):
        geoms = list(geometries.dump()) if geometries.graph.nodes_geometry else []
    elif isinstance(geometries, trimesh.Trimesh):
        geoms = [geometries]
    else:
        geoms = list(geometries)
    primitives: list[pyrender.Primitive] = []
    for g in geoms:
        if not isinstance(g, trimesh.Trimesh):
            raise TypeError(f"only triangle meshes render, got a {type(g).__name__}")
        visual = g.visual
        texture = None
        base_colour = np.array([0.6, 0.6, 0.6, 1.0])
        uv = None
        if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
            image = getattr(visual.material, "image", None)
            if image is not None:
                uv = np.asarray(visual.uv, dtype=np.float32)
                sampler = pyrender.Sampler(
                    magFilter=GLTF.LINEAR,
                    minFilter=GLTF.LINEAR_MIPMAP_LINEAR,
                    wrapS=GLTF.REPEAT,
                    wrapT=GLTF.REPEAT,
                )
                # RGBA rows are always 4-byte aligned; pyrender leaves GL_UNPACK_ALIGNMENT
                # at 4, so RGB images whose width is not a multiple of 4 upload skewed
                # (diagonal rainbow stripes).
                texture = pyrender.Texture(
                    source=np.asarray(image.convert("RGBA")),
                    source_channels="RGBA",
                    sampler=sampler,
                )
        elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind is not None:
            # Catalogued parts carry one uniform colour; use it as the base colour factor.
            base_colour = np.asarray(visual.vertex_colors[0], dtype=float) / 255.0
        material = pyrender.MetallicRoughnessMaterial(
            alphaMode="OPAQUE",
            baseColorFactor=base_colour if texture is None else [1.0, 1.0, 1.0, 1.0],
            baseColorTexture=texture,
            metallicFactor=metallic,
            roughnessFactor=roughness,
            doubleSided=True,
        )
        if smooth if smooth is not None else len(g.faces) >= _SMOOTH_MIN_FACES:
            positions = np.asarray(g.vertices, dtype=np.float32)
            normals = np.asarray(g.vertex_normals, dtype=np.float32)
            indices = np.asarray(g.faces, dtype=np.uint32)
            texcoords = uv
        else:  # per-face normals: unshared vertices
            faces = np.asarray(g.faces)
            positions = np.asarray(g.vertices, dtype=np.float32)[faces].reshape(-1, 3)
            normals = np.repeat(np.asarray(g.face_normals, dtype=np.float32), 3, axis=0)
            indices = None
            texcoords = None if uv is None else uv[faces].reshape(-1, 2)
        primitives.append(
            pyrender.Primitive(
                positions=positions,
                normals=normals,
                texcoord_0=texcoords,
                indices=indices,
                material=material,
                mode=GLTF.TRIANGLES,
            )
        )
    return pyrender.Mesh(primitives=primitives)


@dataclass
class RenderScene:
    """A pyrender scene plus the instance id of every mesh node (0 = room)."""

    scene: pyrender.Scene = field(
        default_factory=lambda: pyrender.Scene(
            bg_color=[0.0, 0.0, 0.0, 1.0], ambient_light=[0.3] * 3
        )
    )
    instance_of: dict[pyrender.Node, int] = field(default_factory=dict)
    camera_node: pyrender.Node | None = None

    def add_mesh(
        self, mesh: pyrender.Mesh, pose: np.ndarray, instance_id: int = 0
    ) -> pyrender.Node:
        if not 0 <= instance_id <= _MAX_INSTANCE_ID:
            raise ValueError(f"instance id {instance_id} outside [0, {_MAX_INSTANCE_ID}]")
        node = self.scene.add(mesh, pose=np.asarray(pose, dtype=float))
        self.instance_of[node] = int(instance_id)
        return node

    def seg_node_map(self) -> dict[pyrender.Node, tuple[int, int, int]]:
        # Every mesh node must be listed: pyrender skips unlisted nodes in the SEG pass,
        # which would let objects show through the furniture that occludes them.
        return {
            node: (k & 0xFF, (k >> 8) & 0xFF, (k >> 16) & 0xFF)
            for node, k in self.instance_of.items()
        }


@contextlib.contextmanager
def _multisampling_disabled() -> Iterator[None]:
    """pyrender always turns on 4x MSAA for shaded passes; on Mesa's llvmpipe (CPU) that
    costs ~2.4x the frame time. pyrender has no switch for it, so its module-level
    ``glEnable`` is filtered for the duration of one pass (pinned pyrender 0.1.45)."""
    real_enable = _pyrender_renderer.glEnable

    def enable(cap: int) -> None:
        if cap != GL_MULTISAMPLE:
            real_enable(cap)

    _pyrender_renderer.glEnable = enable
    try:
        yield
    finally:
        _pyrender_renderer.glEnable = real_enable


class RGBDRenderer:
    """Offscreen RGB-D + instance renderer; reuse one per process (one GL context).

    pyrender meshes are bound to this renderer's GL context: build the scenes you render
    here with :meth:`asset_mesh` / :func:`mesh_from_trimesh` meshes, not another
    renderer's.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fx: float | None = None,
        fy: float | None = None,
        cx: float | None = None,
        cy: float | None = None,
        znear: float = 0.05,
        zfar: float = 50.0,
        antialias: bool = False,
    ) -> None:
        """``fx`` defaults to 525 px at 640 wide (scaled with width), ``fy`` to ``fx``,
        ``cx, cy`` to the image centre. ``antialias`` turns on pyrender's 4x MSAA for the
        colour image (smoother edges, ~2.4x slower on a CPU GL); depth and instance ids
        are never antialiased."""
        d = default_intrinsics(width, height)
        self.intrinsics = CameraIntrinsics(
            fx=d.fx if fx is None else float(fx),
            fy=(d.fy if fx is None else float(fx)) if fy is None else float(fy),
            cx=d.cx if cx is None else float(cx),
            cy=d.cy if cy is None else float(cy),
            width=width,
            height=height,
        )
        self.znear, self.zfar = float(znear), float(zfar)
        k = self.intrinsics
        # GL pixel centres sit at +0.5: shift so that pixel index (u, v) sees the ray
        # through u = fx * x / z + cx exactly.
        self._camera = pyrender.IntrinsicsCamera(
            k.fx, k.fy, k.cx + 0.5, k.cy + 0.5, znear=self.znear, zfar=self.zfar
        )
        self._renderer = pyrender.OffscreenRenderer(width, height)
        self._meshes: dict[str, pyrender.Mesh] = {}
        self.antialias = bool(antialias)
        # No back-face culling: scans are not reliably wound outwards.
        self._flags = RenderFlags.SKIP_CULL_FACES

    # -- meshes -----------------------------------------------------------------------
    def asset_mesh(self, asset_id: str) -> pyrender.Mesh:
        """The catalogued asset as a pyrender mesh, converted once per renderer."""
        mesh = self._meshes.get(asset_id)
        if mesh is None:
            mesh = mesh_from_trimesh(load_asset(asset_id))
            self._meshes[asset_id] = mesh
        return mesh

    # -- rendering ----------------------------------------------------------------------
    def render(self, scene: RenderScene, T_world_camera: np.ndarray) -> RenderedFrame:  # noqa: N803
        """Render ``scene`` from ``T_world_camera`` (world <- optical camera, 4x4)."""
        T = np.asarray(T_world_camera, dtype=float)  # noqa: N806
        if T.shape != (4, 4):
            raise ValueError(f"T_world_camera must be 4x4, got {T.shape}")
        gl_pose = T @ OPTICAL_TO_GL
        if scene.camera_node is None or scene.camera_node.camera is not self._camera:
            if scene.camera_node is not None:
                scene.scene.remove_node(scene.camera_node)
            scene.camera_node = scene.scene.add(self._camera, pose=gl_pose)
        else:
            scene.scene.set_pose(scene.camera_node, gl_pose)
        scene.scene.main_camera_node = scene.camera_node

        if self.antialias:
            rgb, _ = self._renderer.render(scene.scene, flags=self._flags)
        else:
            with _multisampling_disabled():
                rgb, _ = self._renderer.render(scene.scene, flags=self._flags)
        seg, depth = self._renderer.render(
            scene.scene, flags=self._flags | RenderFlags.SEG, seg_node_map=scene.seg_node_map()
        )
        seg = np.asarray(seg, dtype=np.int32)
        instance = seg[..., 0] | (seg[..., 1] << 8) | (seg[..., 2] << 16)
        return RenderedFrame(
            rgb=np.ascontiguousarray(rgb[..., :3], dtype=np.uint8),
            depth=np.ascontiguousarray(depth, dtype=np.float32),
            instance=instance.astype(np.int32),
            intrinsics=self.intrinsics,
            T_world_camera=T.copy(),
        )

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.delete()
            self._renderer = None
        self._meshes.clear()

    def __enter__(self) -> RGBDRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- visualisation ------------------------------------------------------------------------


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8: near = yellow, far = purple (a perceptual ramp), no hit = black."""
    valid = depth > 0
    out = np.zeros((*depth.shape, 3), np.uint8)
    if not valid.any():
        return out
    lo = float(depth[valid].min())
    hi = float(max_depth if max_depth is not None else depth[valid].max())
    t = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    # A 3-stop ramp (yellow -> magenta -> dark blue), readable without matplotlib.
    stops = np.array([[250, 230, 60], [200, 60, 130], [30, 20, 90]], float)
    seg = np.minimum((t * 2).astype(int), 1)
    frac = (t * 2 - seg)[..., None]
    colour = stops[seg] * (1 - frac) + stops[seg + 1] * frac
    out[valid] = colour[valid].astype(np.uint8)
    return out


def colorize_instance(instance: np.ndarray, dim_from: int = 1000) -> np.ndarray:
    """(H, W, 3) uint8: a distinct hue per id (golden-ratio steps), 0 = black; ids from
    ``dim_from`` on (furniture in composed scenes) are drawn darker."""
    ids = np.unique(instance)
    out = np.zeros((*instance.shape, 3), np.uint8)
    for k in ids[ids != 0]:
        h = (int(k) * 0.618033988749895) % 1.0
        v = 0.6 if k >= dim_from else 1.0
        rgb = np.clip(np.array([abs(h * 6 - 3) - 1, 2 - abs(h * 6 - 2), 2 - abs(h * 6 - 4)]), 0, 1)
        out[instance == k] = (rgb * 255 * v).astype(np.uint8)
    return out


def frame_panel(frame: RenderedFrame) -> np.ndarray:
    """RGB | colourised depth | instance mask, side by side (H, 3W, 3) uint8."""
    return np.concatenate(
        [frame.rgb, colorize_depth(frame.depth), colorize_instance(frame.instance)], axis=1
    )
