"""Drawing of synthetic garments with PIL: a garment -> RGB image (the garment twin of ``scene_render``).

Kept apart from ``garments.py`` so the garment grammar (attributes, captions, relative captions) does not depend on
pixels. Every attribute has its own visual cue that survives 32x32 pixels:

    category   the silhouette: dress = flared body, shirt = straight body with a button placket, toptee = straight
               body without one
    colour     the fabric's hue (distinct hues, a small shade jitter)
    pattern    stripes (about 2 px on / 2 px off), dots on a 4 px grid, 4 px checks, each as a darker (or, on dark
               fabric, lighter) shade of the colour; plain has none
    sleeves    none / short stubs at the shoulders / long sleeves hanging to the hem, clear of the body
    neckline   a round notch / a square notch / two light collar flaps
    length     where the hem ends (short vs long body)

Small seeded jitter (position, size, colour shade, background; the pattern moves with the garment) makes two
renderings of the same garment differ slightly, as two photos of one item would, so exact-pixel matching cannot
solve the benchmark.
Geometry is in unit coordinates (x, y in [0, 1], y down), scaled onto the canvas.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# RGB of each colour word; distinct hues (and black / white / grey apart in brightness) on a mid-light background.
COLOUR_RGB = {
    "red": (215, 35, 35),
    "green": (40, 160, 60),
    "blue": (45, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
    "black": (25, 25, 25),
    "white": (250, 250, 250),
    "pink": (245, 150, 190),
    "grey": (120, 120, 120),
}
BACKGROUND = (170, 190, 205)
COLLAR_LIGHT = (250, 245, 215)
COLLAR_DARK = (90, 90, 100)  # on garments too light for a light collar to show

SHOULDER_Y = 0.16
HEM_Y = {"short": 0.6, "long": 0.9}
# Half the body's width at the shoulders, and how much a dress flares per unit of height.
HALF_WIDTH = {"dress": 0.13, "shirt": 0.18, "toptee": 0.18}
DRESS_FLARE = 0.22
SLEEVE_GAP = 0.05  # between a long sleeve's cuff and the body, so the sleeve reads as one
SLEEVE_WIDTH = 0.09


def _luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _pattern_shade(rgb) -> tuple[int, ...]:
    """The pattern's second colour: darker on light fabric, lighter on dark fabric (black stripes must show)."""
    if _luminance(rgb) > 90:
        return tuple(int(c * 0.5) for c in rgb)
    return tuple(int(c + (255 - c) * 0.5) for c in rgb)


