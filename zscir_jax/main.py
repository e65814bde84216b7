r"""Command line: train, checkpoint, resume and evaluate one config.

    python -m zscir_jax.main --config configs/demo.py --workdir /tmp/zscir_demo
    python -m zscir_jax.main --config configs/pvlf_clip_b32.py:runlocal --workdir DIR --config.train.batch_size=8

Everything of substance lives in `zscir_jax.train.trainer.train_and_evaluate(config, workdir)`, which a notebook can
call directly. This file only parses flags, turns configuration mistakes into one-line errors, and joins the
processes of a multi-host job.
"""
from __future__ import annotations

import ast
import os
import sys

# TensorFlow (imported by CLU's TensorBoard writer and TFDS; it computes nothing here) prints C++ start-up lines on
# stderr before any flag is read: its oneDNN notice and INFO logs. A user's own settings of these variables win.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, optionally with an argument: configs/x.py[:arg].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries, caches and evaluation output.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' does so on TPU pods, under SLURM/Open MPI with several tasks, or when "
    "--coordinator_address / JAX_COORDINATOR_ADDRESS is set.",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")


PROGRAM = "zscir_jax.main"  # the name in error lines; zscir_jax.synthesize, which shares these flags, sets its own


class UsageError(Exception):
    """A mistake in how the program was called: printed as one line, exit status 2."""


def _fail(message: str) -> None:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(error) -> str:
    text = str(error).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        # KeyError / ml_collections' AttributeError wrap their message in a repr.
        try:
            text = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            pass
    return " ".join(str(text).split()) or type(error).__name__


def _config_path(argv: list[str]) -> str | None:
    """The file part of --config (without its :arg), read straight from argv so it can be checked first."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return value.split(":", 1)[0]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config mistakes reported as one line instead of a traceback."""
    path = _config_path(argv)
    if path is not None and not os.path.isfile(path):
        _fail(f"config file not found: {path}")
    try:
        return flags.FLAGS(argv)
    except SyntaxError as e:
        _fail(f"syntax error in config file {e.filename}, line {e.lineno}: {e.msg}")
    except flags.Error as e:
        _fail(_one_line(e))
    except (AttributeError, KeyError) as e:
        # ml_collections raises these for an override of a key the config does not have.
        _fail(f"unknown config key in an override: {_one_line(e)}")
    except (TypeError, ValueError) as e:
        _fail(f"bad config override value: {_one_line(e)}")
    except OSError as e:
        _fail(_one_line(e))
    return []


def load_config():
    """The parsed config, with a missing or broken config file turned into a UsageError."""
    if flags.FLAGS["config"].present == 0 and _CONFIG.value is None:
        raise UsageError("--config is required, e.g. --config configs/demo.py")
    config = _CONFIG.value
    error = getattr(config, "_error", None) or getattr(config, "error", None)
    if type(config).__name__ == "_ErrorConfig" or error is not None:
        # config_flags defers a failed load into a placeholder; surface its cause.
        cause = error if error is not None else "could not load the config file"
        raise UsageError(f"cannot load config {flags.FLAGS['config'].serialize().split('=', 1)[-1]}: {_one_line(cause)}")
    if not _WORKDIR.value:
        raise UsageError("--workdir is required: the directory for checkpoints, summaries and evaluation output")
    return config


def _wants_distributed() -> bool:
    if _DISTRIBUTED.value != "auto":
        return _DISTRIBUTED.value == "on"
    env = os.environ
    return bool(
        _COORDINATOR.value
        or env.get("JAX_COORDINATOR_ADDRESS")
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
        or "," in env.get("MEGASCALE_COORDINATOR_ADDRESS", "")
    )


def initialize_distributed() -> None:
    """Join a multi-process job; jax auto-detects TPU pods and SLURM, explicit flags cover everything else."""
    import jax

    if not _wants_distributed():
        return
    kwargs = {}
    if _COORDINATOR.value:
        kwargs = dict(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count())


def quiet_libraries() -> None:
    """Library INFO records (Orbax writes hundreds per run) only with --verbosity=1 or more; the run's own stages,
    progress bars, warnings and tables are printed regardless."""
    if flags.FLAGS["verbosity"].present:
        return
    logging.set_verbosity(logging.WARNING)
    import logging as py_logging

    py_logging.getLogger().setLevel(py_logging.WARNING)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = load_config()
    except UsageError as e:
        _fail(str(e))
    quiet_libraries()
    initialize_distributed()
    import jax

    from zscir_jax.errors import UserError
    from zscir_jax.train import workdir_lock

    try:
        if jax.process_index() == 0:  # a busy workdir is refused before the slow imports below
            workdir_lock.refuse_if_held(os.path.abspath(_WORKDIR.value))
        from zscir_jax.train import trainer  # imported late: flag errors stay fast and free of jax start-up

        trainer.train_and_evaluate(config, _WORKDIR.value)
    except UserError as e:
        _fail(_one_line(e))
    except Exception as e:  # noqa: BLE001 - only a full disk is turned into one line; anything else is our bug
        _fail_if_disk_full(e, _WORKDIR.value)
        raise


def _fail_if_disk_full(error: BaseException, workdir: str) -> None:
    from zscir_jax import errors

    full = errors.disk_full(error)
    if full is not None:
        _fail(errors.disk_full_message(full, os.path.abspath(workdir)))


def in_locked_workdir(fn):
    """``fn(workdir)`` once --workdir is checked writable and locked by process 0 (one job per workdir); a
    ``UserError`` ends as one line. For the commands that share these flags (synthesize, sweep)."""
    import jax

    from zscir_jax.errors import UserError
    from zscir_jax.train import preflight, workdir_lock

    workdir = os.path.abspath(_WORKDIR.value)
    try:
        preflight.check_workdir(workdir)
        lock = workdir_lock.WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
        try:
            return fn(workdir)
        finally:
            if lock is not None:
                lock.release()
    except UserError as e:
        _fail(_one_line(e))
    except Exception as e:  # noqa: BLE001 - a full disk is one line; anything else keeps its traceback
        _fail_if_disk_full(e, workdir)
        raise


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
