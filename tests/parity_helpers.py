"""Helpers shared by the tower parity tests (``test_{clip,blip,blip2,siglip}_parity.py``)."""
import numpy as np
import torch


def pixels(size, n=2, seed=1, width=None):
    """``n`` random NHWC float32 images of ``size`` x ``width`` (default square)."""
    return np.random.default_rng(seed).standard_normal((n, size, width or size, 3)).astype(np.float32)


def nchw(px):
    """NHWC numpy images as the NCHW torch tensor transformers takes."""
    return torch.from_numpy(px).permute(0, 3, 1, 2)


def max_diff(a, b):
    """The max absolute difference of two arrays (numpy, jax or torch), in float64."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
