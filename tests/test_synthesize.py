"""python -m zscir_jax.synthesize: every recipe end to end (rule-based answers and a tiny random LLaVA), the
generation cache, SIGKILL and resume, batch-independent sampling, the outputs the training pipeline reads, the
manifest and quarantine, and one-line errors."""
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import transformers

from zscir_jax.data import pipeline, scenes, sources, triplets
from zscir_jax.synthesis import backends, cache, engine, prompts, recipes, rule_based

import tiny_llava
from tiny_llava import make_tokenizer_dir

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "synth")
MLLM_RECIPES = ("mvftji", "distillcir", "collm", "fashion")
MANIFEST_KEYS = {"recipe", "records", "quarantined", "shards", "format", "items", "generations", "tokens", "generator",
                 "model", "templates", "sampling", "seed", "parse_failures", "quarantine_reasons", "source", "counts"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return scenes.build(str(tmp_path_factory.mktemp("scenes")), num_train=60, num_val_queries=4, num_test_queries=2,
                        image_size=16, seed=0)


def make_config(recipe, root, kind="rule_based", limit=24, **overrides):
    c = runpy.run_path(os.path.join(CONFIGS, f"{recipe}.py"))["get_config"]("smoke")
    c.backend.kind = kind
    c.data.root = root
    c.limit = limit
    c.progress_bar = False
    c.backend.update(dtype="float32", param_dtype="float32", pad_to_multiple=32)
    c.sampling.max_new_tokens = 6
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        if isinstance(value, dict):
            node[last].update(value)
        else:
            node[last] = value
    return c


def read_outputs(workdir, recipe):
    out = engine.output_dir(str(workdir), recipe)
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    records = []
    for shard in manifest["shards"]:
        path = os.path.join(out, shard)
        records += (triplets.read_jsonl(path) if shard.endswith(".jsonl") else triplets.read_array_record(path))
    with open(os.path.join(out, "quarantine.jsonl")) as f:
        quarantine = [json.loads(line) for line in f]
    return manifest, records, quarantine


# ------------------------------------------------------------------------------------------ a tiny random LLaVA

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, processor, tokenizer dir): a random 1-layer LLaVA, 16px images, 4 image tokens."""
    tok_dir = str(tmp_path_factory.mktemp("tok"))
    model, processor = tiny_llava.build(tok_dir)
    return model, processor, tok_dir


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    model, _, tok_dir = tiny
    return tiny_llava.export(model, tok_dir, str(tmp_path_factory.mktemp("export") / "tiny_llava"))


def tiny_backend(tiny, batch_size):
    model, processor, _ = tiny
    return backends.MLLMBackend(model, processor, batch_size=batch_size, pad_to_multiple=32, name="mllm:tiny")


class Counting:
    """A backend wrapper that counts generate calls and rows."""

    def __init__(self, inner):
        self.inner, self.name, self.calls, self.rows = inner, inner.name, 0, 0

    def fingerprint(self):
        return self.inner.fingerprint()

    def describe(self):
        return self.inner.describe()

    def generate(self, requests, seeds, sampling):
        self.calls += 1
        self.rows += len(requests)
        return self.inner.generate(requests, seeds, sampling)


# ------------------------------------------------------------------------------------------------ the recipes

@pytest.mark.parametrize("recipe", [*MLLM_RECIPES, "rule_based"])
def test_recipe_end_to_end_with_rule_answers(recipe, root, tmp_path):
    config = make_config(recipe, root, output={"num_shards": 2, "format": "jsonl"})
    manifest = engine.synthesize(config, str(tmp_path))
    on_disk, records, quarantine = read_outputs(tmp_path, recipe)
    assert MANIFEST_KEYS <= set(on_disk) and on_disk == {k: v for k, v in manifest.items() if k != "run"}
    assert on_disk["shards"] == ["triplets-00000-of-00002.jsonl", "triplets-00001-of-00002.jsonl"]
    assert on_disk["records"] == len(records) > 0 and on_disk["quarantined"] == len(quarantine) == 0
    assert on_disk["items"] == 24 and set(on_disk["templates"]) == set(config.templates)
    caption_of = dict(scenes.train_pairs(root))
    for r in records:
        assert r.generator == "rule_based" and r.source == "scenes:train"
        ref = scenes.parse_caption(caption_of[r.reference_image])
        if recipe == "fashion":  # caption / target text: the two attribute lists as phrases
            assert r.target_image != r.reference_image
            tgt = scenes.parse_caption(caption_of[r.target_image])
            a, b = ([o.to_dict() for o in s.objects] for s in (ref, tgt))
            assert (r.caption, r.target_text) == (prompts.attribute_phrase(a), prompts.attribute_phrase(b))
            assert len(a) == len(b) and 1 <= sum(x[k] != y[k] for x, y in zip(a, b) for k in x) <= 2
            if scenes.diff(ref, tgt) is not None:
                edit = backends.ScenesRuleBackend().read_edit(ref, r.modification_text)  # the text says the edit
                assert scenes.apply_edit(ref, edit) == tgt
            continue
        assert r.caption == caption_of[r.reference_image]
        if recipe in ("mvftji", "distillcir", "rule_based"):  # the target text is the reference after one edit
            assert scenes.diff(ref, scenes.parse_caption(r.target_text)) is not None
        if recipe == "collm":  # a real target image, other than the reference
            assert r.target_image != r.reference_image and r.target_text == caption_of[r.target_image]
        if recipe == "collm" and scenes.diff(ref, scenes.parse_caption(r.target_text)) is not None:
            edit = backends.ScenesRuleBackend().read_edit(ref, r.modification_text)  # the text says the edit
            assert scenes.apply_edit(ref, edit).caption == r.target_text
    if recipe in ("collm", "fashion"):  # images without a partner are counted, not lost
        assert on_disk["counts"]["unpaired_images"] + len({r.reference_image for r in records}) == 24
    if recipe == "mvftji":  # the target text applies the modification the rule answer wrote
        assert len(records) == 24 and on_disk["generations"] == 72
    if recipe == "rule_based":  # exactly today's generator
        expected = rule_based.generate(list(scenes.train_pairs(root))[:24], seed=0)
        assert sorted(r.to_json() for r in records) == sorted(r.to_json() for r in expected)


@pytest.mark.parametrize("recipe", MLLM_RECIPES)
def test_random_mllm_output_is_quarantined_never_dropped(recipe, root, tmp_path, tiny):
    config = make_config(recipe, root, kind="mllm", limit=6, batch_size=4)
    backend = Counting(tiny_backend(tiny, 4))
    manifest = engine.synthesize(config, str(tmp_path), backend=backend)
    _, records, quarantine = read_outputs(tmp_path, recipe)
    assert backend.calls > 0 and manifest["records"] == len(records)
    assert manifest["quarantined"] == len(quarantine) == sum(manifest["parse_failures"].values())
    for q in quarantine:
        assert q["kind"] == "parse" and q["reason"] and isinstance(q["raw"], str) and q["prompt"].startswith(recipe)
    if recipe in ("distillcir", "fashion"):  # random words never have the structured formats
        assert manifest["records"] == 0 and manifest["quarantined"] == 6
    items_out = {r.reference_image for r in records} | {q["item"] for q in quarantine}
    assert len(items_out) == 6  # every item ends as a record or in the quarantine
    assert all(r.generator == "mllm:tiny" for r in records)


def test_text_only_llm_checkpoint_serves_the_text_recipes(root, tmp_path, tiny):
    import torch

    ckpt = str(tmp_path / "llama")
    make_tokenizer_dir(ckpt)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tiny[1].tokenizer), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, pad_token_id=3,
                                   bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(ckpt)
    config = make_config("collm", root, kind="mllm", limit=4, batch_size=4, backend={"checkpoint": ckpt})
    manifest = engine.synthesize(config, str(tmp_path / "w"))
    assert manifest["generator"] == "mllm:llama" and manifest["generations"] == 4
    assert manifest["records"] + manifest["quarantined"] == 4
    # An image recipe on a text-only LLM is a user error before anything runs.
    with pytest.raises(engine.UserError, match="text-only LLM"):
        engine.synthesize(make_config("mvftji", root, kind="mllm", backend={"checkpoint": ckpt}), str(tmp_path / "v"))


# ------------------------------------------------------------------------------------------------- the cache

def test_second_run_generates_nothing_and_keys_follow_their_inputs(root, tmp_path, tiny):
    config = make_config("mvftji", root, kind="mllm", limit=5, batch_size=4)
    first = Counting(tiny_backend(tiny, 4))
    m1 = engine.synthesize(config, str(tmp_path), backend=first)
    out = engine.output_dir(str(tmp_path), "mvftji")
    shard = open(os.path.join(out, m1["shards"][0])).read()
    assert first.rows >= 15 and m1["run"]["generated"] == 15
    again = Counting(tiny_backend(tiny, 4))
    m2 = engine.synthesize(config, str(tmp_path), backend=again)
    assert again.calls == 0 and m2["run"]["cached"] == 15 and open(os.path.join(out, m2["shards"][0])).read() == shard
    # Another target template: only P_tt is asked again.
    config.templates.target = "Change: {modification}\nDescribe the result."
    third = Counting(tiny_backend(tiny, 4))
    m3 = engine.synthesize(config, str(tmp_path), backend=third)
    assert m3["run"]["generated"] == 5 and m3["run"]["cached"] == 10
    # The seed is part of every key (greedy or not): another seed asks everything again.
    config.sampling.seed = 1
    fourth = Counting(tiny_backend(tiny, 4))
    assert engine.synthesize(config, str(tmp_path), backend=fourth)["run"]["generated"] == 15


def test_cache_survives_a_truncated_last_line(tmp_path):
    c = cache.Cache(str(tmp_path), 0)
    c.append([{"key": "a", "text": "x", "tokens": 1}, {"key": "b", "error": "no image"}])
    c.close()
    with open(c.path, "ab") as f:
        f.write(b'{"key": "c", "te')  # a write cut short by SIGKILL
    d = cache.Cache(str(tmp_path), 0)
    assert d.done("a") and not d.done("b") and d.get("c") is None
    d.append([{"key": "c", "text": "y", "tokens": 2}])
    d.close()
    with open(c.path) as f:
        lines = [json.loads(line) for line in f]  # every line parses again: the stub was cut off
    assert [e["key"] for e in lines] == ["a", "b", "c"]
    e = cache.Cache(str(tmp_path), 1)  # another process reads process 0's file too
    assert e.done("c") and e.skipped_lines == 0


def test_sampling_does_not_depend_on_batching(root, tmp_path, tiny):
    results = []
    for bs in (3, 8):
        config = make_config("collm", root, kind="mllm", limit=8, batch_size=bs,
                             sampling={"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 6, "seed": 3})
        engine.synthesize(config, str(tmp_path / f"b{bs}"), backend=tiny_backend(tiny, bs))
        _, records, quarantine = read_outputs(tmp_path / f"b{bs}", "collm")
        results.append((sorted(r.to_json() for r in records), sorted(json.dumps(q) for q in quarantine)))
    assert results[0] == results[1]
    assert len(set(results[0][0])) > 1  # sampled, not one repeated string


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from zscir_jax.synthesis import cache

    kill_at, calls, append = int(os.environ["ZSCIR_TEST_KILL_AT"]), [0], cache.Cache.append

    def dying_append(self, entries):
        entries = list(entries)
        calls[0] += 1
        if calls[0] == kill_at:  # half of this batch reaches the file, then SIGKILL, mid-line
            blob = "".join(json.dumps(e) + "\\n" for e in entries).encode()
            with open(self.path, "ab") as f:
                f.write(blob[: len(blob) // 2 + 3])
            os.kill(os.getpid(), signal.SIGKILL)
        return append(self, entries)

    cache.Cache.append = dying_append
    from zscir_jax import synthesize

    sys.argv = ["synthesize", *sys.argv[1:]]
    synthesize.run()
    """
)


