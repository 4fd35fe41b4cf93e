"""Position embeddings: MAE's fixed 2-D sin-cos tables, and resampling learned tables to another grid.

Pure NumPy (tables are constants computed once, at model build or checkpoint load).
"""
from __future__ import annotations

import dataclasses

import numpy as np


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """`positions: [M]` -> `[M, dim]`: the first half sines, the second half cosines."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_size: int, with_cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sin-cos table `[1 + grid_size**2, dim]` (row 0 zeros for the class token).

    Half the channels encode the column and half the row, exactly as MAE's
    `get_2d_sincos_pos_embed`, so imported MAE weights see the positions they were trained with.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be divisible by 4, got {dim}")
    coords = np.arange(grid_size, dtype=np.float64)
    col, row = np.meshgrid(coords, coords)  # MAE meshgrids (w, h): first grid varies along width.
    table = np.concatenate([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], axis=1)
    if with_cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return table.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PosResampling:
    """How a checkpoint's model resamples its learned position table to another grid (all bicubic, in float32).

    `antialias`: PyTorch's antialiased bicubic (Keys a = -0.5, the PIL filter) instead of the plain one (a = -0.75).
    `offset`: the official DINOv2's `interpolate_offset`: it resamples with `scale_factor = (new + offset) / old`
    rather than `size=new`, which moves the sample points slightly (0.1 in its models without registers).
    """

    antialias: bool = False
    offset: float = 0.0


# transformers' ViTModel / Dinov2Model `interpolate_pos_encoding`, timm-free plain bicubic.
PLAIN_BICUBIC = PosResampling()


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter `a`, for `|x| < 2` (0 beyond)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, how: PosResampling = PLAIN_BICUBIC) -> np.ndarray:
    """`[n_out, n_in]` float64 weights of PyTorch's 1-D bicubic resampling, `align_corners=False`.

    Plain: `upsample_bicubic2d` (source `(i + 0.5) * scale - 0.5`, a = -0.75, border indices clamped).
    Antialiased: `_upsample_bicubic2d_aa` (PIL's filter: a = -0.5, support widened by the scale when
    shrinking, taps outside the input dropped and the rest renormalised).
    """
    scale = n_in / (n_out + how.offset) if how.offset else n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        if how.antialias:
            support = 2.0 * max(scale, 1.0)
            centre = scale * (i + 0.5)
            lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
            taps = _cubic((np.arange(lo, hi) - centre + 0.5) / max(scale, 1.0), -0.5)
            w[i, lo:hi] = taps / taps.sum()
        else:
            src = scale * (i + 0.5) - 0.5
            base = int(np.floor(src))
            t = src - base
            for j, dist in zip(range(base - 1, base + 3), (t + 1, t, 1 - t, 2 - t)):
                w[i, min(max(j, 0), n_in - 1)] += _cubic(np.asarray(dist), -0.75)
    return w


def resample_pos_embed(table: np.ndarray, grid: tuple[int, int], how: PosResampling = PLAIN_BICUBIC) -> np.ndarray:
    """A learned position table `[1, 1 + M*M, D]` (class row first, square M x M grid, row-major) resampled to
    `grid = (rows, cols)`: `[1, 1 + rows*cols, D]` float32. The class row is kept; an equal grid is returned as is.

    Computed once when a frozen teacher is loaded (the table is a constant), so the teacher's forward
    is what DINOv2 / transformers compute at that input size.
    """
    table = np.asarray(table)
    m = int(round((table.shape[1] - 1) ** 0.5))
    if table.ndim != 3 or table.shape[0] != 1 or m * m != table.shape[1] - 1:
        raise ValueError(f"position table of shape {table.shape}: expected [1, 1 + M*M, D] (class row + square grid)")
    if (m, m) == tuple(grid):
        return table.astype(np.float32)
    patches = table[0, 1:].astype(np.float64).reshape(m, m, -1)
    rows, cols = bicubic_matrix(m, grid[0], how), bicubic_matrix(m, grid[1], how)
    resampled = np.einsum("ym,xn,mnd->yxd", rows, cols, patches).reshape(1, grid[0] * grid[1], -1)
    return np.concatenate([table[:, :1], resampled], axis=1).astype(np.float32)
