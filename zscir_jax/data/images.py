"""Image decoding and CLIP preprocessing (numpy / PIL only: runs inside Grain workers).

The one preprocessing of the project: training pipelines and the evaluator both go through ``to_uint8_square`` and
``normalize``, with the mean / std of the checkpoint in use (``normalization_for``).
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(ValueError):
    """A missing or undecodable image; the message names the file. ``kind``: "missing_image" | "undecodable_image"
    (how skips are counted)."""

    def __init__(self, message: str, kind: str = "undecodable_image"):
        super().__init__(message)
        self.kind = kind


def load_image(path: str) -> Image.Image:
    """Decodes ``path`` fully into an RGB PIL image; raises ``ImageError`` naming the path when it cannot."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file must fail here, not later inside a transform
            return img.convert("RGB")
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {path}", "missing_image") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot decode image {path}: {e}") from e


def to_uint8_square(img: Image.Image, size: int) -> np.ndarray:
    """CLIP's geometry without normalisation: shorter side -> ``size`` (bicubic), centre crop; uint8 [size,size,3]."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    # round() like torchvision's Resize(int): the shorter side becomes exactly ``size``.
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def normalize(pixels_uint8: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    x = pixels_uint8.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess(img: Image.Image, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """CLIP preprocessing: resize shorter side + centre crop + /255 + normalise -> float32 [size, size, 3]."""
    return normalize(to_uint8_square(img, size), mean, std)


def normalization_for(checkpoint: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a checkpoint was trained with: transformers' ``preprocessor_config.json`` (``image_mean`` /
    ``image_std``), OpenCLIP's ``open_clip_config.json`` (``preprocess_cfg.mean`` / ``std``), else CLIP's."""
    if checkpoint and os.path.isdir(checkpoint):
        for name, keys in (("preprocessor_config.json", ("image_mean", "image_std")),
                           ("open_clip_config.json", ("preprocess_cfg.mean", "preprocess_cfg.std"))):
            path = os.path.join(checkpoint, name)
            if not os.path.isfile(path):
                continue
            with open(path) as f:
                cfg = json.load(f)
            found = [_dotted(cfg, k) for k in keys]
            if all(v is not None for v in found):
                return tuple(map(float, found[0])), tuple(map(float, found[1]))
    return CLIP_MEAN, CLIP_STD


def _dotted(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d
