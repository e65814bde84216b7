"""Checkpoints' own tokenizers and LLaVA processing match transformers, and so does greedy generation from them.

Every tokenizer here is a tiny byte-level BPE trained offline with the `tokenizers` library, wrapped in
PreTrainedTokenizerFast with its special tokens and a chat template, and saved beside a tiny random transformers model.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from zscir_jax.models import llm, mllm

CORPUS = ["the red circle is left of the blue square", "a green triangle above a small yellow star",
          "describe the picture in one sentence", "what changed between the two images",
          "same scene but the circle is purple and larger", "you are a helpful assistant",
          "USER: ASSISTANT: system user assistant [INST] [/INST]"]

CONTENT = ("{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
           "{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}")
# Llama-2-chat style (bos written by the template, system folded into the first turn).
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>> " + CONTENT + " <</SYS>> "
    "{% elif m['role'] == 'user' %}[INST] " + CONTENT + " [/INST]{% else %} " + CONTENT + "{{ eos_token }}"
    "{% endif %}{% endfor %}")
# Qwen2's ChatML with its default system message.
QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nyou are a helpful assistant<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n" + CONTENT + "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# llava-hf/llava-1.5-*-hf's template: images first, then the text, no bos (the processor adds it).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

CHATS = [
    [{"role": "user", "content": "the red circle is left of the blue square"}],
    [{"role": "system", "content": "describe the picture"},
     {"role": "user", "content": [{"type": "text", "text": "what changed"}]},
     {"role": "assistant", "content": "the circle is purple"},
     {"role": "user", "content": "and the star"}],
]


def make_tokenizer(kind: str, out_dir, template=True):
    """A saved offline tokenizer: "llama" (bos added), "qwen2" (ChatML, no bos), "llava" (llama + <image>)."""
    specials = {"qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}.get(kind, ["<unk>", "<s>", "</s>", "<pad>"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if kind == "qwen2":
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                    pad_token="<|endoftext|>")
        fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        chat_template = QWEN_TEMPLATE
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                    pad_token="<pad>", unk_token="<unk>")
        chat_template = LLAMA_TEMPLATE
        if kind == "llava":
            fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
            chat_template = LLAVA_TEMPLATE
    if template:
        fast.chat_template = chat_template
    fast.save_pretrained(out_dir)
    return transformers.AutoTokenizer.from_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llava"])
def test_chat_ids_equal_apply_chat_template(kind, tmp_path):
    hf = make_tokenizer(kind, tmp_path)
    tok = llm.load_tokenizer(str(tmp_path))
    assert tok.chat_template is not None
    chats = CHATS if kind != "llava" else [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the picture"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "what changed"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "the circle"}]}],
    ]
    for chat in chats:
        for gen in (True, False):
            ref = hf.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True, return_dict=False)
            assert tok.chat_ids(chat, add_generation_prompt=gen) == list(ref)
    if kind == "qwen2":
        assert tok.bos_token_id is None and tok.eos_token_ids == (hf.convert_tokens_to_ids("<|im_end|>"),)
        assert tok.pad_token_id == hf.convert_tokens_to_ids("<|endoftext|>")
    else:
        assert (tok.bos_token_id, tok.eos_token_ids, tok.pad_token_id) == (1, (2,), 3)


def test_generation_config_eos_and_fallback_format(tmp_path):
    hf = make_tokenizer("llama", tmp_path, template=False)
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({"eos_token_id": [2, 5], "bos_token_id": 1}, f)
    tok = llm.load_tokenizer(str(tmp_path))
    assert tok.chat_template is None and tok.eos_token_ids == (2, 5) and tok.pad_token_id == 3
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the picture"}]}]
    assert tok.chat_text(chat) == "USER: <image>\ndescribe the picture\nASSISTANT:"
    # bos first because the tokenizer adds one to plain text; the rest is the text without special tokens.
    assert tok.chat_ids([{"role": "user", "content": "the red circle"}]) == \
        hf("USER: the red circle\nASSISTANT:")["input_ids"]
    assert tok.chat_ids([{"role": "user", "content": "hi"}])[0] == 1
    two_turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                 {"role": "user", "content": "c"}]
    assert tok.chat_text(two_turns, add_generation_prompt=False) == "USER: a\nASSISTANT: b</s>\nUSER: c\n"
    with pytest.raises(ValueError, match="role"):
        tok.chat_ids([{"content": "no role"}])

    # decode stops at the first eos and ignores pads; batch pads on the left to a multiple of 8.
    text_ids = hf("the red circle", add_special_tokens=False)["input_ids"]
    assert tok.decode([3, 3] + text_ids + [5, 7, 7]) == "the red circle"
    assert tok.decode(text_ids + [2] + text_ids) == "the red circle"
    ids, mask = tok.batch([[7] * 3, [8] * 10])
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == mask.shape == (2, 16)
    assert ids[0].tolist() == [3] * 13 + [7] * 3 and mask[0].tolist() == [0] * 13 + [1] * 3
    assert mask[1].sum() == 10 and tok.batch([[1, 2]], pad_to_multiple=1)[0].shape == (1, 2)
    assert tok.batch([[1] * 8])[0].shape == (1, 8)


# ----------------------------------------------------------------------------------------------------------------------
# LLM generation from chat prompts

N_NEW = 6


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_llm_greedy_generation_from_chat_prompts_matches_transformers(kind, tmp_path):
    hf_tok = make_tokenizer(kind, tmp_path)
    torch.manual_seed(1)  # a seed whose two prompts generate different continuations
    common = dict(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=hf_tok.pad_token_id, bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    cls, cfg_cls = {"llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
                    "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config)}[kind]
    hf = cls(cfg_cls(**common)).eval()
    with torch.no_grad():  # sharper logits, so greedy choices are not near-ties
        hf.model.norm.weight.mul_(20.0)
    hf.save_pretrained(tmp_path)

    tok = llm.load_tokenizer(str(tmp_path))
    model = llm.from_pretrained(str(tmp_path))
    rows = [tok.chat_ids(c) for c in CHATS]
    assert len(rows[0]) != len(rows[1])
    ids, mask = tok.batch(rows)
    assert ids.shape[1] % 8 == 0 and ids.shape[1] > max(map(len, rows)) - 8
    ours = np.asarray(llm.generate(model, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=N_NEW,
                                   eos_token_ids=tok.eos_token_ids, pad_token_id=tok.pad_token_id))

    # transformers: its own left padding (to the longest row, not our bucket) of apply_chat_template's ids.
    hf_tok.padding_side = "left"
    enc = hf_tok.pad({"input_ids": [hf_tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                                                return_dict=False) for c in CHATS]},
                     return_tensors="pt")
    with torch.no_grad():
        ref = hf.generate(**enc, do_sample=False, max_new_tokens=N_NEW, pad_token_id=tok.pad_token_id,
                          eos_token_id=list(tok.eos_token_ids))[:, enc["input_ids"].shape[1]:].numpy()
    print(kind, "ours", ours.tolist(), "hf", ref.tolist())
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
    assert not np.array_equal(ours[0], ours[1])  # the prompts matter
    for o, r in zip(ours, ref):
        assert tok.decode(o) == hf_tok.decode(r, skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------------------------------
# LLaVA: processor and generation

CONVS = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the picture in one sentence"}]}],
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what changed"}]}],
]


def make_images():
    rng = np.random.default_rng(0)
    wide = (rng.random((20, 33, 3)) * 255).astype(np.uint8)  # resized to 16 x int(16 * 33 / 20) = 16 x 26
    tall = Image.fromarray((rng.random((41, 18, 3)) * 255).astype(np.uint8))  # 36 x 16 (int() floors 36.4)
    return [wide, tall]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava")
    tok = make_tokenizer("llava", path)
    image_id = tok.convert_tokens_to_ids("<image>")
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=4)
    text = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_id,
                                   vision_feature_select_strategy="default", vision_feature_layer=-2)
    hf = transformers.LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # image tokens matter and greedy is stable
        hf.model.multi_modal_projector.linear_2.weight.mul_(20.0)
        hf.lm_head.weight.mul_(10.0)
    hf.save_pretrained(path)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 16},
                                                      crop_size={"height": 16, "width": 16})
    proc = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=4,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       chat_template=LLAVA_TEMPLATE)
    proc.save_pretrained(path)
    return hf, transformers.AutoProcessor.from_pretrained(path), str(path)


def test_llava_prompt_ids_and_pixels_match_llava_processor(llava_dir):
    _, hf_proc, path = llava_dir
    proc = mllm.load_processor(path)
    assert (proc.image_seq_length, proc.image_size) == (16, 16)
    assert proc.image_token_id == hf_proc.image_token_id
    assert proc.tokenizer.bos_token_id == 1
    images = make_images()
    for conv, image in zip(CONVS, images):
        text = hf_proc.apply_chat_template(conv, add_generation_prompt=True)
        ref = hf_proc(images=[image], text=[text])["input_ids"][0]
        ours = proc.prompt_ids(conv)
        assert ours == list(ref) and ours[0] == 1 and ours.count(proc.image_token_id) == 16
    ref_pixels = np.asarray(hf_proc.image_processor(images, return_tensors="np")["pixel_values"])
    ours = proc.pixels(images)
    assert ours.shape == (2, 16, 16, 3) and ours.dtype == np.float32
    diff = np.abs(ours - ref_pixels.transpose(0, 2, 3, 1)).max()
    print(f"pixels max|diff| = {diff:.2e}")
    assert diff <= 1e-4
    with pytest.raises(ValueError, match="image"):
        proc.inputs(CONVS, images[:1])


def test_llava_preprocessor_config_json_layout(llava_dir, tmp_path):
    """Hub checkpoints keep the image processor in preprocessor_config.json; it wins over processor_config.json."""
    _, _, path = llava_dir
    for name in os.listdir(path):
        if not name.endswith(".safetensors"):
            os.symlink(os.path.join(path, name), tmp_path / name)
    os.unlink(tmp_path / "processor_config.json")
    with open(os.path.join(path, "processor_config.json")) as f:
        image_processor = json.load(f)["image_processor"]
    with open(tmp_path / "preprocessor_config.json", "w") as f:
        json.dump({**image_processor, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}, f)
    proc = mllm.load_processor(str(tmp_path))
    assert proc.image_seq_length == 16 and proc.mean == (0.5,) * 3 and proc.std == (0.25,) * 3
    ref = transformers.CLIPImageProcessor(**{**image_processor, "image_mean": [0.5] * 3, "image_std": [0.25] * 3})
    diff = np.abs(proc.pixels(make_images()) - np.asarray(ref(make_images(), return_tensors="np")["pixel_values"])
                  .transpose(0, 2, 3, 1)).max()
    assert diff <= 1e-4


def test_llava_greedy_generation_from_processor_matches_transformers(llava_dir):
    hf, hf_proc, path = llava_dir
    proc = mllm.load_processor(path)
    model = mllm.from_pretrained(path)
    images = make_images()
    batch = proc.inputs(CONVS, images)
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixels"]
    assert mask.sum(1)[0] != mask.sum(1)[1] and ids.shape[1] % 8 == 0
    eos, pad = proc.tokenizer.eos_token_ids, proc.tokenizer.pad_token_id
    ours = np.asarray(mllm.generate(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask),
                                    max_new_tokens=N_NEW, eos_token_ids=eos, pad_token_id=pad))

    hf_proc.tokenizer.padding_side = "left"
    texts = [hf_proc.apply_chat_template(c, add_generation_prompt=True) for c in CONVS]
    enc = hf_proc(images=images, text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf.generate(**enc, do_sample=False, max_new_tokens=N_NEW, pad_token_id=pad,
                          eos_token_id=list(eos))[:, enc["input_ids"].shape[1]:].numpy()
    print("llava ours", ours.tolist(), "hf", ref.tolist())
    with torch.no_grad():  # next-token logits of both batches (different left padding, same real tokens)
        ref_logits = hf(**enc).logits[:, -1].numpy()
    logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))[:, -1]
    diff = np.abs(logits - ref_logits).max()
    print(f"llava next-token logits max|diff| = {diff:.2e}")
    assert diff < 1e-4
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
    # The images matter: swapping them changes what is generated.
    swapped = np.asarray(mllm.generate(model, jnp.asarray(ids), jnp.asarray(pixels[::-1]), jnp.asarray(mask),
                                       max_new_tokens=N_NEW, eos_token_ids=eos, pad_token_id=pad))
    assert not np.array_equal(swapped, ours)
