"""Test-server submission files for the hidden-ground-truth splits, and the checks the servers apply.

CIRR (Cuberick-Orion/CIRR ``Test-split_server.md``): two JSON objects, each with ``"version": "rc2"`` and
``"metric": "recall"`` (value per pairid: the top-50 image names) or ``"metric": "recall_subset"`` (the top-3 of the
query's img_set members); keys are the pairids as strings; each file at most 5 MB. Our lists never contain the
reference (the CIRR protocol removes it from its own ranking).

CIRCO (miccunifi/CIRCO ``README.md``): one JSON object ``{"<query id>": [50 COCO image ids (int)], ...}`` holding
every test query. The official scorer (``src/evaluation.py``) casts both the query ids (``int(query_id)``) and the
image ids (``np.array(predictions, dtype=int)``), so numeric strings are accepted there: the validator accepts them
too, with a warning, and rejects anything that is not an integer or a string of digits.

Validation: ``check_cirr`` / ``check_circo`` / ``check_file`` return a :class:`Report` (``errors`` and ``warnings``,
one human-readable line each); ``validate_cirr`` / ``validate_circo`` / ``validate_file`` return only the errors
(empty means valid) and raise each warning as a :class:`SubmissionWarning` (Python's ``warnings`` module).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence

MAX_CIRR_BYTES = 5 * 1024 * 1024
CIRR_LENGTHS = {"recall": 50, "recall_subset": 3}
CIRCO_LENGTH = 50


def cirr_submissions(
    pairids: Sequence[str], top50: Sequence[Sequence[str]], subset_top3: Sequence[Sequence[str]], version="rc2"
) -> tuple[dict, dict]:
    recall = {"version": version, "metric": "recall"}
    subset = {"version": version, "metric": "recall_subset"}
    for pid, names, sub in zip(pairids, top50, subset_top3, strict=True):
        recall[str(pid)] = [str(n) for n in names[:50]]
        subset[str(pid)] = [str(n) for n in sub[:3]]
    return recall, subset


def circo_submission(query_ids: Sequence[str], top50: Sequence[Sequence[str]]) -> dict:
    return {str(q): [int(n) for n in names[:CIRCO_LENGTH]] for q, names in zip(query_ids, top50, strict=True)}


def write_json(path: str, obj: Mapping, *, max_bytes: int | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps(obj)
    if max_bytes is not None and len(text.encode()) > max_bytes:
        raise ValueError(f"{path}: submission is {len(text.encode())} bytes, over the server's {max_bytes}")
    with open(path, "w") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Validation.


class SubmissionWarning(UserWarning):
    """Something the server accepts but that is not the documented format (e.g. CIRCO ids written as strings)."""


@dataclasses.dataclass
class Report:
    errors: list[str] = dataclasses.field(default_factory=list)  # the server would reject the file
    warnings: list[str] = dataclasses.field(default_factory=list)  # accepted, but not the documented format

    @property
    def ok(self) -> bool:
        return not self.errors


def _errors_and_warn(report: Report) -> list[str]:
    for w in report.warnings:
        warnings.warn(w, SubmissionWarning, stacklevel=3)
    return report.errors


def _cirr_queries(annotations) -> dict[str, dict]:
    """pairid (str) -> {reference, members} from a cap.rc2.test1.json-style list (a path or the loaded list)."""
    if isinstance(annotations, str):
        with open(annotations) as f:
            annotations = json.load(f)
    out = {}
    for rec in annotations:
        members = rec.get("img_set", {}).get("members", [])
        out[str(rec["pairid"])] = {"reference": rec["reference"], "members": list(members)}
    return out


def validate_cirr(obj, annotations=None, *, version: str = "rc2") -> list[str]:
    """The errors of :func:`check_cirr` (its warnings are raised as :class:`SubmissionWarning`)."""
    return _errors_and_warn(check_cirr(obj, annotations, version=version))


def check_cirr(obj, annotations=None, *, version: str = "rc2", gallery_size: int | None = None) -> Report:
    """``gallery_size``: a gallery smaller than the server's (an embedded benchmark) allows shorter top-50 lists:
    the gallery minus the reference."""
    return Report(_cirr_problems(obj, annotations, version, gallery_size))


def _cirr_problems(obj, annotations, version: str, gallery_size: int | None = None) -> list[str]:
    if not isinstance(obj, dict):
        return [f"top level is a {type(obj).__name__}, expected an object"]
    problems = []
    if obj.get("version") != version:
        problems.append(f"'version' is {obj.get('version')!r}, expected {version!r}")
    metric = obj.get("metric")
    if metric not in CIRR_LENGTHS:
        problems.append(f"'metric' is {metric!r}, expected 'recall' or 'recall_subset'")
        return problems
    n = CIRR_LENGTHS[metric]
    if gallery_size is not None and metric == "recall":
        n = min(n, gallery_size - 1)
    queries = None if annotations is None else _cirr_queries(annotations)
    entries = {k: v for k, v in obj.items() if k not in ("version", "metric")}
    for key, names in entries.items():
        if not key.isdigit():
            problems.append(f"key {key!r} is not a pairid")
            continue
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            problems.append(f"pairid {key}: value must be a list of image names (str)")
            continue
        if len(names) != n:
            problems.append(f"pairid {key}: {len(names)} entries, expected {n} for {metric}")
        if len(set(names)) != len(names):
            problems.append(f"pairid {key}: repeated image names")
        if any(x.endswith((".png", ".jpg")) for x in names):
            problems.append(f"pairid {key}: image names must not carry a file extension")
        if queries is not None and key in queries:
            q = queries[key]
            if q["reference"] in names:
                problems.append(f"pairid {key}: the reference {q['reference']} is in its own list")
            if metric == "recall_subset":
                allowed = set(q["members"]) - {q["reference"]}
                bad = [x for x in names if x not in allowed]
                if bad:
                    problems.append(f"pairid {key}: {bad} not in the img_set members minus the reference")
    if queries is not None:
        missing = sorted(set(queries) - set(entries), key=int)
        extra = sorted(set(entries) - set(queries), key=lambda s: (not s.isdigit(), s))
        if missing:
            problems.append(f"{len(missing)} pairid(s) missing, first {missing[:5]}")
        if extra:
            problems.append(f"{len(extra)} unknown pairid(s), first {extra[:5]}")
    return problems


_DIGITS = re.compile(r"\s*[0-9]+\s*")


def _as_id(x) -> int | None:
    """An int id (not bool) as it is; a string of ASCII digits (surrounding blanks allowed) cast as the official
    scorer does; None for anything else."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, str) and _DIGITS.fullmatch(x):
        return int(x)
    return None


