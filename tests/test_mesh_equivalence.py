"""The same run on a 1-device mesh and on 8 devices (data x fsdp x model = 2x2x2) gives the same losses."""
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import common  # noqa: E402

from zscir_jax import sharding  # noqa: E402
from zscir_jax.train import trainer  # noqa: E402


def test_one_vs_eight_devices(tmp_path):
    c = common.tiny("pvlf")
    c.optim.finetune = "both"  # shard and update every parameter
    c.train.update(steps=3, checkpoint_every=100, async_checkpoints=False)
    runs = {}
    for name, mesh in (("one", sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])),
                       ("eight", sharding.make_mesh((2, 2, 2)))):
        trainer.train(c, str(tmp_path / name), mesh)
        runs[name] = trainer.read_metrics(str(tmp_path / name))
    for s in (1, 2, 3):
        np.testing.assert_allclose(runs["eight"][s]["loss"], runs["one"][s]["loss"], rtol=1e-5, atol=1e-5)