def run_cli(*args, kill_at=None, timeout=240):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if kill_at is None:
        cmd = [sys.executable, "-m", "zscir_jax.synthesize", *args]
    else:
        cmd = [sys.executable, "-c", KILLER, *args]
        env["ZSCIR_TEST_KILL_AT"] = str(kill_at)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_sigkill_then_rerun_writes_exactly_the_uninterrupted_records(root, tmp_path, exported):
    flags = ["--config", os.path.join(CONFIGS, "mvftji.py:smoke"), "--config.backend.kind=mllm",
             f"--config.backend.checkpoint={exported}", "--config.backend.dtype=float32",
             "--config.backend.param_dtype=float32", "--config.backend.pad_to_multiple=32",
             f"--config.data.root={root}",
             "--config.limit=7", "--config.batch_size=4", "--config.sampling.max_new_tokens=6",
             "--config.progress_bar=False"]
    killed = run_cli(*flags, "--workdir", str(tmp_path / "w"), kill_at=2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cache_file = os.path.join(engine.output_dir(str(tmp_path / "w"), "mvftji"), "cache", "p00000.jsonl")
    assert not open(cache_file, "rb").read().endswith(b"\n")  # it died mid-line
    assert not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(cache_file)), "manifest.json"))
    resumed = run_cli(*flags, "--workdir", str(tmp_path / "w"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    generated, cached = map(int, re.search(r"(\d+) generated now.*?(\d+) from the cache", resumed.stdout).groups())
    assert generated + cached == 21 and cached >= 4  # the first batch (at least) was not asked again

    config = make_config("mvftji", root, kind="mllm", limit=7, batch_size=4, backend={
        "kind": "mllm", "checkpoint": exported, "dtype": "float32", "param_dtype": "float32", "pad_to_multiple": 32})
    engine.synthesize(config, str(tmp_path / "ref"))
    m_a, a, q_a = read_outputs(tmp_path / "w", "mvftji")
    m_b, b, q_b = read_outputs(tmp_path / "ref", "mvftji")
    assert sorted(r.to_json() for r in a) == sorted(r.to_json() for r in b) and len(a) == 7
    assert q_a == q_b and m_a == m_b
    with open(cache_file) as f:
        keys = [json.loads(line)["key"] for line in f]
    assert len(keys) == len(set(keys)) == m_a["generations"] == 21  # nothing lost, nothing twice


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_work_and_write_what_one_writes(root, tmp_path):
    flags = ["--config", os.path.join(CONFIGS, "mvftji.py:smoke"), "--config.backend.kind=rule_based",
             f"--config.data.root={root}", "--config.limit=20", "--config.batch_size=4", "--config.progress_bar=False",
             "--config.sampling.max_new_tokens=6",
             "--workdir", str(tmp_path / "two"), f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", XLA_FLAGS="")
    procs = [subprocess.Popen([sys.executable, "-m", "zscir_jax.synthesize", *flags, f"--process_id={i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    files = sorted(os.listdir(os.path.join(engine.output_dir(str(tmp_path / "two"), "mvftji"), "cache")))
    assert files == ["p00000.jsonl", "p00001.jsonl"]
    sizes = [sum(1 for _ in open(os.path.join(engine.output_dir(str(tmp_path / "two"), "mvftji"), "cache", f)))
             for f in files]
    assert sizes == [30, 30]  # 60 generations, half each
    engine.synthesize(make_config("mvftji", root, limit=20, batch_size=4), str(tmp_path / "one"))
    m_two, two, q_two = read_outputs(tmp_path / "two", "mvftji")
    m_one, one, q_one = read_outputs(tmp_path / "one", "mvftji")
    assert [r.to_json() for r in two] == [r.to_json() for r in one] and m_two == m_one and len(one) == 20


# ----------------------------------------------------------------------------------- outputs the trainer reads

@pytest.mark.parametrize("fmt", ["jsonl", "array_record"])
def test_shards_feed_the_training_pipeline(fmt, root, tmp_path):
    config = make_config("collm", root, output={"num_shards": 2, "format": fmt})
    manifest = engine.synthesize(config, str(tmp_path))
    flag = engine.training_flag(str(tmp_path), manifest)
    loaded = sources.load_triplets(_data_config(flag.split("=", 1)[1]))
    assert len(loaded) == manifest["records"] and loaded.skipped == 0
    first = os.path.join(engine.output_dir(str(tmp_path), "collm"), manifest["shards"][0])

    def tokenizer(texts):
        return np.ones((len(texts), 8), np.int32), np.ones((len(texts), 8), np.int32)

    batch = next(iter(pipeline.triplet_loader(first, global_batch_size=4, image_size=16, tokenizer=tokenizer,
                                              shuffle=False, num_epochs=1, process_index=0, process_count=1)))
    assert batch["reference_pixels"].shape == (4, 16, 16, 3) and batch["has_target_image"].all()


def _data_config(spec):
    import ml_collections

    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(triplets=spec, laion_format="", on_error="raise", image_dir=""))
    return c


def test_pairs_file_input_and_relative_paths(root, tmp_path):
    pairs = list(scenes.train_pairs(root))[:10]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"image": os.path.relpath(p, root), "caption": c}) + "\n" for p, c in pairs)
                    + json.dumps({"image": "train/0/missing.png", "caption": pairs[0][1] + " x"}) + "\n")
    config = make_config("mvftji", root, limit=0)
    config.data.update(kind="pairs", pairs=str(path), image_root=root)
    manifest = engine.synthesize(config, str(tmp_path / "w"))
    _, records, quarantine = read_outputs(tmp_path / "w", "mvftji")
    assert manifest["items"] == 11 and len(records) == 10 and all(not os.path.isabs(r.reference_image) for r in records)
    # The missing image gets no answer from the rule backend: quarantined with its reason, not dropped.
    assert {q["item"] for q in quarantine} == {"train/0/missing.png"}


# ------------------------------------------------------------------------------------------- pairing helpers

def test_pairing_helpers():
    caps = ["a red circle", "a red square", "a blue circle on the left", "a red circle"]
    assert recipes.nearest_caption_pairs(caps) == [(0, 1), (1, 0), (2, 0), (3, 1)]
    lists = [[{"colour": "red", "shape": "circle"}], [{"colour": "blue", "shape": "circle"}],
             [{"colour": "blue", "shape": "square"}], [{"colour": "red", "shape": "circle"}, {"colour": "red"}],
             [{"colour": "green", "shape": "ring"}]]
    assert recipes.attribute_pairs(lists, per_item=2) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 1), (2, 0), (4, 0),
                                                          (4, 1)]
    assert recipes.attribute_pairs(lists, max_diff=1) == [(0, 1), (1, 0), (2, 1)]


