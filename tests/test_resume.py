"""Kill-and-resume: a run SIGKILLed after a checkpoint and restarted continues with exactly the losses of an
uninterrupted run; a resume with an incompatible config stops with a message naming what differs."""
import os
import subprocess
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import common  # noqa: E402

from zscir_jax import sharding  # noqa: E402
from zscir_jax.train import checkpoint, trainer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
STEPS = 6

CHILD = textwrap.dedent("""
    import os, signal, sys
    import jax
    jax.config.update("jax_default_matmul_precision", "float32")
    sys.path.insert(0, os.path.join({root!r}, "configs"))
    import common
    from zscir_jax import sharding
    from zscir_jax.data import fake_data
    from zscir_jax.train import trainer

    kill_at = int(sys.argv[2])
    if kill_at >= 0:
        original = fake_data.RandomTriplets.__next__
        def dying(self):
            if self.position == kill_at:  # asked for the batch of step kill_at + 1: die hard, mid-run
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self)
        fake_data.RandomTriplets.__next__ = dying
    c = common.tiny("pvlf")
    c.train.update(steps={steps}, checkpoint_every=2)
    trainer.train(c, sys.argv[1], sharding.make_mesh((-1, 1, 1)))
""").format(root=ROOT, steps=STEPS)


def _child(run_dir, kill_at):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", CHILD, run_dir, str(kill_at)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    run = str(tmp_path / "killed")
    first = _child(run, kill_at=5)
    assert first.returncode == -9, first.stderr[-3000:]
    saved = checkpoint.Checkpointer(os.path.join(run, "checkpoints"), every=2, keep=3).latest_step()
    assert saved in (2, 4)  # the async save of step 4 may or may not have finished before the kill
    second = _child(run, kill_at=-1)
    assert second.returncode == 0, second.stderr[-3000:]

    c = common.tiny("pvlf")
    c.train.update(steps=STEPS, checkpoint_every=2)
    straight = str(tmp_path / "straight")
    trainer.train(c, straight, sharding.make_mesh((-1, 1, 1)))
    resumed, reference = trainer.read_metrics(run), trainer.read_metrics(straight)
    for s in range(1, STEPS + 1):
        assert resumed[s]["loss"] == reference[s]["loss"], (s, resumed[s]["loss"], reference[s]["loss"])

    # Same workdir, a different global batch size: refused with a message that says what differs.
    c.train.batch_size = 16
    with pytest.raises(checkpoint.IncompatibleResume, match=r"global_batch_size: checkpoint has 8, config has 16"):
        trainer.train(c, straight, sharding.make_mesh((-1, 1, 1)))
    c.train.batch_size = 8
    c.model.fusion.num_prompts = 2
    with pytest.raises(checkpoint.IncompatibleResume, match=r"model shape differs: .*fusion/prompts"):
        trainer.train(c, straight, sharding.make_mesh((-1, 1, 1)))
