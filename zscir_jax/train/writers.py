"""What the user sees: CLU writers (TensorBoard + log lines, process 0 only), a tqdm bar with steps/s and ETA, and
``say`` / ``warn`` for stage lines (printed by process 0; library INFO logs stay behind ``--verbosity=1``)."""
from __future__ import annotations

import os
import sys

import jax
from clu import metric_writers


def create(workdir: str):
    return metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), just_logging=jax.process_index() > 0)


def progress(total: int, initial: int, desc: str, enabled: bool = True, unit: str = "step"):
    """A step bar; on a terminal it redraws often, in a log file (no TTY) once a minute."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=0.1 if tty else 60.0, disable=not enabled or jax.process_index() > 0)


def say(message: str) -> None:
    """One line on stdout from process 0: the stages of a run."""
    if jax.process_index() == 0:
        print(message, flush=True)


def warn(message: str) -> None:
    """One line on stderr from process 0."""
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)
