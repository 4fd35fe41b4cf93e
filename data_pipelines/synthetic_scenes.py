"""Deterministic synthetic SAR scenes: materials laid out by scene class, rendered as clean SAR and optical.

Each scene is a map of materials (water, grass, forest, crop fields, bare soil, asphalt, roofs,
building walls, metal) laid out by one of five scene classes, then rendered twice from the same
geometry:

* clean SAR intensity in [0, 1]: per-material backscatter (dark calm water and asphalt, textured
  vegetation, crop rows, bright double-bounce lines where walls meet the ground on the side
  facing the sensor, very bright ships and aircraft), times a per-scene calibration gain so the
  class is not readable from mean brightness alone. No speckle: the trainer adds it (SARE).
* optical RGB (uint8).

Scene classes (the label): 0 harbour (coast, water with ships, quay blocks), 1 urban (rotated
street grid of building blocks), 2 agriculture (parcels of different crops with row texture),
3 forest (multi-scale canopy texture, a river or clearing), 4 airport (runway, taxiway, apron
with aircraft and hangars on grass).

Everything is vectorised NumPy over a chunk of scenes drawn from one `np.random.Generator`, so the
output is bitwise identical for the same generator state (`synthetic.py` seeds one per chunk).
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("harbour", "urban", "agriculture", "forest", "airport")

# Materials: (SAR backscatter intensity in [0, 1], optical RGB in [0, 1]).
WATER, GRASS, FOREST, CROP, SOIL, ASPHALT, ROOF, WALL, METAL = range(9)
_SAR_LEVEL = np.array([0.02, 0.16, 0.30, 0.22, 0.12, 0.05, 0.40, 0.95, 1.00], np.float32)
_OPTICAL_RGB = np.array([
    [0.10, 0.22, 0.35],  # water
    [0.42, 0.58, 0.28],  # grass
    [0.13, 0.30, 0.14],  # forest
    [0.70, 0.65, 0.30],  # crop (per-field tint below)
    [0.55, 0.42, 0.30],  # bare soil
    [0.30, 0.30, 0.32],  # asphalt
    [0.62, 0.40, 0.35],  # roof
    [0.45, 0.45, 0.45],  # wall / shadowed edge
    [0.92, 0.92, 0.95],  # metal (ships, aircraft)
], np.float32)


# ----------------------------------------------------------------------------- fields


def smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise: [n, size, size] float32 in [0, 1], feature size ~ size/cells."""
    grid = rng.random((n, cells + 1, cells + 1), dtype=np.float32)
    t = np.linspace(0.0, cells, size, dtype=np.float32)
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i0
    rows = grid[:, i0, :] * (1 - f)[None, :, None] + grid[:, i0 + 1, :] * f[None, :, None]
    return rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]


def _rotated_coords(rng, n: int, size: int, max_angle: float):
    """Per-scene rotated coordinates u, v: [n, size, size] in image-size units, centred."""
    theta = rng.uniform(-max_angle, max_angle, n).astype(np.float32)[:, None, None]
    y, x = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    y, x = (y - size / 2) / size, (x - size / 2) / size
    c, s = np.cos(theta), np.sin(theta)
    return c * x + s * y, -s * x + c * y


def _cell_table(rng, n: int, cells: int = 32) -> np.ndarray:
    """Per-scene random table [n, cells, cells] in [0, 1) indexed by grid-cell coordinates."""
    return rng.random((n, cells, cells), dtype=np.float32)


def _lookup(table: np.ndarray, iu: np.ndarray, iv: np.ndarray) -> np.ndarray:
    cells = table.shape[1]
    n = np.arange(table.shape[0])[:, None, None]
    return table[n, iu % cells, iv % cells]


def _rects(rng, n: int, size: int, count: int, half_min: float, half_max: float, region=None):
    """Union of `count` random axis-aligned rectangles per scene: [n, size, size] bool.

    `region`, if given ([n, size, size] bool), limits rectangles to centres inside it."""
    ys = np.arange(size, dtype=np.float32) / size
    cy, cx = rng.random((2, n, count), dtype=np.float32)
    hy, hx = rng.uniform(half_min, half_max, (2, n, count)).astype(np.float32)
    if region is not None:
        iy = np.minimum((cy * size).astype(np.int64), size - 1)
        ix = np.minimum((cx * size).astype(np.int64), size - 1)
        keep = region[np.arange(n)[:, None], iy, ix]
        hy, hx = hy * keep, hx * keep  # rectangles outside the region collapse to nothing
    in_y = np.abs(ys[None, None, :] - cy[..., None]) < hy[..., None]  # [n, count, size]
    in_x = np.abs(ys[None, None, :] - cx[..., None]) < hx[..., None]
    return np.einsum("nky,nkx->nyx", in_y.astype(np.float32), in_x.astype(np.float32)) > 0


