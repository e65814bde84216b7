"""Check a test-server submission file before uploading it.

    python -m zscir_jax.evaluation.validate FILE --format cirr  [--annotations cap.rc2.test1.json]
    python -m zscir_jax.evaluation.validate FILE --format circo [--annotations annotations/test.json]

Prints one line per problem and exits with status 1 if there is any (0 and "ok" otherwise). With ``--annotations``
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
        problems = submission.validate_file(args.file, args.format, args.annotations)
    except (OSError, KeyError, TypeError, ValueError) as e:
        problems = [f"cannot check: {e}"]
    for p in problems:
        print(f"{args.file}: {p}")
    if not problems:
        print(f"{args.file}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
