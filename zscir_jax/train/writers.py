"""Metric output: CLU writers (TensorBoard + log lines, process 0 only) and a tqdm bar with steps/s and ETA."""
from __future__ import annotations

import os

import jax
from clu import metric_writers


def create(workdir: str):
    return metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), just_logging=jax.process_index() > 0)


def progress(total: int, initial: int, desc: str, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                disable=not enabled or jax.process_index() > 0)
