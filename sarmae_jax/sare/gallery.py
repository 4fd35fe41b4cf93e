"""A PNG grid of every SARE speckle model at several strengths, on a clean synthetic test scene.

    PYTHONPATH=. python -m sarmae_jax.sare.gallery --out noise.png

Rows: models; first column: the clean scene; other columns: increasing strength (fewer looks or
larger sigma). Values above 1 (bright speckle the physical models do not clamp) are shown as white.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from sarmae_jax.sare import speckle

# Per model, strengths from weak to strong: looks for the Gamma/Nakagami models, sigma otherwise.
STRENGTHS = {
    "gamma_intensity": (16.0, 4.0, 1.0),
    "amplitude": (16.0, 4.0, 1.0),
    "lognormal": (0.15, 0.4, 0.7),
    "released": (0.03, 0.35, 0.7),
}
LABEL_HEIGHT = 14
GAP = 4


def test_scene(size: int = 160) -> np.ndarray:
    """`[size, size]` float32 intensities in [0, 1]: flat regions, sharp edges, a line, a ramp, points."""
    y, x = np.mgrid[0:size, 0:size] / size
    scene = np.full((size, size), 0.30, np.float32)  # fields
    scene[y > 0.62] = 0.04  # water
    scene[(x > 0.08) & (x < 0.38) & (y > 0.10) & (y < 0.40)] = 0.85  # building block
    scene[(x > 0.50) & (x < 0.92) & (y > 0.12) & (y < 0.52)] = (0.1 + 0.6 * x)[(x > 0.50) & (x < 0.92) & (y > 0.12) & (y < 0.52)]
    scene[np.abs(y - 0.56) < 0.012] = 0.60  # road
    for cx in (0.25, 0.5, 0.75):  # ships on the water
        scene[(np.abs(x - cx) < 0.03) & (np.abs(y - 0.8) < 0.015)] = 1.0
    return scene


def render_grid(scene: np.ndarray, key: jax.Array) -> Image.Image:
    """Clean scene plus every model at every strength in `STRENGTHS`, as one labelled RGB image."""
    size = scene.shape[0]
    images = jnp.asarray(scene)[None, :, :, None]
    columns = 1 + max(len(s) for s in STRENGTHS.values())
    cell = size + LABEL_HEIGHT
    canvas = Image.new("RGB", (columns * (size + GAP), len(STRENGTHS) * (cell + GAP)), "black")
    draw = ImageDraw.Draw(canvas)
    for row, (model, strengths) in enumerate(STRENGTHS.items()):
        unit = "L" if model in speckle.LOOKS_MODELS else "sigma"
        panels = [("clean", scene)]
        for column, strength in enumerate(strengths):
            noisy, _ = speckle.apply_sare(jax.random.fold_in(key, row * columns + column), images,
                                          model=model, prob=1.0, strength_range=(strength, strength))
            panels.append((f"{model} {unit}={strength:g}", np.asarray(noisy[0, :, :, 0])))
        for column, (label, panel) in enumerate(panels):
            left, top = column * (size + GAP), row * (cell + GAP)
            pixels = (np.clip(panel, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            canvas.paste(Image.fromarray(pixels, "L").convert("RGB"), (left, top + LABEL_HEIGHT))
            draw.text((left + 2, top + 1), label, fill="white")
    return canvas


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a PNG grid of the SARE speckle models.")
    parser.add_argument("--out", default="noise.png", help="output PNG path")
    parser.add_argument("--size", type=int, default=160, help="test scene side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    render_grid(test_scene(args.size), jax.random.key(args.seed)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
