"""Drawing of synthetic scenes with PIL: one function per shape, a scene -> RGB image.

Kept apart from ``scenes.py`` so the scene grammar (objects, edits, captions) does not depend on pixels. Small seeded
jitter (position inside the grid cell, object size, colour shade, background) makes two renderings of the same scene
differ slightly, as two photos of one thing would, so exact-pixel matching cannot solve the benchmark.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

# RGB of each colour word; distinct hues that stay distinguishable after a bicubic resize to a few pixels.
COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "white": (240, 240, 240),
}
BACKGROUND = (28, 28, 34)
# Radius as a fraction of the grid cell: small and large must differ clearly even at 64x64.
SIZE_FRACTION = {"small": 0.24, "large": 0.44}


def _polygon(cx, cy, r, n, phase, inner=None):
    pts = []
    for k in range(n * (2 if inner else 1)):
        a = phase + k * math.pi / (n if inner else n / 2)
        rr = (inner if inner and k % 2 else 1.0) * r
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, round(r * 0.4)))
    elif shape == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r * 1.05, 3, -math.pi / 2), fill=fill)
    elif shape == "cross":
        w = r * 0.38
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws ``scene`` (a ``scenes.Scene``) on a ``size`` x ``size`` RGB canvas; ``rng`` drives the jitter only."""
    bg = tuple(int(np.clip(c + rng.integers(-6, 7), 0, 255)) for c in BACKGROUND)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    cell = size / 3.0
    for obj in scene.objects:
        row, col = divmod(obj.cell, 3)
        r = SIZE_FRACTION[obj.size] * cell * (1.0 + rng.uniform(-0.06, 0.06))
        slack = max(0.0, cell / 2 - r - 1)  # keep the object inside its cell
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack) * 0.5
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack) * 0.5
        fill = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLOUR_RGB[obj.colour])
        _draw_shape(draw, obj.shape, cx, cy, r, fill)
    return img
