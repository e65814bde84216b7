"""Check a test-server submission file before uploading it.

    python -m zscir_jax.evaluation.validate FILE --format cirr  [--annotations cap.rc2.test1.json]
    python -m zscir_jax.evaluation.validate FILE --format circo [--annotations annotations/test.json]

Prints one line per problem and exits with status 1 if there is any (0 and "ok" otherwise). Warnings (things the
server accepts but that are not the documented format, e.g. CIRCO ids written as strings) print as
"FILE: warning: ..." and do not change the exit status. With ``--annotations``
the CIRR check also covers every pairid, the reference never ranked for itself and subset entries being img_set
members; the CIRCO check covers every query id.
"""
from __future__ import annotations

import argparse
import sys

from zscir_jax.evaluation import submission


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zscir_jax.evaluation.validate", description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--format", choices=("cirr", "circo"), required=True)
    parser.add_argument("--annotations", default=None, help="the split's annotation file (all query ids)")
    args = parser.parse_args(argv)
    try:
        report = submission.check_file(args.file, args.format, args.annotations)
    except (OSError, KeyError, TypeError, ValueError) as e:
        report = submission.Report([f"cannot check: {e}"])
    for p in report.errors:
        print(f"{args.file}: {p}")
    for w in report.warnings:
        print(f"{args.file}: warning: {w}")
    if report.ok:
        n = len(report.warnings)
        print(f"{args.file}: ok" + (f" ({n} warning{'s' if n != 1 else ''})" if n else ""))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
