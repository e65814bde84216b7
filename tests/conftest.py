"""Test-suite set-up: runs on CPU with 8 forced host devices so mesh tests can build 1- and 8-device meshes."""
import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# Compiled programs are cached on disk and shared by every test and the subprocesses some tests start (resume,
# multi-process), which compile the same steps again; only compilations slower than 0.3 s are worth a file.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "jax_compilation"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax  # noqa: E402
import pytest  # noqa: E402

# Parity tests compare against float32 PyTorch: keep XLA's CPU matmuls in full precision.
jax.config.update("jax_default_matmul_precision", "float32")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data_dir():
    """The real benchmark annotation files (../shared/data beside the checkout); skips where it is absent."""
    path = os.environ.get("ZSCIR_SHARED_DATA", os.path.abspath(SHARED_DATA))
    if not os.path.isdir(path):
        pytest.skip(f"real annotation files not found at {path} (set ZSCIR_SHARED_DATA)")
    return path
