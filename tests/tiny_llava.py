"""A tiny random LLaVA for tests that need an MLLM without weights: a word-level tokenizer over the scenes' words,
a 1-layer vision tower and Llama, 16 px images (4 image tokens), and its zscir_jax export."""
import transformers
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from zscir_jax.data import scenes
from zscir_jax.models import clip, llm, mllm

PRE = {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}}


def make_tokenizer_dir(path):
    """Word-level: the scenes' words, some prompt words, <image> last; no chat template (LLaVA's plain format)."""
    words = sorted(set(" ".join([*scenes.SHAPES, *scenes.COLOURS, *scenes.SIZES, *scenes.POSITIONS,
                                 "a the and at on in item shape colour size position : , make change remove add",
                                 "USER: ASSISTANT:"]).split()))
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", *words, "<image>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>", additional_special_tokens=["<image>"]).save_pretrained(path)
    return len(vocab), vocab["<image>"]


def build(tok_dir):
    """(model, processor): a random 1-layer LLaVA over the tokenizer written to ``tok_dir``."""
    vocab, image_id = make_tokenizer_dir(tok_dir)
    vision = clip.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=16, patch_size=8)
    text = llm.LLMConfig.tiny(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                              num_kv_heads=1, eos_token_ids=(2,), pad_token_id=3)
    cfg = mllm.MLLMConfig(vision=vision, text=text, image_token_id=image_id)
    model = mllm.MLLM(cfg, rngs=nnx.Rngs(0))
    # Words, not silence: the special tokens (unk, bos, eos, pad) never win, and the others are sharper.
    head = model.llm.lm_head.kernel
    head.value = (head.value * 10.0).at[:, :4].set(0.0)  # logit 0, below the best of 40 random ones
    processor = mllm.Processor(llm.load_tokenizer(tok_dir), image_token_id=image_id,
                               image_seq_length=cfg.image_seq_length, preprocessor_config=PRE, vision_image_size=16)
    return model, processor


def export(model, tok_dir, path):
    """The model as a zscir_jax MLLM export at ``path`` (a ``backend.kind=mllm`` checkpoint)."""
    return mllm.export(model, path, tokenizer_dir=tok_dir, preprocessor=PRE)
