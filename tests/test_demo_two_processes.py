"""The smoke demo as the main job of a two-host pod: two local processes (4 CPU devices each) joined by
jax.distributed on 127.0.0.1 share one workdir and write the results.json that one process with the same 8 devices
writes. Each stage that writes a file is process 0's; the others wait at barriers and read it."""
import json
import os
import socket
import subprocess
import sys

from test_demo_smoke import ROOT, SMALL, _scores

CONFIG = os.path.join(ROOT, "configs", "demo.py:smoke")
# Two methods keep it short; every stage (benchmark, warm-up, export, PVLF, evaluation) still runs.
FLAGS = [*SMALL, "--config.eval.compare=('image_only',)", "--config.eval.untrained=False"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, *extra):
    return [sys.executable, "-m", "zscir_jax.main", "--config", CONFIG, "--workdir", str(workdir), *FLAGS, *extra]


def test_two_processes_write_what_one_process_writes(tmp_path):
    one = subprocess.run(_command(tmp_path / "one"), capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    assert one.returncode == 0, one.stderr[-3000:]

    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen(_command(tmp_path / "two", f"--coordinator_address={address}", "--num_processes=2",
                                       f"--process_id={i}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=900))
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = json.load(open(tmp_path / "one" / "results.json"))
    double = json.load(open(tmp_path / "two" / "results.json"))
    assert set(single) == set(double) == {"pvlf", "image_only"}
    assert _scores(double) == _scores(single)
    # Process 0 alone prints the tables; the other process stays quiet.
    assert "cirr: cirr val" in outs[0][0] and "cirr: cirr val" not in outs[1][0]
