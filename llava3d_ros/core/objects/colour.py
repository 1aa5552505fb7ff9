"""Colour names for an object's points: "the red mug" against what the camera saw.

:func:`colour_histogram` names every point with one of :data:`COLOUR_NAMES` and returns
the fractions (score "the red mug" against an object that is 40 % red);
:func:`colour_name` returns the object's dominant name; :func:`pixel_colour_names`
names single points. They take the object's colours as an (..., 3) array (uint8 0-255,
or float 0-1; a float array whose maximum exceeds 1.5 is read as 0-255); non-finite
rows are ignored; no usable colour raises ``ValueError``. ``light`` (default 1): the
light level the points were seen under relative to a normally lit room, if the caller
knows it; colours are divided by it first.

How (deterministic, numpy only):

- Per point HSV from sRGB. Hue and saturation do not change when a white light gets
  dimmer or brighter, so chromatic names are decided mostly by hue; brightness (V) only
  separates red/orange/yellow from brown, green from dark green, and the achromatic
  names from each other. A point is achromatic when its saturation is below
  ``ACHROMATIC_SATURATION`` (warm room light tints white surfaces up to about 0.2) or
  its chroma (max - min) is below ``ACHROMATIC_CHROMA``.
- The darkest and brightest ``TRIM_FRACTION`` of points (shadows, specular highlights)
  are left out of the histogram when there are enough points.
- The name: colours form families (red; orange; yellow; green + dark green; blue;
  purple; pink; brown + beige; black + grey + white + silver). The family with the
  largest share wins, chromatic shares counting ``CHROMATIC_WEIGHT`` times (people call
  a white can with a big blue label "blue"); inside the family the largest member wins.
- Thresholds were set on this project's rendered assets and on planted colours.
  ``benchmarks/colour_names.py`` (53 labelled assets alone in composed rooms, 6 views
  each, 320x240): 74 % of object views get their labelled colour in the rooms the
  thresholds were tuned on, 71 % in other rooms (furniture 97-99 %); naming the mean
  colour by the nearest prototype gets 14 %. Most misses are labels the render does not
  show (patterned "black" bowls, a "beige" basket that renders unsaturated, packaging
  whose label colour covers a small part).

Vocabulary (:data:`COLOUR_NAMES`) and what it means here:

- black < grey < white are brightness bands of unsaturated points; because a white
  surface in shade reads as V ~0.4-0.6, "white" starts at ``WHITE_V`` (0.45): a mid-grey
  swatch (sRGB 128) is called white; "grey" is dark grey (V 0.25-0.45). A white object
  under dim light (40-70 %) reads white or grey, never black; at 30 % light a white
  surface (V ~0.25) is indistinguishable from a black pan in full light (V ~0.22) and
  reads black unless the caller passes ``light``.
- silver: no single point is silver; an achromatic object is called silver when it
  shows the signature of polished metal: a few very dark reflections, some specular
  highlights and mostly mid tones (:func:`_looks_metallic`); its achromatic share is
  then reported as silver in the histogram too. A heuristic: a light-grey object with a
  small black part can read silver, and dull metal reads grey/white.
- brown is dark orange/red: a dull dark red or an orange darker than V 0.45 is brown,
  so a saturated orange or yellow object under dim light (<= 50 %) reads brown, while a
  saturated red stays red down to V ~0.12 (then black).
- dark green is green darker than V 0.27 (a green object under 30 % light too).
- beige is light, weakly saturated orange/yellow; pink is light desaturated red or
  magenta; cyan/teal count as blue beyond hue 170 deg, as green below.

Not handled: coloured light (a strongly tinted light shifts hues), patterns (a black
and white bowl gets the majority name, the histogram has both), transparent objects
(they take the colour of what is behind them), gold (reads yellow/orange), colour
words outside the vocabulary (violet, teal, ...: map them before comparing).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ACHROMATIC_CHROMA",
    "ACHROMATIC_SATURATION",
    "CHROMATIC_WEIGHT",
    "COLOUR_FAMILIES",
    "COLOUR_NAMES",
    "TRIM_FRACTION",
    "WHITE_V",
    "colour_histogram",
    "colour_name",
    "pixel_colour_names",
]

#: Every name :func:`colour_name` can return, in a fixed order.
COLOUR_NAMES: tuple[str, ...] = (
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
#: Names that shading or material split between; the dominant family is chosen first.
COLOUR_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("red",),
    ("orange",),
    ("yellow",),
    ("green", "dark green"),
    ("blue",),
    ("purple",),
    ("pink",),
    ("brown", "beige"),
    ("black", "grey", "white", "silver"),
)
_ACHROMATIC = frozenset(COLOUR_FAMILIES[-1])
_INDEX = {name: i for i, name in enumerate(COLOUR_NAMES)}

ACHROMATIC_SATURATION = 0.22  # warm-lit white surfaces reach S ~0.2
ACHROMATIC_CHROMA = 0.05  # max - min below this: too little colour to trust the hue
BLACK_V = 0.12  # darker than this is black whatever the hue
BLACK_ACHROMATIC_V = 0.25  # unsaturated and darker than this: black
WHITE_V = 0.45  # unsaturated and at least this bright: white (white in shade ~0.4-0.6)
TRIM_FRACTION = 0.03  # darkest and brightest fractions left out (shadows, highlights)
CHROMATIC_WEIGHT = 2.5  # a chromatic family's share counts this much against achromatic
# Hue boundaries (degrees) between the chromatic names.
HUE_RED_END = 20.0
HUE_ORANGE_END = 34.0
HUE_YELLOW_END = 70.0
HUE_GREEN_END = 170.0
HUE_BLUE_END = 255.0
HUE_PURPLE_END = 290.0
HUE_PINK_END = 335.0
RED_BROWN_S, RED_BROWN_V = 0.75, 0.28  # a red this dull and this dark is brown
ORANGE_BROWN_V = 0.45  # an orange darker than this is brown (brown is dark orange)
_MIN_TRIM_POINTS = 50


def _as_rgb(rgb: ArrayLike, light: float = 1.0) -> NDArray[np.float64]:
    if not (math.isfinite(light) and light > 0):
        raise ValueError(f"light must be a positive number, got {light!r}")
    a = np.asarray(rgb)
    if a.ndim == 0 or a.shape[-1] != 3:
        raise ValueError(f"expected colours of shape (..., 3), got {a.shape}")
    if a.dtype == np.uint8:
        x = a.reshape(-1, 3).astype(np.float64) / 255.0
    elif np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_:
        x = a.reshape(-1, 3).astype(np.float64)
        x = x[np.all(np.isfinite(x), axis=1)]
        if x.size and float(x.max()) > 1.5:
            x = x / 255.0  # a float array in 0-255
    else:
        raise ValueError(f"expected numeric colours, got dtype {a.dtype}")
    return np.clip(x / light, 0.0, 1.0)


def _hsv(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """Hue (degrees, 0-360), saturation, value, chroma of sRGB rows."""
    v = x.max(axis=1)
    c = v - x.min(axis=1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    safe_c = np.maximum(c, 1e-12)
    h = np.where(
        v == r,
        ((g - b) / safe_c) % 6.0,
        np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0),
    )
    h = np.where(c > 0, h * 60.0, 0.0)
    return h, s, v, c


def _label_points(x: NDArray[np.float64]) -> NDArray[np.int64]:
    """Index into :data:`COLOUR_NAMES` per row (never silver: that is object-level)."""
    h, s, v, c = _hsv(x)
    out = np.full(len(x), _INDEX["grey"], dtype=np.int64)

    def put(mask: NDArray[np.bool_], name: str) -> None:
        out[mask] = _INDEX[name]

    achromatic = (s < ACHROMATIC_SATURATION) | (c < ACHROMATIC_CHROMA)
    chroma = ~achromatic & (v >= BLACK_V)
    # Achromatic brightness bands.
    put(achromatic & (v >= WHITE_V), "white")
    put(achromatic & (v < BLACK_ACHROMATIC_V), "black")
    put(~achromatic & (v < BLACK_V), "black")

    reddish = chroma & ((h >= HUE_PINK_END) | (h < HUE_RED_END))
    orangish = chroma & (h >= HUE_RED_END) & (h < HUE_ORANGE_END)
    yellowish = chroma & (h >= HUE_ORANGE_END) & (h < HUE_YELLOW_END)
    greenish = chroma & (h >= HUE_YELLOW_END) & (h < HUE_GREEN_END)
    magenta = chroma & (h >= HUE_PURPLE_END) & (h < HUE_PINK_END)
    put(chroma & (h >= HUE_GREEN_END) & (h < HUE_BLUE_END), "blue")
    put(chroma & (h >= HUE_BLUE_END) & (h < HUE_PURPLE_END), "purple")
    put(magenta & (v >= 0.45), "pink")
    put(magenta & (v < 0.45), "purple")

    # Red: light and weakly saturated is pink; dark and weakly saturated is brown; a
    # saturated red stays red in deep shade (hue and saturation survive dimming).
    light = (s < 0.45) & (v >= 0.6)
    dull = ((s < 0.5) & (v < 0.5)) | ((s < RED_BROWN_S) & (v < RED_BROWN_V))
    put(reddish, "red")
    put(reddish & light, "pink")
    put(reddish & dull, "brown")
    # Orange: light and weakly saturated is beige, dark or dull is brown.
    put(orangish, "orange")
    put(orangish & ((v < ORANGE_BROWN_V) | ((s < 0.55) & (v < 0.6))), "brown")
    put(orangish & (s < 0.45) & (v >= 0.55), "beige")
    # Yellow: beige when weakly saturated towards orange, brown (olive) when very dark.
    put(yellowish, "yellow")
    put(yellowish & (h < 45.0) & (s < 0.35) & (v >= 0.35), "beige")
    put(yellowish & (v < 0.28), "brown")
    put(greenish, "green")
    put(greenish & (v < 0.27), "dark green")
    return out


def pixel_colour_names(rgb: ArrayLike, light: float = 1.0) -> list[str]:
    """The colour name of every row (no trimming, never "silver")."""
    return [COLOUR_NAMES[i] for i in _label_points(_as_rgb(rgb, light))]


def _looks_metallic(v: NDArray[np.float64]) -> bool:
    """Polished metal under room light: some very dark reflections (but not a black
    object), some specular highlights, and mostly mid tones in between."""
    dark = float(np.mean(v < 0.15))
    bright = float(np.mean(v >= 0.9))
    mid = float(np.mean((v >= 0.25) & (v < 0.8)))
    return 0.02 <= dark <= 0.15 and bright >= 0.05 and mid >= 0.4


def _analyse(rgb: ArrayLike, light: float) -> tuple[NDArray[np.float64], bool]:
    """(fractions per :data:`COLOUR_NAMES`, metallic) of an object's colours."""
    x = _as_rgb(rgb, light)
    if len(x) == 0:
        raise ValueError("no colours to name (empty or all non-finite)")
    v = x.max(axis=1)
    keep = np.ones(len(x), dtype=bool)
    if len(x) >= _MIN_TRIM_POINTS and TRIM_FRACTION > 0:
        lo, hi = np.quantile(v, [TRIM_FRACTION, 1.0 - TRIM_FRACTION])
        keep = (v >= lo) & (v <= hi)
        if not keep.any():  # all points equally bright
            keep[:] = True
    labels = _label_points(x[keep])
    frac = np.bincount(labels, minlength=len(COLOUR_NAMES)).astype(np.float64)
    frac /= frac.sum()
    achromatic_share = sum(frac[_INDEX[n]] for n in _ACHROMATIC)
    achromatic = np.isin(_label_points(x), [_INDEX[n] for n in _ACHROMATIC])
    metallic = achromatic_share >= 0.5 and _looks_metallic(v[achromatic])
    if metallic:
        # Report the metal as one colour: its dark and bright points are reflections.
        for n in _ACHROMATIC:
            frac[_INDEX[n]] = 0.0
        frac[_INDEX["silver"]] = achromatic_share
    return frac, metallic