def validate_circo(obj, annotations=None) -> list[str]:
    """The errors of :func:`check_circo` (its warnings are raised as :class:`SubmissionWarning`)."""
    return _errors_and_warn(check_circo(obj, annotations))


def check_circo(obj, annotations=None, *, gallery_size: int | None = None) -> Report:
    """Check a CIRCO submission object: errors where the server would fail, warnings where it casts.

    Keys are query ids ("0".."N-1"; int keys of a Python dict are fine too, JSON writes them as the same strings);
    a key such as "007" or " 7" is read as 7 with a warning. Values are 50 distinct COCO image ids, ints; numeric
    strings ("123") are accepted with one warning naming how many queries use them. A ``gallery_size`` under 50
    (an embedded benchmark) allows lists of that length.
    """
    length = CIRCO_LENGTH if gallery_size is None else min(CIRCO_LENGTH, gallery_size)
    if not isinstance(obj, dict):
        return Report([f"top level is a {type(obj).__name__}, expected an object"])
    problems, notes = [], []
    seen: dict[int, object] = {}
    odd_keys, str_value_queries = [], []
    for key, ids in obj.items():
        qid = _as_id(key)
        if qid is None:
            problems.append(f"key {key!r} is not a query id")
            continue
        if isinstance(key, str) and key != str(qid):
            odd_keys.append(key)
        if qid in seen:
            problems.append(f"query id {qid} appears twice (keys {seen[qid]!r} and {key!r})")
            continue
        seen[qid] = key
        values = [_as_id(x) for x in ids] if isinstance(ids, list) else None
        if values is None or any(v is None for v in values):
            problems.append(f"query {qid}: value must be a list of COCO image ids (int, or a string of digits)")
            continue
        if any(isinstance(x, str) for x in ids):
            str_value_queries.append(qid)
        if len(values) != length:
            problems.append(f"query {qid}: {len(values)} ids, expected {length}")
        if len(set(values)) != len(values):
            problems.append(f"query {qid}: repeated image ids")
    if odd_keys:
        notes.append(f"{len(odd_keys)} query id key(s) not written as plain integers, read as ints like the official "
                     f"scorer does: first {odd_keys[:5]}")
    if str_value_queries:
        notes.append(f"{len(str_value_queries)} query(ies) give image ids as strings, not ints; the official scorer "
                     f"casts them to int: first queries {str_value_queries[:5]}")
    if annotations is not None:
        if isinstance(annotations, str):
            with open(annotations) as f:
                annotations = json.load(f)
        expected = {int(rec["id"]) for rec in annotations}
    else:
        # The server asks for every query id; ids run 0..N-1.
        expected = set(range(len(obj)))
    missing = sorted(expected - set(seen))
    extra = sorted(set(seen) - expected)
    if missing:
        problems.append(f"{len(missing)} query id(s) missing, first {[str(i) for i in missing[:5]]}")
    if extra:
        problems.append(f"{len(extra)} unknown query id(s), first {[str(i) for i in extra[:5]]}")
    return Report(problems, notes)


def validate_file(path: str, fmt: str, annotations=None) -> list[str]:
    """The errors of :func:`check_file` (its warnings are raised as :class:`SubmissionWarning`)."""
    return _errors_and_warn(check_file(path, fmt, annotations))


def check_file(path: str, fmt: str, annotations=None, *, gallery_size: int | None = None) -> Report:
    """Read ``path`` and check it against the rules of ``fmt`` ("cirr" or "circo")."""
    if fmt not in ("cirr", "circo"):
        raise ValueError(f"format must be 'cirr' or 'circo', got {fmt!r}")
    problems = []
    size = os.path.getsize(path)
    if fmt == "cirr" and size > MAX_CIRR_BYTES:
        problems.append(f"file is {size} bytes, over the CIRR server's {MAX_CIRR_BYTES}")
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        return Report(problems + [f"not valid JSON: {e}"])
    report = (check_cirr(obj, annotations, gallery_size=gallery_size) if fmt == "cirr"
              else check_circo(obj, annotations, gallery_size=gallery_size))
    return Report(problems + report.errors, report.warnings)
