"""The launchers' --dry-run prints the command each would run (the config, the workdir and every override passed
through), runs nothing, and a missing argument prints the usage with status 2."""
import os
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _bash(*args):
    return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_tpu_pod_dry_run():
    run = _bash("launch/tpu_pod.sh", "--dry-run", "my-tpu", "us-central2-b", "configs/pvlf_clip_b32.py", "gs://b/w",
                "--config.train.batch_size=256")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.startswith("gcloud compute tpus tpu-vm ssh my-tpu --zone us-central2-b --worker=all")
    assert ("python -m zscir_jax.main --config configs/pvlf_clip_b32.py --workdir gs://b/w "
            "--config.train.batch_size=256") in out


def test_slurm_dry_run_and_usage():
    run = _bash("launch/slurm_gpu.sbatch", "--dry-run", "configs/pvlf_clip_b32.py", "/shared/w",
                "--config.train.steps=5")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ("srun python -m zscir_jax.main --config configs/pvlf_clip_b32.py --workdir /shared/w "
                                  "--config.train.steps=5")
    usage = _bash("launch/slurm_gpu.sbatch", "--dry-run")
    assert usage.returncode == 2 and "sbatch --nodes=2" in usage.stdout
    usage = _bash("launch/tpu_pod.sh", "--dry-run", "only-a-name")
    assert usage.returncode == 2 and "launch/tpu_pod.sh TPU_NAME" in usage.stdout
