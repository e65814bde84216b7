"""A PNG grid of a few queries: reference, modification text, top results; ground-truth results get a green border."""
from __future__ import annotations

import dataclasses
import os
import textwrap
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class QueryPicture:
    reference_path: str
    text: str
    results: Sequence[tuple[str, str]]  # (name, path), best first
    targets: frozenset[str] = frozenset()
    title: str = ""


def thumbnail(path: str, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / max(im.width, im.height)  # fit the square, enlarging small images too
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
            return np.asarray(canvas)
    except (OSError, ValueError):
        # A picture is a diagnostic: a missing image shows as grey instead of stopping the evaluation.
        return np.full((size, size, 3), 200, np.uint8)


def save_grid(path: str, pictures: Sequence[QueryPicture], *, thumb: int = 96, dpi: int = 100) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not pictures:
        raise ValueError("save_grid needs at least one query")
    ncols = 2 + max(len(p.results) for p in pictures)  # reference, text, results
    fig, axes = plt.subplots(
        len(pictures), ncols, figsize=(ncols * 1.4, len(pictures) * 1.6), squeeze=False, dpi=dpi
    )
    for row, pic in zip(axes, pictures):
        for ax in row:
            ax.axis("off")
        row[0].imshow(thumbnail(pic.reference_path, thumb))
        row[0].set_title(pic.title or "reference", fontsize=6)
        row[1].text(0.0, 0.5, textwrap.fill(pic.text, 22), fontsize=6, va="center", ha="left", wrap=True)
        for j, (name, img_path) in enumerate(pic.results):
            ax = row[2 + j]
            ax.imshow(thumbnail(img_path, thumb))
            ax.set_title(f"{j + 1}. {name}"[:24], fontsize=5)
            if name in pic.targets:
                ax.add_patch(
                    Rectangle((0, 0), thumb - 1, thumb - 1, fill=False, edgecolor="lime", linewidth=3)
                )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclasses.dataclass
class AttentionPicture:
    reference_path: str
    text: str
    scores: np.ndarray  # [g, g] over the patch grid
    title: str = ""


def upsample(scores: np.ndarray, size: int) -> np.ndarray:
    """A [g, g] grid bilinearly resized to [size, size] and scaled to [0, 1] (DistillCIR's eqs. 20-21)."""
    from PIL import Image

    s = np.asarray(scores, np.float32)
    s = (s - s.min()) / max(float(s.max() - s.min()), 1e-12)
    return np.asarray(Image.fromarray(s, mode="F").resize((size, size), Image.BILINEAR), np.float32)


def save_attention_grid(path: str, pictures: Sequence[AttentionPicture], *, thumb: int = 128, dpi: int = 100) -> str:
    """One row per query: the reference, the attention over it (jet, half transparent), the modification text."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not pictures:
        raise ValueError("save_attention_grid needs at least one query")
    fig, axes = plt.subplots(len(pictures), 3, figsize=(5.0, len(pictures) * 1.7), squeeze=False, dpi=dpi)
    for row, pic in zip(axes, pictures):
        for ax in row:
            ax.axis("off")
        image = thumbnail(pic.reference_path, thumb)
        row[0].imshow(image)
        row[0].set_title(pic.title or "reference", fontsize=6)
        row[1].imshow(image)
        row[1].imshow(upsample(pic.scores, thumb), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        row[1].set_title("attention", fontsize=6)
        row[2].text(0.0, 0.5, textwrap.fill(pic.text, 26), fontsize=6, va="center", ha="left", wrap=True)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
