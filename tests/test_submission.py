"""Submission writers and the validator: a valid file passes, every broken variant is reported."""
import copy
import json
import os
import subprocess
import sys

import pytest

from zscir_jax.evaluation import submission, validate


@pytest.fixture(scope="module")
def cirr_test(shared_data_dir):
    ann = os.path.join(shared_data_dir, "cirr", "captions", "cap.rc2.test1.json")
    with open(ann) as f:
        recs = json.load(f)
    with open(os.path.join(shared_data_dir, "cirr", "image_splits", "split.rc2.test1.json")) as f:
        gallery = list(json.load(f))
    ids = [str(r["pairid"]) for r in recs]
    top50 = [[n for n in gallery[:51] if n != r["reference"]][:50] for r in recs]
    top3 = [[m for m in r["img_set"]["members"] if m != r["reference"]][:3] for r in recs]
    recall, subset = submission.cirr_submissions(ids, top50, top3)
    return ann, recs, recall, subset


@pytest.fixture(scope="module")
def circo_test(shared_data_dir):
    ann = os.path.join(shared_data_dir, "circo", "annotations", "test.json")
    with open(ann) as f:
        recs = json.load(f)
    sub = submission.circo_submission([str(r["id"]) for r in recs], [list(range(1, 51))] * len(recs))
    return ann, sub


def test_valid_cirr_files_pass(cirr_test, tmp_path):
    ann, recs, recall, subset = cirr_test
    assert recall["version"] == "rc2" and recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    assert len(recall) == len(recs) + 2
    for obj, name in ((recall, "r.json"), (subset, "s.json")):
        path = submission.write_json(str(tmp_path / name), obj, max_bytes=submission.MAX_CIRR_BYTES)
        assert os.path.getsize(path) < submission.MAX_CIRR_BYTES
        assert submission.validate_file(path, "cirr", ann) == []
        assert validate.main([path, "--format", "cirr", "--annotations", ann]) == 0


def _broken_cirr(recall, subset, recs):
    pid, ref = str(recs[0]["pairid"]), recs[0]["reference"]
    members = [m for m in recs[0]["img_set"]["members"] if m != ref]
    cases = []

    def variant(base, label, expect, edit):
        obj = dict(base)  # shallow: only the first pairid's list is edited
        obj[pid] = list(obj[pid])
        edit(obj)
        cases.append((label, obj, expect))

    variant(recall, "version", "'version'", lambda o: o.update(version="rc1"))
    variant(recall, "metric", "'metric'", lambda o: o.update(metric="recall@50"))
    variant(recall, "missing", "pairid(s) missing", lambda o: o.pop(pid))
    variant(recall, "unknown", "unknown pairid", lambda o: o.update({"999999": o[pid]}))
    variant(recall, "short", "49 entries, expected 50", lambda o: o[pid].pop())
    variant(recall, "dupes", "repeated image names", lambda o: o[pid].__setitem__(1, o[pid][0]))
    variant(recall, "reference", "reference", lambda o: o[pid].__setitem__(0, ref))
    variant(recall, "extension", "file extension", lambda o: o[pid].__setitem__(0, o[pid][0] + ".png"))
    variant(recall, "type", "list of image names", lambda o: o.update({pid: 5}))
    variant(subset, "subset-size", "4 entries, expected 3", lambda o: o[pid].append(members[3]))
    variant(subset, "subset-member", "not in the img_set", lambda o: o[pid].__setitem__(0, "test1-0-0-img0"))
    variant(subset, "subset-reference", "reference", lambda o: o[pid].__setitem__(0, ref))
    return cases


def test_each_broken_cirr_variant_is_reported(cirr_test, tmp_path):
    ann, recs, recall, subset = cirr_test
    for label, obj, expect in _broken_cirr(recall, subset, recs):
        problems = submission.validate_cirr(obj, ann)
        assert problems, label
        assert any(expect in p for p in problems), (label, problems)


def test_oversized_cirr_file_and_cli_exit_code(cirr_test, tmp_path, capsys):
    ann, recs, recall, _ = cirr_test
    path = tmp_path / "big.json"
    path.write_text(json.dumps(recall, indent=8))  # same content, padded past 5 MB
    assert os.path.getsize(path) > submission.MAX_CIRR_BYTES
    assert validate.main([str(path), "--format", "cirr", "--annotations", ann]) == 1
    assert "over the CIRR server" in capsys.readouterr().out
    with pytest.raises(ValueError, match="over the server"):
        submission.write_json(str(tmp_path / "w.json"), json.loads(path.read_text()), max_bytes=1000)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert validate.main([str(bad), "--format", "cirr"]) == 1
    assert "not valid JSON" in capsys.readouterr().out


