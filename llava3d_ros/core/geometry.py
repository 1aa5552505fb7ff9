"""Camera and rigid-body geometry shared by lifting, memory, grounding and the ROS glue.

Conventions (ROS):
- Camera frames are *optical* frames (REP-103): x right, y down, z forward.
- Pixel (u, v) = (column, row); integer coordinates are pixel centres (as in
  sensor_msgs/CameraInfo), so the centre of the top-left pixel is (0, 0).
- Transforms are 4x4 homogeneous float64 numpy arrays. ``T_a_b`` maps points expressed in
  frame ``b`` into frame ``a`` (``p_a = T_a_b @ p_b``), i.e. the TF transform whose
  ``header.frame_id`` is ``a`` and ``child_frame_id`` is ``b``.
- Quaternions are ``(x, y, z, w)``, the order of geometry_msgs/Quaternion.

Everything here is numpy and scipy (rotations), so it runs in the ROS nodes, the evaluator
and tests alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial.transform import Rotation

__all__ = [
    "SUPPORTED_DEPTH_ENCODINGS",
    "CameraIntrinsics",
    "DistortionIgnoredWarning",
    "UnsupportedEncodingError",
    "depth_to_meters",
    "identity_transform",
    "interpolate_transform",
    "invert_transform",
    "make_transform",
    "project",
    "quaternion_from_rotation_matrix",
    "quaternion_normalize",
    "quaternion_slerp",
    "quaternion_to_rotation_matrix",
    "rotation_angle_between",
    "transform_points",
    "transform_to_translation_quaternion",
    "translation_between",
    "unproject",
    "validate_transform",
    "vec3",
]

# Tolerances for accepting a 4x4 as a rigid transform. Loose enough for transforms that
# went through float32 (e.g. a TF tree composed in float32), tight enough to reject scale.
_ROTATION_ATOL = 1e-4
_BOTTOM_ROW_ATOL = 1e-6


class DistortionIgnoredWarning(UserWarning):
    """CameraInfo carried non-zero distortion coefficients, which this package ignores."""


class UnsupportedEncodingError(ValueError):
    """A depth image encoding that :func:`depth_to_meters` cannot decode."""


# --------------------------------------------------------------------------- intrinsics

_distortion_warned = False  # warn once per process: CameraInfo arrives at 30 Hz


def _as_finite_float(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real number, got {value!r}") from exc
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _as_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        # Accept integral floats (e.g. from YAML) but nothing fractional.
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    out = int(value)
    if out <= 0:
        raise ValueError(f"{name} must be positive, got {out}")
    return out


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels.

    Lens distortion is not modelled: images are assumed rectified (``image_rect`` /
    ``depth_registered`` topics), which is what RGB-D drivers publish for depth.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        # Coerce (frozen dataclass, hence object.__setattr__) so numpy scalars and YAML
        # floats behave, and fail here rather than deep inside a projection.
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, _as_finite_float(name, getattr(self, name)))
        for name in ("width", "height"):
            object.__setattr__(self, name, _as_positive_int(name, getattr(self, name)))
        if self.fx <= 0.0 or self.fy <= 0.0:
            raise ValueError(
                f"focal lengths must be positive, got fx={self.fx}, fy={self.fy} "
                "(an all-zero CameraInfo.k means the camera is uncalibrated)"
            )

    @classmethod
    def from_camera_info(
        cls,
        k: Sequence[float] | ArrayLike,
        width: int,
        height: int,
        distortion_model: str = "",
        d: Sequence[float] | ArrayLike = (),
    ) -> CameraIntrinsics:
        """Build from sensor_msgs/CameraInfo fields (``k`` is the row-major 3x3 matrix).

        Distortion (``distortion_model``, ``d``) is ignored: the package expects
        rectified images. Non-zero coefficients trigger a single
        :class:`DistortionIgnoredWarning` per process, since unprojecting a distorted
        image with a pinhole model bends straight edges near the image border.
        """
        kk = np.asarray(k, dtype=np.float64).reshape(-1)
        if kk.size != 9:
            raise ValueError(f"CameraInfo.k must have 9 elements (row-major 3x3), got {kk.size}")
        if not np.all(np.isfinite(kk)):
            raise ValueError(f"CameraInfo.k must be finite, got {kk.tolist()}")
        if not np.any(kk):
            raise ValueError("CameraInfo.k is all zeros: the camera is uncalibrated")
        if kk[1] != 0.0:
            raise ValueError(f"CameraInfo.k has non-zero skew k[1]={kk[1]}; not supported")
        if kk[3] != 0.0 or kk[6] != 0.0 or kk[7] != 0.0 or kk[8] != 1.0:
            raise ValueError(
                f"CameraInfo.k is not a pinhole camera matrix [fx 0 cx; 0 fy cy; 0 0 1]: "
                f"{kk.tolist()}"
            )
        dd = np.asarray(d, dtype=np.float64).reshape(-1)
        if dd.size and not np.all(dd == 0.0):
            global _distortion_warned
            if not _distortion_warned:
                _distortion_warned = True
                warnings.warn(
                    f"CameraInfo has non-zero distortion ({distortion_model or 'unnamed'} "
                    f"model, d={dd.tolist()}); llava3d_ros ignores distortion and treats "
                    "images as rectified. Subscribe to rectified topics for exact geometry.",
                    DistortionIgnoredWarning,
                    stacklevel=2,
                )
        return cls(fx=kk[0], fy=kk[4], cx=kk[2], cy=kk[5], width=width, height=height)

    def scaled(self, new_width: int, new_height: int) -> CameraIntrinsics:
        """Intrinsics of the same camera after resizing the image to new_width x new_height.

        Uses the pixel-centre convention of area/bilinear resizing (OpenCV, PIL,
        torch ``align_corners=False``): source pixel centre ``u`` maps to
        ``(u + 0.5) * s - 0.5``. Plain ``cx * s`` would be off by ``(s - 1) / 2`` pixels.
        """
        new_width = _as_positive_int("new_width", new_width)
        new_height = _as_positive_int("new_height", new_height)
        sx = new_width / self.width
        sy = new_height / self.height
        return CameraIntrinsics(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=new_width,
            height=new_height,
        )

    def as_matrix(self) -> NDArray[np.float64]:
        """3x3 camera matrix K (float64)."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
            dtype=np.float64,
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), the numpy shape of an image with these intrinsics."""
        return (self.height, self.width)


# --------------------------------------------------------------------------- depth

# ROS sensor_msgs/image_encodings names. 16-bit depth is millimetres (REP-118).
_MM_ENCODINGS = ("16UC1", "mono16")
_M_ENCODINGS = ("32FC1",)
SUPPORTED_DEPTH_ENCODINGS: tuple[str, ...] = _MM_ENCODINGS + _M_ENCODINGS


def depth_to_meters(
    depth: np.ndarray,
    encoding: str,
    max_depth: float | None = None,
    min_depth: float | None = None,
) -> NDArray[np.float32]:
    """Decode a depth image to float32 metres, invalid pixels = NaN.

    - ``16UC1`` / ``mono16``: unsigned millimetres, 0 = no return (REP-118).
    - ``32FC1``: metres; NaN, +/-inf and values <= 0 are invalid.
    - ``max_depth`` / ``min_depth`` (metres, optional): readings outside the range are
      set invalid (far readings are noisy; near ones are often the robot itself).

    Accepts (H, W) or (H, W, 1). Always returns a new (H, W) array.
    """
    if not isinstance(encoding, str):
        raise UnsupportedEncodingError(
            f"depth encoding must be a string, got {encoding!r}; "
            f"accepted: {', '.join(SUPPORTED_DEPTH_ENCODINGS)}"
        )
    arr = np.asarray(depth)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"depth must be an (H, W) image, got shape {arr.shape}")

    if encoding in _MM_ENCODINGS:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{encoding} depth must hold integers (mm), got dtype {arr.dtype}")
        out = arr.astype(np.float32) * np.float32(0.001)
        out[arr <= 0] = np.nan
    elif encoding in _M_ENCODINGS:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{encoding} depth must hold floats (m), got dtype {arr.dtype}")
        out = arr.astype(np.float32, copy=True)
        with np.errstate(invalid="ignore"):
            out[~np.isfinite(out) | (out <= 0.0)] = np.nan
    else:
        raise UnsupportedEncodingError(
            f"unsupported depth encoding {encoding!r}; accepted: "
            f"{', '.join(SUPPORTED_DEPTH_ENCODINGS)} (16-bit = millimetres, 32FC1 = metres)"
        )

    with np.errstate(invalid="ignore"):  # comparisons with NaN are expected here
        if max_depth is not None:
            out[out > _as_finite_float("max_depth", max_depth)] = np.nan
        if min_depth is not None:
            out[out < _as_finite_float("min_depth", min_depth)] = np.nan
    return out


def _check_image_matches(name: str, shape: tuple[int, ...], intr: CameraIntrinsics) -> None:
    if shape[:2] != intr.shape:
        raise ValueError(
            f"{name} is {shape[1]}x{shape[0]} but the intrinsics are for "
            f"{intr.width}x{intr.height}; resize the image or use CameraIntrinsics.scaled()"
        )


def unproject(depth_m: np.ndarray, intrinsics: CameraIntrinsics) -> NDArray[np.float32]:
    """Per-pixel 3D points (H, W, 3) float32 in the camera optical frame.

    ``depth_m`` is z (metres along the optical axis), as ROS depth images are, not the
    range along the ray. Invalid (NaN) depth gives NaN points.
    """
    d = np.asarray(depth_m)
    if d.ndim != 2:
        raise ValueError(f"depth must be an (H, W) image, got shape {d.shape}")
    _check_image_matches("depth", d.shape, intrinsics)
    z = d.astype(np.float32, copy=False)
    h, w = z.shape
    # Per-column / per-row factors, broadcast: avoids building two (H, W) meshgrids.
    xf = (np.arange(w, dtype=np.float32) - np.float32(intrinsics.cx)) / np.float32(intrinsics.fx)
    yf = (np.arange(h, dtype=np.float32) - np.float32(intrinsics.cy)) / np.float32(intrinsics.fy)
    out = np.empty((h, w, 3), dtype=np.float32)
    out[..., 0] = z * xf[None, :]
    out[..., 1] = z * yf[:, None]
    out[..., 2] = z
    return out


def project(points: ArrayLike, intrinsics: CameraIntrinsics) -> NDArray[np.float64]:
    """Pixel coordinates (..., 2) as (u, v) of optical-frame points (..., 3).

    Points at or behind the camera (z <= 0) or non-finite give NaN. Points outside the
    image are *not* masked: compare against ``intrinsics.width`` / ``height`` if needed.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1:] != (3,):
        raise ValueError(f"points must have shape (..., 3), got {p.shape}")
    z = p[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_z = np.where(z > 0.0, 1.0 / z, np.nan)
    uv = np.empty((*p.shape[:-1], 2), dtype=np.float64)
    uv[..., 0] = intrinsics.fx * p[..., 0] * inv_z + intrinsics.cx
    uv[..., 1] = intrinsics.fy * p[..., 1] * inv_z + intrinsics.cy
    return uv


# --------------------------------------------------------------------------- quaternions


def quaternion_normalize(q: ArrayLike) -> NDArray[np.float64]:
    """Unit quaternion(s) (..., 4) xyzw. ROS quaternions are often slightly off unit length;
    a zero or non-finite quaternion is an error, not a silent identity."""
    qq = np.asarray(q, dtype=np.float64)
    if qq.shape[-1:] != (4,):
        raise ValueError(f"quaternion must have shape (..., 4) (x, y, z, w), got {qq.shape}")
    if not np.all(np.isfinite(qq)):
        raise ValueError(f"quaternion must be finite, got {qq.tolist()}")
    n = np.linalg.norm(qq, axis=-1, keepdims=True)
    if np.any(n < 1e-12):
        raise ValueError(f"quaternion has zero length: {qq.tolist()}")
    return qq / n


def _rotations(q: ArrayLike) -> tuple[Rotation, tuple[int, ...]]:
    """scipy Rotation of quaternion(s) (..., 4) xyzw (validated, normalised), and the
    leading shape (scipy takes one or (N, 4))."""
    qq = quaternion_normalize(q)
    return Rotation.from_quat(qq.reshape(-1, 4)), qq.shape[:-1]


def quaternion_to_rotation_matrix(q: ArrayLike) -> NDArray[np.float64]:
    """Rotation matrix (..., 3, 3) of quaternion(s) (..., 4) xyzw (normalised first)."""
    rot, lead = _rotations(q)
    return rot.as_matrix().reshape((*lead, 3, 3))


def quaternion_from_rotation_matrix(r: ArrayLike) -> NDArray[np.float64]:
    """Unit quaternion(s) (..., 4) xyzw of rotation matrix(es) (..., 3, 3), with w >= 0
    (scipy's branch choice stays accurate for 180-degree rotations)."""
    m = np.asarray(r, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrix must have shape (..., 3, 3), got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("rotation matrix must be finite")
    q = Rotation.from_matrix(m.reshape(-1, 3, 3)).as_quat(canonical=True)
    return np.asarray(q, dtype=np.float64).reshape((*m.shape[:-2], 4))


def quaternion_slerp(q0: ArrayLike, q1: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """Spherical linear interpolation along the shorter arc; alpha=0 -> q0, 1 -> q1.

    Alpha outside [0, 1] extrapolates along the same great circle (scipy's ``Slerp``
    refuses to, so this scales the relative rotation vector, which is the same arc).
    """
    a = _as_finite_float("alpha", alpha)
    p0, p1 = quaternion_normalize(q0), quaternion_normalize(q1)
    if p0.shape != (4,) or p1.shape != (4,):
        raise ValueError("quaternion_slerp takes single (4,) quaternions")
    r0 = Rotation.from_quat(p0)
    step = Rotation.from_rotvec(a * (r0.inv() * Rotation.from_quat(p1)).as_rotvec())
    q = np.asarray((r0 * step).as_quat(), dtype=np.float64)
    # q and -q are the same rotation: answer in q0's hemisphere, as the arc from q0 runs.
    return q if float(np.dot(q, p0)) >= 0.0 else -q


# --------------------------------------------------------------------------- SE(3)


def identity_transform() -> NDArray[np.float64]:
    return np.eye(4, dtype=np.float64)


def validate_transform(t: ArrayLike, name: str = "transform") -> NDArray[np.float64]:
    """Return ``t`` as a float64 (4, 4) array after checking it is a finite rigid transform.

    Raises ValueError for a wrong shape, non-finite entries, a bottom row other than
    [0, 0, 0, 1], or a rotation block that is not orthonormal with det +1.
    """
    m = np.asarray(t, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} has non-finite entries:\n{m}")
    if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0), atol=_BOTTOM_ROW_ATOL, rtol=0.0):
        raise ValueError(f"{name} bottom row must be [0, 0, 0, 1], got {m[3].tolist()}")
    rot = m[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=_ROTATION_ATOL, rtol=0.0) or (
        np.linalg.det(rot) <= 0.0
    ):
        raise ValueError(f"{name} rotation block is not a proper rotation:\n{rot}")
    return m


def make_transform(translation: ArrayLike, quaternion_xyzw: ArrayLike) -> NDArray[np.float64]:
    """4x4 transform from a translation (3,) and a quaternion (4,) xyzw (normalised here)."""
    tr = np.asarray(translation, dtype=np.float64)
    if tr.shape != (3,):
        raise ValueError(f"translation must have shape (3,), got {tr.shape}")
    if not np.all(np.isfinite(tr)):
        raise ValueError(f"translation must be finite, got {tr.tolist()}")
    q = np.asarray(quaternion_xyzw, dtype=np.float64)
    if q.shape != (4,):
        raise ValueError(f"quaternion must have shape (4,) (x, y, z, w), got {q.shape}")
    out = np.eye(4, dtype=np.float64)
    out[:3, :3] = quaternion_to_rotation_matrix(q)
    out[:3, 3] = tr
    return out


def transform_to_translation_quaternion(
    t: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(translation (3,), quaternion (4,) xyzw with w >= 0) of a 4x4 transform."""
    m = validate_transform(t)
    return m[:3, 3].copy(), quaternion_from_rotation_matrix(m[:3, :3])


def invert_transform(t: ArrayLike) -> NDArray[np.float64]:
    """Inverse of a rigid transform, using R^T (exact and cheaper than a general inverse)."""
    m = validate_transform(t)
    out = np.eye(4, dtype=np.float64)
    rt = m[:3, :3].T
    out[:3, :3] = rt
    out[:3, 3] = -rt @ m[:3, 3]
    return out


def transform_points(t: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Apply a 4x4 transform to points (..., 3).

    Computes in float64 (map coordinates far from the origin lose precision in float32)
    and returns the input's float dtype (float64 for non-float input).
    """
    m = validate_transform(t)
    p = np.asarray(points)
    if p.shape[-1:] != (3,):
        raise ValueError(f"points must have shape (..., 3), got {p.shape}")
    out = p.astype(np.float64, copy=False) @ m[:3, :3].T + m[:3, 3]
    if np.issubdtype(p.dtype, np.floating):
        return out.astype(p.dtype, copy=False)
    return out


def interpolate_transform(t0: ArrayLike, t1: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """Pose between t0 (alpha=0) and t1 (alpha=1): lerp of translation, slerp of rotation.

    This is what tf2 does between two stamped transforms; alpha outside [0, 1]
    extrapolates (the caller decides whether that is acceptable).
    """
    a = _as_finite_float("alpha", alpha)
    m0 = validate_transform(t0, "t0")
    m1 = validate_transform(t1, "t1")
    q = quaternion_slerp(
        quaternion_from_rotation_matrix(m0[:3, :3]), quaternion_from_rotation_matrix(m1[:3, :3]), a
    )
    return make_transform((1.0 - a) * m0[:3, 3] + a * m1[:3, 3], q)


def rotation_angle_between(t0: ArrayLike, t1: ArrayLike) -> float:
    """Angle in radians, in [0, pi], of the rotation taking t0's orientation to t1's."""
    m0 = validate_transform(t0, "t0")
    m1 = validate_transform(t1, "t1")
    return float(Rotation.from_matrix(m0[:3, :3].T @ m1[:3, :3]).magnitude())


def translation_between(t0: ArrayLike, t1: ArrayLike) -> float:
    """Euclidean distance in metres between the origins of t0 and t1."""
    m0 = validate_transform(t0, "t0")
    m1 = validate_transform(t1, "t1")
    return float(np.linalg.norm(m1[:3, 3] - m0[:3, 3]))


def vec3(values: Iterable[Any]) -> tuple[float, float, float]:
    """Three floats from any iterable of three numbers (an array row, a generator)."""
    x, y, z = (float(v) for v in values)
    return x, y, z