def _jittered(rgb, rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def pattern_mask(pattern: str, size: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Boolean ``size`` x ``size`` array: where the pattern's second shade goes; ``offset`` (x, y) in pixels shifts
    it with the garment, so jitter moves the pattern along instead of changing it."""
    unit = max(1, round(2 * size / 32))  # 2 px at 32 px: stripes 2 on / 2 off, dots and checks on a 4 px grid
    period = 2 * unit
    y, x = np.mgrid[0:size, 0:size]
    x = x - offset[0]
    y = y - offset[1]
    if pattern == "plain":
        return np.zeros((size, size), bool)
    if pattern == "striped":
        return (y // unit) % 2 == 0
    if pattern == "dotted":
        return ((x % period) < max(1, unit // 2 + unit % 2)) & ((y % period) < max(1, unit // 2 + unit % 2))
    if pattern == "checked":
        return ((x // unit) + (y // unit)) % 2 == 0
    raise ValueError(f"unknown pattern {pattern!r}")


def half_width(category: str, y: float) -> float:
    """Half the body's width at height ``y``: constant for a shirt or toptee, flaring for a dress."""
    flare = DRESS_FLARE if category == "dress" else 0.0
    return HALF_WIDTH[category] + flare * (y - SHOULDER_Y)


def body_polygon(category: str, length: str) -> list[tuple[float, float]]:
    """The body's outline in unit coordinates: a trapezoid for a dress, a rectangle for a shirt or toptee."""
    top, hem = HALF_WIDTH[category], HEM_Y[length]
    bottom = half_width(category, hem)
    return [(0.5 - top, SHOULDER_Y), (0.5 + top, SHOULDER_Y), (0.5 + bottom, hem), (0.5 - bottom, hem)]


def sleeve_polygons(category: str, sleeves: str, length: str) -> list[list[tuple[float, float]]]:
    """Both sleeves' outlines in unit coordinates (none when sleeveless), mirrored about the centre line."""
    if sleeves == "sleeveless":
        return []
    shoulder = 0.5 - HALF_WIDTH[category]
    if sleeves == "short":  # a stub angled out from the shoulder
        left = [(shoulder, SHOULDER_Y), (shoulder - 0.15, SHOULDER_Y + 0.1), (shoulder - 0.09, SHOULDER_Y + 0.18),
                (shoulder, SHOULDER_Y + 0.12)]
    elif sleeves == "long":  # hanging to the hem (of a short body; near it on a long one), clear of the body
        cuff = min(HEM_Y[length], 0.78)
        inner = 0.5 - half_width(category, cuff) - SLEEVE_GAP
        left = [(shoulder, SHOULDER_Y), (shoulder - 0.08, SHOULDER_Y + 0.03), (inner - SLEEVE_WIDTH, cuff),
                (inner, cuff), (shoulder, SHOULDER_Y + 0.14)]
    else:
        raise ValueError(f"unknown sleeves {sleeves!r}")
    return [left, [(1.0 - x, y) for x, y in left]]


def _draw_neckline(draw: ImageDraw.ImageDraw, neckline: str, to_px, background, collar) -> None:
    if neckline == "round":
        (x0, y0), (x1, y1) = to_px(0.41, SHOULDER_Y - 0.09), to_px(0.59, SHOULDER_Y + 0.09)
        draw.ellipse([x0, y0, x1, y1], fill=background)
    elif neckline == "square":
        (x0, y0), (x1, y1) = to_px(0.42, SHOULDER_Y - 0.01), to_px(0.58, SHOULDER_Y + 0.11)
        draw.rectangle([x0, y0, x1, y1], fill=background)
    elif neckline == "collared":  # a small V and two flaps standing over the shoulder line
        draw.polygon([to_px(0.46, SHOULDER_Y - 0.01), to_px(0.54, SHOULDER_Y - 0.01), to_px(0.5, SHOULDER_Y + 0.07)],
                     fill=background)
        for side in (1, -1):
            flap = [(0.5 - side * 0.1, SHOULDER_Y - 0.04), (0.5, SHOULDER_Y + 0.02), (0.5 - side * 0.07,
                                                                                     SHOULDER_Y + 0.12)]
            draw.polygon([to_px(x, y) for x, y in flap], fill=collar)
    else:
        raise ValueError(f"unknown neckline {neckline!r}")


def render(garment, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws ``garment`` (a ``garments.Garment``) on a ``size`` x ``size`` RGB canvas; ``rng`` drives the jitter
    only."""
    # Whole-pixel shifts (the pattern moves along exactly) of at most size / 32 pixels and a 2 % size change:
    # small next to most attributes' changes (a neckline changes only a few pixels).
    background = _jittered(BACKGROUND, rng, 5)
    scale = size * (1.0 + rng.uniform(-0.02, 0.02))
    reach = max(1, size // 32)
    dx, dy = (int(v) for v in rng.integers(-reach, reach + 1, size=2))

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (size / 2 + (x - 0.5) * scale + dx, size / 2 + (y - 0.5) * scale + dy)

    # The silhouette as a mask, so the pattern fills body and sleeves alike.
    mask = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask)
    outlines = [body_polygon(garment.category, garment.length)]
    outlines += sleeve_polygons(garment.category, garment.sleeves, garment.length)
    for poly in outlines:
        mask_draw.polygon([to_px(x, y) for x, y in poly], fill=255)

    colour = _jittered(COLOUR_RGB[garment.colour], rng, 6)
    fabric = np.empty((size, size, 3), np.uint8)
    fabric[:] = colour
    fabric[pattern_mask(garment.pattern, size, (dx, dy))] = _pattern_shade(colour)

    img = Image.new("RGB", (size, size), background)
    img.paste(Image.fromarray(fabric), mask=mask)
    draw = ImageDraw.Draw(img)
    if garment.category == "shirt":  # the button placket: a line down the centre front
        draw.line([to_px(0.5, SHOULDER_Y + 0.08), to_px(0.5, HEM_Y[garment.length])],
                  fill=_pattern_shade(_pattern_shade(colour)), width=max(1, size // 32))
    collar = COLLAR_DARK if _luminance(colour) > 200 else COLLAR_LIGHT
    _draw_neckline(draw, garment.neckline, to_px, background, collar)
    return img
