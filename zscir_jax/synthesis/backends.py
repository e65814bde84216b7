"""What answers the recipes' prompts: our JAX LLaVA / LLM (a local checkpoint, or objects already in memory) and a
rule-based backend that answers from the scenes benchmark's structure (an exact oracle for the demo and the tests;
``synthesis.garment_rules`` is its twin for the garment benchmark).

A backend has

    name            what the records' ``generator`` field says ("mllm:llava-1.5-7b-hf", "rule_based")
    fingerprint()   a cheap identity of the model for the cache keys; never loads the model
    describe()      a dict for the manifest
    generate(requests, seeds, sampling) -> [Generation]   one per request, in order

``generate`` is given requests that all carry an image or all carry none (an LLaVA batch needs an image in every row
when it has pixels), at most ``batch_size`` of them, and one seed per request (``engine`` derives it from the run's
seed and the request, so a result never depends on the batch it ran in).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import string
from typing import Any, Protocol, Sequence

import numpy as np

from zscir_jax.errors import UserError


@dataclasses.dataclass
class Request:
    """One prompt: ``template.format(**fields)``, sent with the image at ``image`` when there is one."""
    prompt: str  # "<recipe>.<template name>", e.g. "mvftji.caption"
    template: str
    fields: dict[str, str]
    image: str | None  # the path the image is read from
    item: str  # the key of the input item it belongs to (quarantine, seeds)

    @property
    def text(self) -> str:
        return self.template.format(**self.fields)


@dataclasses.dataclass
class Generation:
    text: str | None  # None when it could not run (``error`` says why)
    tokens: int = 0  # generated tokens, the stop token included
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_new_tokens: int = 64

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Backend(Protocol):
    name: str

    def fingerprint(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def generate(self, requests: Sequence[Request], seeds: Sequence[int], sampling: Sampling) -> list[Generation]: ...


def template_fields(template: str) -> set[str]:
    """The ``{field}`` names of a ``str.format`` template."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


# ---------------------------------------------------------------------------------------------------------------------
# Our (M)LLM


def _hash_file(h, path: str, whole_below: int = 256 << 20, edge: int = 1 << 20) -> None:
    """Adds a file to ``h``: all of it when small, else its size and first and last MiB (a 14 GB checkpoint is
    fingerprinted in milliseconds; any re-export changes its header or size)."""
    size = os.path.getsize(path)
    h.update(f"{size}:".encode())
    with open(path, "rb") as f:
        if size <= whole_below:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(edge))
            f.seek(size - edge)
            h.update(f.read(edge))


def checkpoint_fingerprint(path: str) -> str:
    """SHA-256 over every file of a checkpoint directory, subfolders included (an export's Orbax ``params/``), each
    by name and content (see ``_hash_file``); hidden entries are skipped."""
    h = hashlib.sha256(b"zscir-checkpoint-v1")
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in names if not n.startswith(".")]
    for f in sorted(files, key=lambda f: os.path.relpath(f, path)):
        h.update(os.path.relpath(f, path).encode() + b"\0")
        _hash_file(h, f)
    return h.hexdigest()


def _state_fingerprint(model) -> str:
    from flax import nnx

    h = hashlib.sha256(b"zscir-model-state-v1")
    for path, leaf in sorted(nnx.to_flat_state(nnx.state(model)), key=lambda kv: str(kv[0])):
        arr = np.asarray(getattr(leaf, "value", leaf))
        h.update(f"{path}:{arr.dtype}:{arr.shape}:".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _sample_rows_fn():
    """A jitted (embed + per-row sampling) function: ``llm.generate`` vmapped over rows, each with its own key, so a
    row's sample depends on its own seed only, not on the batch it shares."""
    import jax
    from flax import nnx

    from zscir_jax.models import llm

    @functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "eos", "pad"))
    def run(graphdef, state, input_ids, pixels, attention_mask, seeds, top_p, *, max_new_tokens, temperature, eos,
            pad):
        model = nnx.merge(graphdef, state)
        lm = model.llm if hasattr(model, "llm") else model
        embeds = model.embed(input_ids, pixels) if hasattr(model, "llm") else model.embed(input_ids)
        keys = jax.vmap(jax.random.key)(seeds)

        def row(e, m, k):
            return llm.generate(lm, None, m[None], max_new_tokens, inputs_embeds=e[None], temperature=temperature,
                                top_p=top_p, rng=k, eos_token_ids=eos, pad_token_id=pad)[0]

        return jax.vmap(row)(embeds, attention_mask, keys)

    return run


