r"""Command line: a grid of config variants over several seeds on one prepared workdir, into one table with intervals.

    python -m zscir_jax.sweep --config configs/demo.py:smoke --sweep configs/sweeps/pvlf_ablations.py:smoke \
        --workdir /tmp/zscir_sweep

``--config`` is the base config (with its overrides, as for ``zscir_jax.main``); ``--sweep`` a Python file whose
``get_sweep(arg)`` returns the grid (``zscir_jax.train.sweep``). A rerun continues where the last one stopped. The
table is printed and written to ``WORKDIR/sweep.md`` / ``sweep.json``.
"""
from __future__ import annotations

import os
import runpy

from absl import app, flags

from zscir_jax import main as cli

PROG = "zscir_jax.sweep"
_SWEEP = flags.DEFINE_string("sweep", None, "A sweep file with get_sweep(arg): configs/sweeps/x.py[:arg].")
_fail = cli._fail


def load_sweep(spec: str) -> dict:
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise cli.UsageError(f"sweep file not found: {path}")
    fn = runpy.run_path(path).get("get_sweep")
    if fn is None:
        raise cli.UsageError(f"{path} has no get_sweep(arg)")
    try:
        return dict(fn(arg or None))
    except ValueError as e:
        raise cli.UsageError(f"{spec}: {cli._one_line(e)}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = cli.load_config()
        if not _SWEEP.value:
            raise cli.UsageError("--sweep is required, e.g. --sweep configs/sweeps/pvlf_ablations.py:smoke")
        sweep = load_sweep(_SWEEP.value)
    except cli.UsageError as e:
        _fail(str(e))
    cli.quiet_libraries()
    cli.initialize_distributed()
    from zscir_jax.errors import UserError
    from zscir_jax.train import sweep as sweep_lib  # imported late: flag errors stay fast and free of jax start-up

    try:
        sweep_lib.check(sweep)
    except UserError as e:
        _fail(cli._one_line(e))
    cli.in_locked_workdir(lambda workdir: sweep_lib.run_sweep(config, sweep, workdir,
                                                              log=lambda s: print(s, flush=True)))


def run() -> None:
    cli.PROGRAM = PROG
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
