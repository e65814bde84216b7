r"""Command line: synthesize training triplets with one recipe.

    python -m zscir_jax.synthesize --config configs/synth/mvftji.py:demo --workdir /tmp/zscir_synth
    python -m zscir_jax.synthesize --config configs/synth/distillcir.py --workdir runs/synth \
        --config.backend.checkpoint=~/ckpt/llava-1.5-7b-hf --config.data.pairs=~/data/unlabeled.jsonl

Everything of substance is ``zscir_jax.synthesis.engine.synthesize(config, workdir)``, which a notebook can call.
The flags (``--config``, ``--workdir``, ``--distributed`` and the multi-process ones) and their one-line errors are
``zscir_jax.main``'s; only the program name in the message differs.
"""
from __future__ import annotations

import os

from absl import app

from zscir_jax import main as cli

PROG = "zscir_jax.synthesize"
_fail = cli._fail  # prints "zscir_jax.synthesize: error: ..." once run() has set cli.PROGRAM


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = cli.load_config()
    except cli.UsageError as e:
        _fail(str(e))
    cli.quiet_libraries()
    cli.initialize_distributed()
    import jax

    from zscir_jax.errors import UserError
    from zscir_jax.synthesis import engine  # imported late: flag errors stay fast and free of jax start-up

    from zscir_jax.train import preflight, workdir_lock

    workdir = os.path.abspath(cli._WORKDIR.value)
    try:
        preflight.check_workdir(workdir)
        lock = workdir_lock.WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
        try:
            manifest = engine.synthesize(config, workdir)
        finally:
            if lock is not None:
                lock.release()
    except UserError as e:
        _fail(cli._one_line(e))
    if jax.process_index() == 0:
        print(engine.summary(workdir, manifest), flush=True)
        print(f"train on them with {engine.training_flag(workdir, manifest)}", flush=True)


def run() -> None:
    cli.PROGRAM = PROG
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
