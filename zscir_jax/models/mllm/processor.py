"""LLaVA-1.5 prompt and image processing, matching transformers' ``LlavaProcessor`` + ``CLIPImageProcessor``.

``load_processor(path)`` reads a transformers LLaVA directory or one of our exports (:mod:`.export`):

* the tokenizer (:func:`zscir_jax.models.llm.load_tokenizer`) and its chat template;
* the image preprocessing, from ``preprocessor_config.json`` (the Hub layout) or from the ``image_processor`` entry of
  ``processor_config.json`` (what transformers v5's ``LlavaProcessor.save_pretrained`` writes);
* the number of image tokens per image and the placeholder id, from our ``zscir_mllm.json`` or the model's
  ``config.json`` (``MLLMConfig.image_seq_length``: patches, plus one with the "full" feature strategy), checked
  against ``processor_config.json``'s ``patch_size`` / ``num_additional_image_tokens`` when those are present.

Prompts: the chat template is rendered to text, tokenized the way ``LlavaProcessor(text=...)`` does (special tokens
added, so Llama's bos comes first, unless the text already starts with it) and every image placeholder is expanded to
``image_seq_length`` copies, exactly the ids the model expects. Images: shortest edge resized with PIL (bicubic by
default, transformers' rule for the long edge), centre crop, rescale, normalise; NHWC float32.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import os
from typing import Any
import warnings

import numpy as np
from PIL import Image

from zscir_jax.data import images as image_io
from zscir_jax.models.llm.tokenizer import ChatTokenizer, load_tokenizer
# (`from ... import`: the package attribute `mllm.export` is the export function, not this module)
from zscir_jax.models.mllm.export import PREPROCESSOR_FILE, is_export, read_config

_CLIP_MEAN = image_io.CLIP_MEAN
_CLIP_STD = image_io.CLIP_STD


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _hw(size: Mapping[str, int] | int | None, what: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    raise ValueError(f"{what} must give 'height' and 'width', got {size!r}")


def preprocessor_config_of(path: str) -> dict[str, Any]:
    """The image processor's settings of a checkpoint directory: ``preprocessor_config.json``, else the
    ``image_processor`` entry of ``processor_config.json``; empty when neither exists (CLIP defaults then apply)."""
    pre = _read_json(os.path.join(path, PREPROCESSOR_FILE))
    if pre:
        return pre
    return dict(_read_json(os.path.join(path, "processor_config.json")).get("image_processor") or {})


class Processor:
    """Prompt ids and pixels for :class:`zscir_jax.models.mllm.MLLM`.

    Attributes: ``tokenizer`` (a :class:`~zscir_jax.models.llm.tokenizer.ChatTokenizer`), ``image_token`` (its
    text, ``"<image>"``), ``image_token_id``, ``image_seq_length`` (placeholders per image), ``image_size`` (the
    square crop side), ``mean`` / ``std`` (per channel), ``preprocessor_config`` (the dict the image settings come
    from).
    """

    def __init__(self, tokenizer: ChatTokenizer, *, image_token_id: int, image_seq_length: int,
                 preprocessor_config: Mapping[str, Any] | None = None, image_token: str = "<image>",
                 vision_image_size: int | None = None):
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.image_token_id = int(image_token_id)
        self.image_seq_length = int(image_seq_length)
        cfg = dict(preprocessor_config or {})
        self.preprocessor_config = cfg
        self.do_convert_rgb = bool(cfg.get("do_convert_rgb", True))
        self.do_pad = bool(cfg.get("do_pad", False))  # LlavaImageProcessor: pad to a square with the mean colour
        self.do_resize = bool(cfg.get("do_resize", True))
        self.do_center_crop = bool(cfg.get("do_center_crop", True))
        self.do_rescale = bool(cfg.get("do_rescale", True))
        self.do_normalize = bool(cfg.get("do_normalize", True))
        self.rescale_factor = float(cfg.get("rescale_factor", 1 / 255))
        self.resample = int(cfg.get("resample", Image.BICUBIC))
        default = vision_image_size or 224
        size = cfg.get("size", {"shortest_edge": default})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        self.size = dict(size)
        if not ("shortest_edge" in self.size or ("height" in self.size and "width" in self.size)):
            raise ValueError(f"preprocessor size {size!r} is not supported (use shortest_edge or height/width)")
        crop = _hw(cfg.get("crop_size", {"height": default, "width": default}), "crop_size")
        if self.do_center_crop:
            out_hw = crop
        elif "height" in self.size:
            out_hw = (int(self.size["height"]), int(self.size["width"]))
        else:
            raise ValueError("without a centre crop the output size depends on each image: set do_center_crop or a "
                             "height/width size in the preprocessor config")
        if out_hw[0] != out_hw[1]:
            raise ValueError(f"non-square crops {out_hw} are not supported by the LLaVA vision tower")
        self.crop_size = crop
        self.image_size = int(out_hw[0])
        if vision_image_size is not None and self.image_size != vision_image_size:
            raise ValueError(f"the preprocessor makes {self.image_size}px images but the vision tower takes "
                             f"{vision_image_size}px")
        mean = cfg.get("image_mean", _CLIP_MEAN)
        std = cfg.get("image_std", _CLIP_STD)
        self.mean = tuple(float(m) for m in (mean if isinstance(mean, (list, tuple)) else [mean] * 3))
        self.std = tuple(float(s) for s in (std if isinstance(std, (list, tuple)) else [std] * 3))

    # -- prompts ----------------------------------------------------------------------------------------------------
    def prompt_text(self, messages, *, add_generation_prompt: bool = True) -> str:
        """The chat template (or the tokenizer's fallback format) rendered, one placeholder per image part."""
        return self.tokenizer.chat_text(messages, add_generation_prompt=add_generation_prompt)

    def prompt_ids(self, messages, *, add_generation_prompt: bool = True) -> list[int]:
        """Ids of a conversation with every image placeholder expanded to ``image_seq_length`` image tokens.

        Equal to ``LlavaProcessor(images=..., text=processor.apply_chat_template(messages, ...))["input_ids"]``: the
        rendered text is tokenized with special tokens (bos first for Llama tokenizers) unless it already starts with
        the bos token, as transformers' processors do. (So with a template, these ids may differ from
        ``tokenizer.chat_ids``, which follows the tokenizer's ``apply_chat_template``: no special tokens added.)
        A placeholder written in a message's text counts as an image too.
        """
        tok = self.tokenizer
        if tok.chat_template is None:  # fallback format: chat_ids already decides about bos
            ids = tok.chat_ids(messages, add_generation_prompt=add_generation_prompt)
        else:
            text = self.prompt_text(messages, add_generation_prompt=add_generation_prompt)
            bos = tok.hf.bos_token
            ids = tok.encode(text, add_special_tokens=not (bos is not None and text.startswith(bos)))
        n_parts = sum(1 for m in messages if not isinstance(m["content"], str)
                      for p in m["content"] if p.get("type") == "image")
        out: list[int] = []
        n_found = 0
        for i in ids:
            if i == self.image_token_id:
                out.extend([self.image_token_id] * self.image_seq_length)
                n_found += 1
            else:
                out.append(i)
        # More placeholders than image parts is fine (a prompt may write "<image>\n..." in its text, as LLaVA's
        # own prompts do); fewer means the template dropped images.
        if n_found < n_parts:
            raise ValueError(f"the messages hold {n_parts} image part(s) but the rendered prompt has only {n_found} "
                             f"{self.image_token!r} placeholder(s); check the chat template")
        return out

    def inputs(self, conversations: Sequence, images: Sequence | None = None, *, add_generation_prompt: bool = True,
               pad_to_multiple: int = 8) -> dict[str, np.ndarray | None]:
        """A left-padded batch for ``mllm.generate``: ``{"input_ids", "attention_mask", "pixels"}``; ``images`` are
        the images of all conversations in reading order (one per image part)."""
        rows = [self.prompt_ids(c, add_generation_prompt=add_generation_prompt) for c in conversations]
        ids, mask = self.tokenizer.batch(rows, pad_to_multiple=pad_to_multiple)
        n_images = int(np.sum(ids == self.image_token_id)) // max(self.image_seq_length, 1)
        given = 0 if images is None else len(images)
        if n_images != given:
            raise ValueError(f"the conversations hold {n_images} image part(s) but {given} image(s) were given")
        return {"input_ids": ids, "attention_mask": mask, "pixels": self.pixels(images) if given else None}

    # -- images -----------------------------------------------------------------------------------------------------
    def _to_rgb_uint8(self, image) -> np.ndarray:
        if isinstance(image, str):
            image = image_io.load_image(image)
        if isinstance(image, Image.Image):
            if self.do_convert_rgb and image.mode != "RGB":
                has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
                if has_alpha:  # transparency over white, as transformers does
                    rgba = image.convert("RGBA")
                    image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8)
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise TypeError(f"images must be PIL images, file paths or uint8 arrays [H, W, 3], got dtype {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ValueError(f"an image array must be [H, W, C] with C in (1, 3, 4), got shape {arr.shape}")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        if arr.shape[-1] == 4:
            return self._to_rgb_uint8(Image.fromarray(arr, "RGBA"))
        return arr

    def _resize_hw(self, h: int, w: int) -> tuple[int, int]:
        if "shortest_edge" in self.size:
            s = int(self.size["shortest_edge"])
            # transformers' get_resize_output_image_size: the short side becomes s, the long one int(s * long / short)
            if w <= h:
                return int(s * h / w), s
            return s, int(s * w / h)
        return int(self.size["height"]), int(self.size["width"])

    def pixel_values(self, image) -> np.ndarray:
        """One image -> float32 [S, S, 3], normalised."""
        arr = self._to_rgb_uint8(image)
        if self.do_pad and arr.shape[0] != arr.shape[1]:
            h, w = arr.shape[:2]
            side = max(h, w)
            fill = np.asarray([int(m * 255) for m in self.mean], np.uint8)
            square = np.empty((side, side, 3), np.uint8)
            square[:] = fill
            top, left = (side - h) // 2, (side - w) // 2
            square[top:top + h, left:left + w] = arr
            arr = square
        if self.do_resize:
            nh, nw = self._resize_hw(*arr.shape[:2])
            arr = np.asarray(Image.fromarray(arr).resize((nw, nh), resample=self.resample), dtype=np.uint8)
        if self.do_center_crop:
            ch, cw = self.crop_size
            h, w = arr.shape[:2]
            if h < ch or w < cw:  # transformers pads with zeros around the image first
                ph, pw = max(ch, h), max(cw, w)
                padded = np.zeros((ph, pw, 3), np.uint8)
                top, left = -(-(ph - h) // 2), -(-(pw - w) // 2)
                padded[top:top + h, left:left + w] = arr
                arr, h, w = padded, ph, pw
            top, left = (h - ch) // 2, (w - cw) // 2
            arr = arr[top:top + ch, left:left + cw]
        x = arr.astype(np.float32)
        if self.do_rescale:
            x = x * np.float32(self.rescale_factor)
        if self.do_normalize:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x

    def pixels(self, images: Sequence) -> np.ndarray:
        """PIL images, image paths or uint8 arrays [H, W, 3] -> float32 [B, S, S, 3] (NHWC) for ``MLLM``."""
        if isinstance(images, (Image.Image, str)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        if len(images) == 0:
            raise ValueError("pixels() needs at least one image")
        return np.stack([self.pixel_values(im) for im in images]).astype(np.float32)

    def __repr__(self) -> str:
        return (f"Processor(image_token_id={self.image_token_id}, image_seq_length={self.image_seq_length}, "
                f"image_size={self.image_size}, tokenizer={self.tokenizer!r})")


def _seq_length_from_processor_config(proc: Mapping[str, Any], image_size: int) -> int | None:
    """What transformers' LlavaProcessor would expand an image to (None when the config does not say)."""
    if proc.get("image_seq_length") is not None:
        return int(proc["image_seq_length"])
    patch = proc.get("patch_size")
    if not patch:
        return None
    n = (image_size // int(patch)) ** 2 + int(proc.get("num_additional_image_tokens", 0) or 0)
    if proc.get("vision_feature_select_strategy") == "default":
        n -= 1
    return n


def load_processor(path: str) -> Processor:
    """The processor of a transformers LLaVA directory or of an MLLM exported by :func:`mllm.export`."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"processor directory {path!r} not found")
    proc_cfg = _read_json(os.path.join(path, "processor_config.json"))
    image_token = proc_cfg.get("image_token") or "<image>"
    tokenizer = load_tokenizer(path, image_token=image_token)
    has_model_cfg = is_export(path) or os.path.isfile(os.path.join(path, "config.json"))
    model_cfg = read_config(path) if has_model_cfg else None
    pre = preprocessor_config_of(path)
    vision_size = model_cfg.vision.image_size if model_cfg is not None else None
    tok_id = tokenizer.hf.convert_tokens_to_ids(image_token)
    if tok_id is None or tok_id == tokenizer.hf.unk_token_id:
        tok_id = None
    if model_cfg is not None:
        image_token_id = model_cfg.image_token_id
        if tok_id is not None and tok_id != image_token_id:
            raise ValueError(f"{path}: the tokenizer gives {image_token!r} id {tok_id} but the model's image_token_id "
                             f"is {image_token_id}")
        if tok_id is None:
            raise ValueError(f"{path}: the tokenizer has no {image_token!r} token (the model expects id "
                             f"{image_token_id}); add it as a special token")
    elif tok_id is None:
        raise ValueError(f"{path}: no model config (zscir_mllm.json / config.json) and the tokenizer has no "
                         f"{image_token!r} token")
    else:
        image_token_id = tok_id
    processor = Processor(tokenizer, image_token_id=image_token_id, image_seq_length=1, preprocessor_config=pre,
                          image_token=image_token, vision_image_size=vision_size)
    from_proc = _seq_length_from_processor_config(proc_cfg, processor.image_size)
    if model_cfg is not None:
        seq = model_cfg.image_seq_length
        if from_proc is not None and from_proc != seq:
            warnings.warn(f"{path}: processor_config.json expands an image to {from_proc} tokens but the model takes "
                          f"{seq}; using {seq}", stacklevel=2)
    elif from_proc is not None:
        seq = from_proc
    else:
        raise ValueError(f"{path}: cannot tell how many tokens an image takes (no zscir_mllm.json, config.json or "
                         "processor_config.json patch_size)")
    processor.image_seq_length = int(seq)
    return processor