def test_valid_and_broken_circo(circo_test, tmp_path):
    ann, sub = circo_test
    path = submission.write_json(str(tmp_path / "c.json"), sub)
    assert submission.validate_file(path, "circo", ann) == []
    assert submission.validate_circo(sub) == []  # without annotations: ids 0..N-1
    cases = {
        "missing": (lambda o: o.pop("5"), "query id(s) missing"),
        "word ids": (lambda o: o["0"].__setitem__(0, "cat"), "COCO image ids (int"),
        "float-like str": (lambda o: o["0"].__setitem__(0, "1.0"), "COCO image ids (int"),
        "float": (lambda o: o["0"].__setitem__(0, 7.0), "COCO image ids (int"),
        "bool": (lambda o: o["0"].__setitem__(0, True), "COCO image ids (int"),
        "str dupes": (lambda o: o["2"].__setitem__(1, str(o["2"][0])), "repeated image ids"),
        "same id twice": (lambda o: o.update({"007": o.pop("7")}) or o.update({"07": o["007"]}), "appears twice"),
        "short": (lambda o: o["1"].pop(), "49 ids, expected 50"),
        "dupes": (lambda o: o["2"].__setitem__(1, o["2"][0]), "repeated image ids"),
        "unknown": (lambda o: o.update({"800": o["0"]}), "unknown query id"),
        "bad key": (lambda o: o.update({"x": o["0"]}), "not a query id"),
    }
    for label, (edit, expect) in cases.items():
        obj = copy.deepcopy(sub)
        edit(obj)
        problems = submission.check_circo(obj, ann).errors
        assert any(expect in p for p in problems), (label, problems)


def test_cli_as_module(circo_test, tmp_path):
    ann, sub = circo_test
    obj = copy.deepcopy(sub)
    obj["3"] = obj["3"][:10]
    path = submission.write_json(str(tmp_path / "c.json"), obj)
    run = subprocess.run([sys.executable, "-m", "zscir_jax.evaluation.validate", path, "--format", "circo",
                          "--annotations", ann], capture_output=True, text=True, cwd=os.path.dirname(__file__) + "/..")
    assert run.returncode == 1 and "query 3: 10 ids, expected 50" in run.stdout


def test_circo_numeric_strings_are_accepted_with_a_warning(circo_test, tmp_path, capsys):
    """CIRCO's scorer casts query ids and image ids with int(): numeric strings pass, with a warning."""
    ann, sub = circo_test
    obj = copy.deepcopy(sub)
    obj["0"] = [str(i) for i in obj["0"]]
    obj["1"] = [f" {i}" for i in obj["1"]]
    obj["0012"] = obj.pop("12")
    report = submission.check_circo(obj, ann)
    assert report.ok and report.errors == []
    assert len(report.warnings) == 2
    assert any("2 query(ies) give image ids as strings" in w for w in report.warnings)
    assert any("'0012'" in w for w in report.warnings)
    assert submission.check_circo(sub, ann).warnings == []  # the writer's output is the canonical form
    assert submission.check_circo({int(k): v for k, v in sub.items()}, ann) == submission.Report()  # int keys
    with pytest.warns(submission.SubmissionWarning) as caught:
        assert submission.validate_circo(obj, ann) == []  # the old list-of-errors API still says "valid"
    assert [str(w.message) for w in caught] == report.warnings

    path = submission.write_json(str(tmp_path / "s.json"), obj)
    with pytest.warns(submission.SubmissionWarning) as caught:
        assert submission.validate_file(path, "circo", ann) == []
    assert len(caught) == 2
    assert submission.check_file(path, "circo", ann).warnings == report.warnings
    assert validate.main([path, "--format", "circo", "--annotations", ann]) == 0
    out = capsys.readouterr().out
    assert f"{path}: warning: 2 query(ies) give image ids as strings" in out
    assert out.rstrip().endswith(f"{path}: ok (2 warnings)")
    run = subprocess.run([sys.executable, "-m", "zscir_jax.evaluation.validate", path, "--format", "circo",
                          "--annotations", ann], capture_output=True, text=True, cwd=os.path.dirname(__file__) + "/..")
    assert run.returncode == 0 and "warning:" in run.stdout and "ok (2 warnings)" in run.stdout

    # Warnings never hide errors: a non-numeric string is still an error, and the exit status is 1.
    obj["3"] = ["x"] + obj["3"][1:]
    bad = submission.write_json(str(tmp_path / "bad.json"), obj)
    report = submission.check_file(bad, "circo", ann)
    assert report.errors == ["query 3: value must be a list of COCO image ids (int, or a string of digits)"]
    assert len(report.warnings) == 2
    assert validate.main([bad, "--format", "circo", "--annotations", ann]) == 1
    out = capsys.readouterr().out
    assert "query 3: value must be a list" in out and "warning:" in out
    assert not any(line.endswith((": ok", "warnings)")) for line in out.splitlines())