# ----------------------------------------------------------------------------------------- one-line errors

@pytest.mark.parametrize("args, expected", [
    (["mvftji.py:smoke", "--config.recipe=nope"], "unknown recipe 'nope'"),
    (["mvftji.py"], "config.backend.checkpoint is empty"),
    (["collm.py", "--config.backend.checkpoint=/no/such/dir"], "directory not found: /no/such/dir"),
    (["distillcir.py:smoke", "--config.sampling.top_p=1.5"], "config.sampling.top_p=1.5"),
    (["fashion.py:smoke", "--config.sampling.max_new_tokens=0"], "config.sampling.max_new_tokens=0"),
    (["mvftji.py:smoke", "--config.templates.target=Change {modificaton}"], "unknown field(s) {modificaton}"),
    (["mvftji.py:smoke", "--config.sampling.temprature=0.5"], "unknown config key"),
    (["mvftji.py:bogus"], "unknown config argument 'bogus'"),
], ids=["recipe", "no-checkpoint", "missing-checkpoint", "top-p", "max-new-tokens", "template", "key", "arg"])
def test_user_mistakes_are_one_line_errors(args, expected, tmp_path):
    result = run_cli("--config", os.path.join(CONFIGS, args[0]), *args[1:], "--workdir", str(tmp_path), timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("zscir_jax.synthesize: error:") and expected in lines[0], lines[0]


def test_a_transformers_written_llava_checkpoint_serves_every_image_and_text_recipe(root, tmp_path):
    """``backend.kind=mllm`` on a directory saved by transformers (LlavaForConditionalGeneration + its processor):
    every MLLM recipe runs, and every item ends as a record or in the quarantine."""
    import torch

    ckpt = str(tmp_path / "llava_hf")
    vocab, image_id = make_tokenizer_dir(ckpt)
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=16, patch_size=8)
    text = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, pad_token_id=3, bos_token_id=1,
                                    eos_token_id=2)
    hf = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_id, vision_feature_layer=-1))
    hf.save_pretrained(ckpt)
    transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
        ckpt)
    for recipe in MLLM_RECIPES:
        c = make_config(recipe, root, kind="mllm", limit=4)
        c.backend.checkpoint = ckpt
        manifest = engine.synthesize(c, str(tmp_path / "w"))
        assert manifest["model"]["checkpoint"] == ckpt and manifest["generations"] > 0, recipe
        assert manifest["records"] + manifest["quarantined"] >= 1, recipe
        if recipe in ("mvftji", "distillcir"):  # one record per item, or its quarantine entry
            assert manifest["records"] + manifest["quarantined"] == manifest["items"] == 4, (recipe, manifest)