def _near_side_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` whose lower neighbour is outside it: the wall-ground corner facing a
    sensor looking from the bottom of the image, where double bounce makes SAR bright."""
    below = np.zeros_like(mask)
    below[:, :-1] = mask[:, 1:]
    return mask & ~below


# ----------------------------------------------------------------------------- scene classes
# Each returns (material [n, s, s] uint8, shade [n, s, s] float32 in [0, 1]) -- shade modulates
# brightness within a material (crop type, roof height, canopy texture) in both renderings.


def _harbour(rng, n, s):
    u, v = _rotated_coords(rng, n, s, np.pi)
    coast = v + 0.25 * (smooth_noise(rng, n, s, 3) - 0.5) + rng.uniform(-0.15, 0.15, (n, 1, 1))
    water = coast > 0
    mat = np.full((n, s, s), GRASS, np.uint8)
    quay = ~water & (coast > -0.25)
    table = _cell_table(rng, n)
    period = rng.uniform(0.10, 0.16, (n, 1, 1)).astype(np.float32)
    fu, fv = (u / period) % 1, (v / period) % 1
    blocks = quay & (fu < 0.7) & (fv < 0.7)
    mat[quay] = ASPHALT
    mat[blocks] = ROOF
    mat[_near_side_edge(blocks)] = WALL
    mat[water] = WATER
    ships = _rects(rng, n, s, 6, 0.6 / s, 2.5 / s, region=water & (coast > 0.06))
    mat[ships] = METAL
    shade = 0.6 * _lookup(table, np.floor(u / period).astype(np.int64), np.floor(v / period).astype(np.int64))
    shade += 0.4 * smooth_noise(rng, n, s, 8)
    return mat, shade


def _urban(rng, n, s):
    u, v = _rotated_coords(rng, n, s, np.pi / 4)
    period = rng.uniform(0.09, 0.16, (n, 1, 1)).astype(np.float32)
    fill = rng.uniform(0.55, 0.8, (n, 1, 1)).astype(np.float32)
    fu, fv = (u / period) % 1, (v / period) % 1
    iu, iv = np.floor(u / period).astype(np.int64), np.floor(v / period).astype(np.int64)
    table = _cell_table(rng, n)
    cell = _lookup(table, iu, iv)
    mat = np.full((n, s, s), ASPHALT, np.uint8)
    blocks = (fu < fill) & (fv < fill)
    parks = blocks & (cell < 0.15)
    buildings = blocks & ~parks
    mat[parks] = GRASS
    mat[buildings] = ROOF
    mat[_near_side_edge(buildings)] = WALL
    return mat, 0.7 * cell + 0.3 * smooth_noise(rng, n, s, 6)


def _agriculture(rng, n, s):
    u, v = _rotated_coords(rng, n, s, np.pi / 3)
    period = rng.uniform(0.2, 0.4, (n, 1, 1)).astype(np.float32)
    iu, iv = np.floor(u / period).astype(np.int64), np.floor(v / period).astype(np.int64)
    fu, fv = (u / period) % 1, (v / period) % 1
    table = _cell_table(rng, n)
    cell = _lookup(table, iu, iv)
    mat = np.full((n, s, s), CROP, np.uint8)
    mat[cell < 0.25] = SOIL
    mat[(cell > 0.9)] = GRASS
    tracks = (fu < 0.04) | (fv < 0.04)
    mat[tracks] = SOIL
    # Crop rows: sinusoid across the field, orientation alternating between fields.
    freq = rng.uniform(10, 18, (n, 1, 1)).astype(np.float32)
    along = np.where((iu + iv) % 2 == 0, u, v)
    rows = 0.5 + 0.5 * np.sin(2 * np.pi * freq * along)
    farm = _rects(rng, n, s, 2, 1.5 / s, 3.5 / s)
    mat[farm] = ROOF
    mat[_near_side_edge(farm)] = WALL
    return mat, 0.55 * cell + 0.45 * rows


def _forest(rng, n, s):
    u, v = _rotated_coords(rng, n, s, np.pi)
    canopy = 0.5 * smooth_noise(rng, n, s, 4) + 0.3 * smooth_noise(rng, n, s, 12) + 0.2 * smooth_noise(rng, n, s, s // 3)
    mat = np.full((n, s, s), FOREST, np.uint8)
    clearing = smooth_noise(rng, n, s, 3) > 0.78
    mat[clearing] = GRASS
    wiggle = 0.08 * (smooth_noise(rng, n, s, 3) - 0.5)
    width = rng.uniform(0.02, 0.06, (n, 1, 1)).astype(np.float32)
    has_river = rng.random((n, 1, 1)) < 0.6
    river = has_river & (np.abs(v + wiggle - rng.uniform(-0.3, 0.3, (n, 1, 1))) < width)
    mat[river] = WATER
    road = ~has_river & (np.abs(u - rng.uniform(-0.3, 0.3, (n, 1, 1))) < 0.012)
    mat[road] = SOIL
    return mat, canopy


def _airport(rng, n, s):
    u, v = _rotated_coords(rng, n, s, np.pi)
    offset = rng.uniform(-0.2, 0.2, (n, 1, 1)).astype(np.float32)
    half_width = rng.uniform(0.03, 0.06, (n, 1, 1)).astype(np.float32)
    runway = (np.abs(v - offset) < half_width) & (np.abs(u) < 0.42)
    taxiway = (np.abs(v - offset - 0.16) < 0.012) & (np.abs(u) < 0.38)
    apron = (v - offset > 0.2) & (v - offset < 0.34) & (np.abs(u) < 0.3)
    mat = np.full((n, s, s), GRASS, np.uint8)
    mat[runway | taxiway | apron] = ASPHALT
    hangars = _rects(rng, n, s, 4, 1.5 / s, 4.0 / s, region=(v - offset > 0.36) & (v - offset < 0.5))
    mat[hangars] = ROOF
    mat[_near_side_edge(hangars)] = WALL
    aircraft = _rects(rng, n, s, 5, 0.6 / s, 1.6 / s, region=apron)
    mat[aircraft] = METAL
    return mat, 0.5 * smooth_noise(rng, n, s, 5) + 0.5 * smooth_noise(rng, n, s, 16)


_SCENES = (_harbour, _urban, _agriculture, _forest, _airport)


# ----------------------------------------------------------------------------- rendering


def render_sar(rng, material: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Clean SAR intensity [n, s, s] float32 in [0, 1] from materials and shade."""
    n = material.shape[0]
    level = _SAR_LEVEL[material]
    # Natural surfaces vary strongly with shade (texture); man-made returns stay near their level.
    variation = np.where(material >= ROOF, 0.8 + 0.4 * shade, 0.35 + 1.3 * shade)
    # Per-scene calibration gain (log-uniform 0.5x..2x): the same class appears at different
    # overall brightness, so a probe has to use structure, not the mean.
    gain = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (n, 1, 1))).astype(np.float32)
    return np.clip(level * variation * gain, 0.0, 1.0)


def render_optical(material: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Optical RGB [n, s, s, 3] uint8 of the same geometry."""
    rgb = _OPTICAL_RGB[material] * (0.75 + 0.5 * shade)[..., None]
    crop_tint = np.stack([0.9 + 0.4 * shade, 1.1 - 0.3 * shade, 0.6 + 0.2 * shade], -1)
    rgb = np.where((material == CROP)[..., None], rgb * crop_tint, rgb)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def generate_scenes(rng: np.random.Generator, labels: np.ndarray, image_size: int):
    """Renders one scene per entry of `labels` ([n] int in [0, 5)).

    Returns (sar [n, s, s] float32 in [0, 1] clean intensity, optical [n, s, s, 3] uint8).
    """
    n = len(labels)
    material = np.empty((n, image_size, image_size), np.uint8)
    shade = np.empty((n, image_size, image_size), np.float32)
    for cls, scene in enumerate(_SCENES):
        idx = np.flatnonzero(labels == cls)
        if len(idx):
            material[idx], shade[idx] = scene(rng, len(idx), image_size)
    shade = np.clip(shade, 0.0, 1.0)
    return render_sar(rng, material, shade), render_optical(material, shade)