class MLLMBackend:
    """Our JAX LLaVA (``mllm.MLLM``) or text-only LLM (``llm.LLM``) with a processor (``mllm.load_processor``'s
    surface: ``prompt_ids(messages)``, ``pixels(images)``, ``tokenizer.batch / decode / eos_token_ids /
    pad_token_id``), from a checkpoint directory (loaded on the first ``generate``) or from objects in memory.

    Batches are padded to ``batch_size`` rows (repeating the last) and prompts left-padded to a multiple of
    ``pad_to_multiple`` tokens, so a run compiles once per (prompt-length bucket, with/without image).
    Greedy decoding goes through ``mllm.generate`` / ``llm.generate``; sampling runs the same loop with one key per
    row.
    """

    def __init__(self, model=None, processor=None, *, checkpoint: str = "", dtype: str = "float32",
                 param_dtype: str = "float32", name: str | None = None, fingerprint: str | None = None,
                 batch_size: int | None = None, pad_to_multiple: int = 16, cache_dir: str = ""):
        if model is None and not checkpoint:
            raise ValueError("MLLMBackend needs a model and a processor, or a checkpoint directory")
        if model is not None and processor is None:
            raise ValueError("MLLMBackend needs the processor of its model")
        self.model, self.processor, self.checkpoint = model, processor, checkpoint
        self.dtype, self.param_dtype = dtype, param_dtype
        label = os.path.basename(os.path.normpath(checkpoint)) if checkpoint else type(model).__name__.lower()
        self.name = name or f"mllm:{label}"
        self._fingerprint = fingerprint
        self.batch_size, self.pad_to_multiple = batch_size, int(pad_to_multiple)
        self.cache_dir = cache_dir
        self.loaded_from_checkpoint = False

    # -- identity ---------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = (checkpoint_fingerprint(self.checkpoint) if self.checkpoint
                                 else _state_fingerprint(self.model))
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"kind": "mllm", "name": self.name, "checkpoint": self.checkpoint, "dtype": self.dtype,
                "fingerprint": self.fingerprint()}

    # -- loading ----------------------------------------------------------------------------------------------------
    def load(self) -> None:
        if self.model is not None:
            return
        import jax.numpy as jnp

        from zscir_jax.models import llm, mllm

        kw = dict(dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype),
                  cache_dir=os.path.expanduser(self.cache_dir) if self.cache_dir else None)
        if checkpoint_kind(self.checkpoint) == "llm":
            self.processor = TextProcessor(llm.load_tokenizer(self.checkpoint))
            self.model = llm.from_pretrained(self.checkpoint, **kw)
        else:
            self.processor = mllm.load_processor(self.checkpoint)
            self.model = mllm.load(self.checkpoint, **kw)
        self.loaded_from_checkpoint = True

    @property
    def has_vision(self) -> bool:
        return hasattr(self.model, "llm")

    # -- generation -------------------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], seeds: Sequence[int], sampling: Sampling) -> list[Generation]:
        self.load()
        n = len(requests)
        with_image = requests[0].image is not None
        if any((r.image is not None) != with_image for r in requests):
            raise ValueError("a batch must be all image prompts or all text prompts")
        out: list[Generation | None] = [None] * n
        pil = []
        if with_image:
            if not self.has_vision:
                return [Generation(None, error="this backend's model has no vision tower") for _ in requests]
            from zscir_jax.data import images

            for i, r in enumerate(requests):
                try:
                    pil.append(images.load_image(r.image))
                except images.ImageError as e:
                    out[i] = Generation(None, error=str(e))
                    pil.append(None)
        live = [i for i in range(n) if out[i] is None]
        if not live:
            return out  # type: ignore[return-value]
        rows = live + [live[-1]] * max(0, (self.batch_size or len(live)) - len(live))
        tok = self.processor.tokenizer
        ids_lists = [self.processor.prompt_ids(_messages(requests[i].text, with_image)) for i in rows]
        ids, mask = tok.batch(ids_lists, pad_to_multiple=self.pad_to_multiple)
        pixels = np.asarray(self.processor.pixels([pil[i] for i in rows]), np.float32) if with_image else None
        tokens = self._run(np.asarray(ids), pixels, np.asarray(mask), [seeds[i] for i in rows], sampling)
        eos = set(int(e) for e in tok.eos_token_ids)
        for row, i in enumerate(live):
            seq = [int(t) for t in tokens[row]]
            stop = next((k for k, t in enumerate(seq) if t in eos), None)
            count = len(seq) if stop is None else stop + 1
            out[i] = Generation(tok.decode(seq[:count], skip_special_tokens=True), count)
        return out  # type: ignore[return-value]

    def _run(self, ids, pixels, mask, seeds, sampling: Sampling) -> np.ndarray:
        import jax.numpy as jnp
        from flax import nnx

        tok = self.processor.tokenizer
        eos = tuple(int(e) for e in tok.eos_token_ids)
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0))
        if self.has_vision and pixels is not None:
            n_placeholders = int(np.sum(ids == self.model.config.image_token_id))
            if n_placeholders != pixels.shape[0] * self.model.config.image_seq_length:
                raise ValueError(f"the processor put {n_placeholders} image tokens in {pixels.shape[0]} prompts; "
                                 f"expected {self.model.config.image_seq_length} per image")
        if float(sampling.temperature) == 0.0:
            kw = dict(max_new_tokens=int(sampling.max_new_tokens), eos_token_ids=eos, pad_token_id=pad)
            if self.has_vision:
                from zscir_jax.models import mllm

                out = mllm.generate(self.model, jnp.asarray(ids), None if pixels is None else jnp.asarray(pixels),
                                    jnp.asarray(mask), **kw)
            else:
                from zscir_jax.models import llm

                out = llm.generate(self.model, jnp.asarray(ids), jnp.asarray(mask), **kw)
            return np.asarray(out)
        graphdef, state = nnx.split(self.model)
        out = _sample_rows_fn()(
            graphdef, state, jnp.asarray(ids), None if pixels is None else jnp.asarray(pixels), jnp.asarray(mask),
            jnp.asarray(np.asarray(seeds, np.uint32)), jnp.float32(sampling.top_p),
            max_new_tokens=int(sampling.max_new_tokens), temperature=float(sampling.temperature), eos=eos, pad=pad)
        return np.asarray(out)


