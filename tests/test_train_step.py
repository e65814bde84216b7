"""A few jitted training steps lower the loss (PVLF, TransAgg, CLIP warm-up); a NaN loss stops the run cleanly."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import common  # noqa: E402

from zscir_jax import sharding  # noqa: E402
from zscir_jax.train import checkpoint, trainer  # noqa: E402


def _run(method, tmp_path, **train):
    c = common.tiny(method)
    c.train.update(train)
    run_dir = str(tmp_path / method)
    trainer.train(c, run_dir, sharding.make_mesh((-1, 1, 1)))
    return trainer.read_metrics(run_dir), run_dir


@pytest.mark.parametrize("method", ["pvlf", "transagg", "clip_pretrain"])
def test_loss_decreases(method, tmp_path):
    metrics, _ = _run(method, tmp_path, steps=12, checkpoint_every=100)
    losses = [metrics[s]["loss"] for s in sorted(metrics)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path):
    c = common.tiny("pvlf")
    c.train.update(steps=8, checkpoint_every=2, async_checkpoints=False)
    c.data.nan_at = 4  # the 5th batch carries NaN pixels
    run_dir = str(tmp_path / "nan")
    with pytest.raises(trainer.TrainingDiverged, match=r"NaN/inf at or before step 5.*Last good checkpoint: step 4"):
        trainer.train(c, run_dir, sharding.make_mesh((-1, 1, 1)))
    ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints"), every=2, keep=3)
    assert ckpt.latest_step() == 4
    # The kept state is finite: resuming from it and training on (without the NaN batch) works.
    c.data.nan_at = -1
    trainer.train(c, run_dir, sharding.make_mesh((-1, 1, 1)))
    losses = trainer.read_metrics(run_dir)
    assert all(np.isfinite(losses[s]["loss"]) for s in range(5, 9))