def test_a_moved_workdir_keeps_its_cache_seeds_and_shards(root, tmp_path, tiny):
    """Image paths inside the workdir enter cache keys and seeds as ``<workdir>/...`` and are written relative to
    the shards: after a move, a sampled run asks nothing again and writes the same bytes, which train from the new
    place."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(root, a / "scenes")
    config = make_config("mvftji", str(a / "scenes"), kind="mllm", limit=5, batch_size=4)
    config.sampling.temperature = 1.0  # sampled: every generation depends on its seed
    m1 = engine.synthesize(config, str(a), backend=tiny_backend(tiny, 4))
    shard = open(os.path.join(engine.output_dir(str(a), "mvftji"), m1["shards"][0])).read()
    assert m1["records"] and str(a) not in shard
    os.rename(a, b)
    config.data.root = str(b / "scenes")
    again = Counting(tiny_backend(tiny, 4))
    m2 = engine.synthesize(config, str(b), backend=again)
    assert again.calls == 0 and open(os.path.join(engine.output_dir(str(b), "mvftji"), m2["shards"][0])).read() == shard
    loaded = sources.load_triplets(_data_config(engine.training_flag(str(b), m2).split("=", 1)[1]))
    assert all(r.reference_image.startswith(str(b / "scenes")) and os.path.isfile(r.reference_image) for r in loaded)