class TextProcessor:
    """The processor surface ``MLLMBackend`` uses, for a text-only LLM: its chat tokenizer, no images."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def prompt_ids(self, messages, *, add_generation_prompt: bool = True) -> list[int]:
        return self.tokenizer.chat_ids(messages, add_generation_prompt=add_generation_prompt)

    def pixels(self, images):
        raise ValueError("a text-only LLM takes no images")


def checkpoint_kind(path: str) -> str:
    """"mllm" (our export, a transformers LLaVA) or "llm" (a Llama / Mistral / Qwen2 directory)."""
    from zscir_jax.models import llm, mllm
    from zscir_jax.weights import loader

    if os.path.isfile(os.path.join(path, mllm.EXPORT_MARKER)):
        return "mllm"
    config = loader.read_json(os.path.join(path, "config.json"))
    if config.get("model_type") == "llava":
        return "mllm"
    llm.LLMConfig.from_hf_dict(config)  # a ValueError says what is not supported
    return "llm"


def _messages(text: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


# ---------------------------------------------------------------------------------------------------------------------
# Rule-based answers on the scenes benchmark


class ScenesRuleBackend:
    """Answers every recipe's prompts exactly, from the canonical scene captions of the scenes benchmark: what the
    demo MLLM is taught to do, without a model (an upper bound for it, and the tests' well-formed path).

    ``captions`` maps an image path to its caption (the items' captions); an image or caption that is not a
    canonical scene gets an empty answer, which the recipe's parser quarantines. Modification texts use the
    training templates (``synthesis.templates``); a modification text is read back by word overlap with every
    single edit's phrasings.
    """

    name = "rule_based"
    VERSION = 2  # bump whenever an answer changes: it is part of the cache keys

    def __init__(self, captions: dict[str, str] | None = None, phrasings: dict[str, Sequence[str]] | None = None):
        from zscir_jax.synthesis import templates

        self.captions = dict(captions or {})
        self.phrasings = {op: tuple(ts) for op, ts in (phrasings or templates.TEMPLATES).items()}
        templates.check(self.phrasings)

    def fingerprint(self) -> str:
        from zscir_jax.synthesis import cache

        return cache.key({"backend": "scenes_rule", "version": self.VERSION, "phrasings": self.phrasings})

    def describe(self) -> dict[str, Any]:
        return {"kind": "rule_based", "name": self.name, "fingerprint": self.fingerprint()}

    def generate(self, requests: Sequence[Request], seeds: Sequence[int], sampling: Sampling) -> list[Generation]:
        out = []
        for r, seed in zip(requests, seeds):
            text = self.answer(r, np.random.default_rng(seed))
            out.append(Generation(text, len(text.split())))
        return out

    # -- answers ----------------------------------------------------------------------------------------------------
    def _scene(self, caption: str | None):
        from zscir_jax.data import scenes

        try:
            return scenes.parse_caption(caption or "")
        except ValueError:
            return None

    def _edit_text(self, scene, edit, rng) -> str:
        from zscir_jax.data import scenes

        return scenes.edit_text(scene, edit, rng, self.phrasings)

    def answer(self, r: Request, rng: np.random.Generator) -> str:
        from zscir_jax.data import scenes
        from zscir_jax.synthesis import prompts

        kind = r.prompt.split(".", 1)[1] if "." in r.prompt else r.prompt
        recipe = r.prompt.split(".", 1)[0]
        if recipe == "distillcir":
            scene = self._scene(r.fields.get("caption"))
            if scene is None:
                return ""
            edit = scenes.random_edit(scene, rng)
            return (f"Brainstorming: the scene holds {len(scene.objects)} object(s); change one by a single {edit.op} "
                    f"edit.\nModification Instruction: {self._edit_text(scene, edit, rng)}\n"
                    f"Modified Caption: {scenes.apply_edit(scene, edit).caption}")
        if recipe == "collm":
            a, b = self._scene(r.fields.get("reference_caption")), self._scene(r.fields.get("target_caption"))
            if a is None or b is None:
                return ""
            edit = scenes.diff(a, b)
            return self._edit_text(a, edit, rng) if edit is not None else f"show {b.caption} instead"
        if recipe == "fashion" and kind == "relative":
            try:
                ref = prompts.attributes(r.fields.get("reference_attributes", ""))["items"]
                tgt = prompts.attributes(r.fields.get("target_attributes", ""))["items"]
            except prompts.ParseError:
                return ""
            if len(ref) != len(tgt):
                return ""
            changes = [(i, k, b.get(k, "")) for i, (a, b) in enumerate(zip(ref, tgt)) for k in a if a[k] != b.get(k)]
            return self._relative(ref, changes, rng) or " and ".join(
                f"change the {k} of item {i + 1} from {ref[i][k]} to {v}" for i, k, v in changes)
        scene = self._scene(self.captions.get(r.image or ""))  # image prompts: the image's scene
        if scene is None:
            return ""
        if recipe == "fashion":  # attributes
            return prompts.format_attributes([o.to_dict() for o in scene.objects])
        if kind == "caption":
            return scene.caption
        if kind in ("modification", "modification_alt"):
            return self._edit_text(scene, scenes.random_edit(scene, rng), rng)
        if kind == "target":
            edit = self.read_edit(scene, r.fields.get("modification", ""))
            return scenes.apply_edit(scene, edit).caption if edit is not None else ""
        return ""

    def _relative(self, items: list[dict], changes, rng) -> str:
        """The changes as scene edits, each phrased on the scene the previous ones made, joined by " and " (empty
        when the lists are not scenes or the changes do not apply one after the other)."""
        from zscir_jax.data import scenes

        try:
            cur = scenes.Scene.of([scenes.Obj.from_dict(d) for d in items])
            current = list(cur.objects)
            if [o.to_dict() for o in current] != [{k: d[k] for k in o.to_dict()} for o, d in zip(current, items)]:
                return ""  # the list is not in the scene's (grid) order
            texts = []
            for i, key, value in changes:
                op = {"position": "move"}.get(key, key)
                edit = scenes.Edit(op, cur.objects.index(current[i]),
                                   scenes.POSITIONS.index(value) if op == "move" else value)
                nxt = scenes.apply_edit(cur, edit)
                texts.append(self._edit_text(cur, edit, rng))
                current[i] = scenes.edited_object(cur, edit)
                cur = nxt
        except (KeyError, ValueError):
            return ""
        return " and ".join(texts)

    def read_edit(self, scene, text: str):
        """The single edit of ``scene`` whose phrasings share the most words with ``text`` (None if none share any
        of the words the edit needs: its new colour / shape / position)."""
        from zscir_jax.data import scenes

        words = set(re.findall(r"[a-z]+", text.lower()))
        best, best_score = None, 0.0
        for edit in scenes.all_edits(scene):
            fields = scenes.edit_fields(scene, edit)
            needed = {"colour": [fields.get("value", "")], "shape": [fields.get("value", "")],
                      "move": fields.get("value", "").split(),
                      "add": fields.get("new", "").split()[-2:]}.get(edit.op, [])
            if not all(w in words for w in needed):
                continue
            for template in tuple(self.phrasings[edit.op]) + tuple(scenes.PHRASINGS[edit.op]):
                cand = set(re.findall(r"[a-z]+", template.format(**fields).lower()))
                score = len(words & cand) / len(words | cand)
                if score > best_score:
                    best, best_score = edit, score
        return best


# ---------------------------------------------------------------------------------------------------------------------
# From a config


def rule_backend(data_kind: str, captions: dict[str, str] | None = None):
    """The rule-based backend for a data kind: the garments' oracle for ``garments``, the scenes' otherwise."""
    if data_kind == "garments":
        from zscir_jax.synthesis import garment_rules

        return garment_rules.GarmentRuleBackend(captions)
    return ScenesRuleBackend(captions)

KINDS = ("mllm", "demo_mllm", "rule_based")


def from_config(config, workdir: str, captions: dict[str, str] | None = None) -> Backend:
    """The backend of ``config.backend`` (``kind``: mllm | demo_mllm | rule_based); nothing is loaded yet.

    ``rule_based`` answers from the structure of ``config.data.kind``'s benchmark: the garments'
    (``garment_rules.GarmentRuleBackend``) for kind ``garments``, else the scenes' (``ScenesRuleBackend``).

    ``demo_mllm`` builds (or reuses) the demo MLLM in the workdir through ``zscir_jax.demo.mllm.build_or_reuse``.
    """
    b = config.backend
    kind = b.kind
    if kind == "rule_based":
        return rule_backend(config.data.get("kind", ""), captions)
    if kind == "demo_mllm":
        try:
            from zscir_jax.demo import mllm as demo_mllm
        except ImportError as e:
            raise UserError(f"config.backend.kind='demo_mllm' needs zscir_jax.demo.mllm, which cannot be imported: {e}")
        checkpoint = demo_mllm.build_or_reuse(config, workdir)
        name = "mllm:demo_mllm"
    elif kind == "mllm":
        checkpoint = os.path.expanduser(b.checkpoint or "")
        check_checkpoint(checkpoint)
        name = None
    else:
        raise UserError(f"config.backend.kind={kind!r} is not one of {', '.join(KINDS)}")
    return MLLMBackend(checkpoint=checkpoint, name=name, dtype=b.get("dtype", "float32"),
                       param_dtype=b.get("param_dtype", "float32"), batch_size=config.batch_size,
                       pad_to_multiple=b.get("pad_to_multiple", 16), cache_dir=b.get("cache_dir", "") or "")


def check_checkpoint(path: str) -> str:
    """``checkpoint_kind(path)``, or a ``UserError`` saying what is wrong with the directory."""
    if not path:
        raise UserError("config.backend.checkpoint is empty: set it to a local LLaVA directory "
                        "(e.g. --config.backend.checkpoint=~/ckpt/llava-1.5-7b-hf, downloaded once with "
                        "`huggingface-cli download llava-hf/llava-1.5-7b-hf --local-dir DIR`), or use the :demo config")
    if not os.path.isdir(path):
        raise UserError(f"config.backend.checkpoint: directory not found: {path}")
    if not os.listdir(path):
        raise UserError(f"config.backend.checkpoint: directory is empty: {path}")
    try:
        return checkpoint_kind(path)
    except (OSError, ValueError) as e:
        raise UserError(f"config.backend.checkpoint: {' '.join(str(e).split())}")