def colour_histogram(rgb: ArrayLike, light: float = 1.0) -> dict[str, float]:
    """Fraction of the object's (trimmed) points per name of :data:`COLOUR_NAMES` (all
    names present, summing to 1). ``light``: see :func:`colour_name`. Raises
    ``ValueError`` for no usable colours."""
    frac, _ = _analyse(rgb, light)
    return {name: float(frac[i]) for i, name in enumerate(COLOUR_NAMES)}


def colour_name(rgb: ArrayLike, light: float = 1.0) -> str:
    """The dominant colour name of an object's points, one of :data:`COLOUR_NAMES`.

    ``light``: the light level the points were seen under relative to a normally lit
    room (0.3 = dim), when the caller knows it (exposure, the frame's brightness);
    colours are divided by it before naming, which undoes dimming for the brightness
    bands (a white object seen at ``light=0.3`` is white, not grey or black). Raises
    ``ValueError`` for no usable colours or a non-positive ``light``."""
    frac, _ = _analyse(rgb, light)
    best_family: tuple[str, ...] = COLOUR_FAMILIES[-1]
    best_score = -1.0
    for family in COLOUR_FAMILIES:
        share = float(sum(frac[_INDEX[n]] for n in family))
        score = share if family[0] in _ACHROMATIC else share * CHROMATIC_WEIGHT
        if score > best_score:
            best_family, best_score = family, score
    return max(best_family, key=lambda n: frac[_INDEX[n]])
