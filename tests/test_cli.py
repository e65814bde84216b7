"""The command line turns configuration mistakes into one-line errors (exit status 2), not tracebacks."""
import subprocess
import sys
import textwrap

import pytest

CONFIG = textwrap.dedent(
    """
    import ml_collections

    def get_config(arg=None):
        config = ml_collections.ConfigDict()
        config.train = ml_collections.ConfigDict({"batch_size": 4, "steps": 10})
        return config
    """
)


def run_main(*args):
    return subprocess.run(
        [sys.executable, "-m", "zscir_jax.main", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG)
    return str(path)


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda c, w: ["--config", c, "--config.train.batchsize=8", "--workdir", w], "unknown config key"),
        (lambda c, w: ["--config", c, "--config.train.batch_size=abc", "--workdir", w], "batch_size=abc"),
        (lambda c, w: ["--config", c + ".missing:arg", "--workdir", w], "config file not found"),
        (lambda c, w: ["--workdir", w], "--config is required"),
        (lambda c, w: ["--config", c], "--workdir is required"),
        (lambda c, w: ["--config", c, "--workdir", w, "--no_such_flag=1"], "no_such_flag"),
    ],
    ids=["unknown-key", "bad-value", "missing-file", "no-config", "no-workdir", "unknown-flag"],
)
def test_config_mistakes_are_one_line_errors(config_file, tmp_path, make_args, expected):
    result = run_main(*make_args(config_file, str(tmp_path / "work")))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zscir_jax.main: error:")
    assert expected in lines[0]


def test_syntax_error_names_file_and_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    result = run_main("--config", str(broken), "--workdir", str(tmp_path))
    assert result.returncode == 2
    assert f"{broken}, line 1" in result.stderr
    assert "Traceback" not in result.stderr
