"""A user's mistake is one line naming the key and what is allowed, found before any stage runs; a workdir in use
by another job is refused at once."""
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402

from zscir_jax.errors import UserError  # noqa: E402
from zscir_jax.train import trainer, workdir_lock  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

MISTAKES = [
    ("train.batch_size", 0, "config.train.batch_size=0: must be > 0"),
    ("train.steps", -5, "config.train.steps=-5: must be >= 0"),
    ("train.batch_size", 12, "config.train.batch_size=12: must be a multiple of the 8 data-parallel devices"),
    ("optim.finetune", "all", "config.optim.finetune='all': allowed values are none, text, both"),
    ("loss.name", "triplet", "config.loss.name='triplet': allowed values are focal, info_nce"),
    ("loss.temperature", 0.0, "config.loss.temperature=0.0: must be > 0"),
    ("data.on_error", "ignore", "config.data.on_error='ignore': allowed values are raise, skip"),
    ("data.source", "csv", "config.data.source='csv': allowed values are triplets, pairs, random"),
    ("data.pair_neighbours", -1, "config.data.pair_neighbours=-1: must be >= 0"),
    ("data.pair_neighbours", 1, "config.data.pair_neighbours=1: only methods trained on image-caption pairs use it; "
                                "pvlf trains on triplets"),
    ("mesh.shape", (3, 1, 1), "config.mesh.shape=(3, 1, 1): needs (data, fsdp, model)"),
    ("method", "pvfl", "unknown method 'pvfl'"),
    ("eval.compare", ("image_only", "imageonly"), "config.eval.compare: unknown method 'imageonly'"),
    ("model.clip_path", "/no/such/clip", "config.model.clip_path='/no/such/clip': no such file"),
]


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


@pytest.mark.parametrize("key, value, message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_found_before_any_stage(tmp_path, key, value, message):
    c = demo.get_config("smoke")
    _set(c, key, value)
    if key == "model.clip_path":
        c.prepare = None  # a user config: no demo preparation filling the path in
        c.evals = {}
    with pytest.raises(UserError) as e:
        trainer.train_and_evaluate(c, str(tmp_path))
    assert message in str(e.value)
    assert not os.path.exists(tmp_path / "scenes") and not os.path.exists(tmp_path / "pvlf")


def test_missing_triplets_file(tmp_path):
    c = demo.get_config("smoke")
    c.prepare = None
    c.evals = {}
    c.data.triplets = str(tmp_path / "nope.jsonl")
    c.data.tokenizer = ""
    c.model.clip_path = ""
    c.data.source = "triplets"
    with pytest.raises(UserError, match="config.data.triplets: file not found: .*nope.jsonl"):
        trainer.train_and_evaluate(c, str(tmp_path / "w"))


def test_read_only_workdir(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: use a path that cannot be a directory instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        workdir = blocker / "w"
    else:
        os.chmod(tmp_path, 0o500)
        workdir = tmp_path / "w"
    with pytest.raises(UserError, match="--workdir .*cannot create it"):
        trainer.train_and_evaluate(demo.get_config("smoke"), str(workdir))


def _cli(workdir, *extra, timeout=120):
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config", os.path.join(ROOT, "configs", "demo.py:smoke"),
           "--workdir", str(workdir), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("extra, message", [
    (["--config.train.batch_size=0"], "config.train.batch_size=0: must be > 0"),
    ([], "unknown config argument 'bogus'; allowed: smoke"),
], ids=["batch-size-0", "bogus-arg"])
def test_cli_mistakes_are_one_line(tmp_path, extra, message):
    args = list(extra)
    if not extra:  # the bogus config argument replaces :smoke
        run = subprocess.run([sys.executable, "-m", "zscir_jax.main", "--config",
                              os.path.join(ROOT, "configs", "demo.py:bogus"), "--workdir", str(tmp_path)],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    else:
        run = _cli(tmp_path, *args)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("zscir_jax.main: error:") and message in lines[0]


def test_busy_workdir_is_refused_quickly_and_a_dead_holder_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from zscir_jax.train import workdir_lock\n"
        "lock = workdir_lock.WorkdirLock(%r).acquire(); print('held', flush=True); time.sleep(120)") % (ROOT, str(tmp_path))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        run = _cli(tmp_path)
        assert time.time() - t0 < 30
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, run.stderr
        assert f"is in use by pid {holder.pid}" in lines[0]
    finally:
        holder.kill()
        holder.wait()
    # SIGKILLed holder: the kernel released its flock, so the next job takes the workdir over.
    workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_line_naming_the_file_and_the_last_good_checkpoint(tmp_path):
    """A real ENOSPC from the kernel: PVLF's metrics.jsonl is /dev/full, which refuses every write."""
    os.makedirs(tmp_path / "pvlf")
    os.symlink("/dev/full", tmp_path / "pvlf" / "metrics.jsonl")
    run = _cli(tmp_path, "--config.prepare.num_train=120", "--config.prepare.num_val_queries=20",
               "--config.train.steps=4", "--config.train.log_every=2", "--config.warmup.train.steps=4",
               "--config.warmup.train.log_every=2", "--config.train.progress_bar=False",
               "--config.warmup.train.progress_bar=False", timeout=600)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith("zscir_jax.main: error: no space left on device while writing")
    assert str(tmp_path / "pvlf" / "metrics.jsonl") in lines[0] and "clip_pretrain step 4" in lines[0]
    workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()  # released on the way out
