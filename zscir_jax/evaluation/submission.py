"""Test-server submission files for the hidden-ground-truth splits, and the checks the servers apply.

CIRR (Cuberick-Orion/CIRR ``Test-split_server.md``): two JSON objects, each with ``"version": "rc2"`` and
``"metric": "recall"`` (value per pairid: the top-50 image names) or ``"metric": "recall_subset"`` (the top-3 of the
query's img_set members); keys are the pairids as strings; each file at most 5 MB. Our lists never contain the
reference (the CIRR protocol removes it from its own ranking).

CIRCO (miccunifi/CIRCO ``README.md``): one JSON object ``{"<query id>": [50 COCO image ids (int)], ...}`` holding
every test query.
"""
from __future__ import annotations

import json
import os
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
# Validation: every function returns a list of problems (one human-readable line each); empty means valid.


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


def validate_circo(obj, annotations=None) -> list[str]:
    if not isinstance(obj, dict):
        return [f"top level is a {type(obj).__name__}, expected an object"]
    problems = []
    for key, ids in obj.items():
        if not (isinstance(key, str) and key.isdigit()):
            problems.append(f"key {key!r} is not a query id")
            continue
        if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
            problems.append(f"query {key}: value must be a list of COCO image ids (int)")
            continue
        if len(ids) != CIRCO_LENGTH:
            problems.append(f"query {key}: {len(ids)} ids, expected {CIRCO_LENGTH}")
        if len(set(ids)) != len(ids):
            problems.append(f"query {key}: repeated image ids")
    if annotations is not None:
        if isinstance(annotations, str):
            with open(annotations) as f:
                annotations = json.load(f)
        expected = {str(rec["id"]) for rec in annotations}
    else:
        # The server asks for every query id; ids run 0..N-1.
        expected = {str(i) for i in range(len(obj))}
    missing = sorted(expected - set(obj), key=int)
    extra = sorted(set(obj) - expected, key=lambda s: (not s.isdigit(), s))
    if missing:
        problems.append(f"{len(missing)} query id(s) missing, first {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} unknown query id(s), first {extra[:5]}")
    return problems


def validate_file(path: str, fmt: str, annotations=None) -> list[str]:
    """Read ``path`` and check it against the rules of ``fmt`` ("cirr" or "circo")."""
    problems = []
    size = os.path.getsize(path)
    if fmt == "cirr" and size > MAX_CIRR_BYTES:
        problems.append(f"file is {size} bytes, over the CIRR server's {MAX_CIRR_BYTES}")
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        return problems + [f"not valid JSON: {e}"]
    if fmt == "cirr":
        return problems + validate_cirr(obj, annotations)
    if fmt == "circo":
        return problems + validate_circo(obj, annotations)
    raise ValueError(f"format must be 'cirr' or 'circo', got {fmt!r}")
