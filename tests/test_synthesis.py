"""Rule-based triplet synthesis over the synthetic benchmark's train split."""
import json
import os

import numpy as np
import pytest

from zscir_jax.data import scenes
from zscir_jax.synthesis import rule_based, templates


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return scenes.build(str(tmp_path_factory.mktemp("scenes")), num_train=300, num_val_queries=60,
                        num_test_queries=10, image_size=16, seed=1)


def test_targets_match_edited_captions(root):
    recs = rule_based.generate(root, seed=0, max_per_image=2)
    with open(os.path.join(root, "captions", "train_captions.json")) as f:
        captions = json.load(f)
    by_path = {p: c for p, c in scenes.train_pairs(root)}
    assert len(recs) == 600 and recs.stats.triplets == 600 and recs.stats.unparsed == 0
    assert recs.stats.with_target_image == sum(r.target_image is not None for r in recs)
    assert recs.stats.with_target_image > 0.5 * len(recs)  # train groups of near duplicates give real targets
    for r in recs:
        ref = scenes.parse_caption(r.caption)
        tgt = scenes.parse_caption(r.target_text)
        assert r.caption == by_path[r.reference_image] and r.modification_text
        assert scenes.diff(ref, tgt) is not None  # exactly one edit
        if r.target_image is not None:
            assert by_path[r.target_image] == r.target_text  # the target image shows the edited caption
        else:
            assert r.target_text not in set(captions.values())
        assert "/train/" in r.reference_image and (r.target_image is None or "/train/" in r.target_image)
        assert r.generator == "rule_based"


def test_deterministic_and_uses_training_templates(root):
    a = rule_based.generate(root, seed=0)
    assert a == rule_based.generate(root, seed=0)
    assert a != rule_based.generate(root, seed=1)
    # the texts come from the given templates
    marked = {op: [f"zz-{op} " + t for t in ts] for op, ts in templates.TEMPLATES.items()}
    b = rule_based.generate(root, seed=0, templates=marked)
    assert all(r.modification_text.startswith("zz-") for r in b)
    assert {r.modification_text.split()[0][3:] for r in b} == set(b.stats.by_op) == set(scenes.OPS)

def test_pairs_input_and_unparsed_captions():
    rng = np.random.default_rng(0)
    s = scenes.random_scene(rng, 2)
    t = scenes.apply_edit(s, scenes.Edit("colour", 0, "white" if s.objects[0].colour != "white" else "red"))
    pairs = [("a.png", s.caption), ("b.png", t.caption), ("c.png", "a photo of a dog")]
    recs = rule_based.generate(pairs, seed=0, max_per_image=1)
    assert recs.stats.unparsed == 1 and len(recs) == 2
    assert recs[0].target_image == "b.png" and recs[1].target_image == "a.png"
    with pytest.raises(ValueError, match="missing"):
        rule_based.RuleBasedGenerator(templates={"colour": ["make {obj} {value}"]})
