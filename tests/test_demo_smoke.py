"""The demo pipeline end to end on its smoke setting: scenes benchmark, CLIP warm-up, rule-based triplets, PVLF
training, evaluation of every method, one table and one JSON per method."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402

from zscir_jax.train import trainer  # noqa: E402


def test_demo_smoke(tmp_path, capsys):
    c = demo.get_config("smoke")
    c.prepare.update(num_train=120, num_val_queries=20)
    c.train.steps = 8
    c.warmup.train.steps = 8
    c.train.progress_bar = c.warmup.train.progress_bar = False
    results = trainer.train_and_evaluate(c, str(tmp_path))
    assert set(results) == {"pvlf", "pvlf_untrained", "image_only", "text_only", "image_plus_text"}
    for name in results:
        assert os.path.isfile(tmp_path / name / "eval" / "cirr_val.json")
        assert 0.0 <= results[name]["recall@5"] <= 100.0
    assert "pvlf_untrained" in capsys.readouterr().out
