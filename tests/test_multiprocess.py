"""Two local processes joined by jax.distributed on 127.0.0.1 see one global batch, as the hosts of a pod would."""
import json
import os
import socket
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import jax
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    import jax.numpy as jnp
    import numpy as np
    from zscir_jax import sharding

    pid = jax.process_index()
    mesh = sharding.make_mesh((-1, 1, 1))
    # The full batch is 0..15; each process holds only its own half, as a per-host data loader would.
    full = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    local = full[pid * 8:(pid + 1) * 8]
    batch = sharding.global_batch(mesh, {"x": local})

    @jax.jit
    def stats(b):
        # A global reduction and a batch-wide similarity matrix: both need every host's rows.
        x = b["x"]
        return jnp.sum(x), jnp.max(x @ x.T)

    total, top = stats(batch)
    print(json.dumps({"pid": pid, "devices": jax.device_count(), "shape": list(batch["x"].shape),
                      "total": float(total), "top": float(top)}))
    """
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_assemble_one_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4", XLA_FLAGS="")
    procs = [
        subprocess.Popen([sys.executable, str(script), address, str(i)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    full = [[float(3 * r + c) for c in range(3)] for r in range(16)]
    expected_total = sum(map(sum, full))
    expected_top = max(sum(a * b for a, b in zip(x, y)) for x in full for y in full)
    for out in outputs:
        assert out["devices"] == 8 and out["shape"] == [16, 3]
        assert out["total"] == expected_total
        assert out["top"] == expected_top
