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

    from zscir_jax.synthesis import engine  # imported late: flag errors stay fast and free of jax start-up

    workdir = os.path.abspath(cli._WORKDIR.value)
    manifest = cli.in_locked_workdir(lambda w: engine.synthesize(config, w))
    if jax.process_index() == 0:
        print(engine.summary(workdir, manifest), flush=True)
        print(f"train on them with {engine.training_flag(workdir, manifest)}", flush=True)


def run() -> None:
    cli.PROGRAM = PROG
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
