"""VLM encoder: generate with a Qwen2-VL-family model and capture, for every generated token, the
final-norm hidden state whose LM head produced it (docs/method.md §1.1).

Row semantics: row 0 is the final-norm state at the last prompt position (it predicts token 0);
row k is the state at the step that fed token k-1 and produced token k. N tokens -> N rows. The rows
are captured by a forward hook on the language model's final norm *during* generation (no second
pass), so the memory cost is one [D] vector per token, not all layers' states.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .dtypes import resolve_dtype
from .prompts import DEFAULT_SYSTEM, Prompt, render_qwen_chat
from .release import VLM_FOLDER, VLM_NAME

log = logging.getLogger("thinkdiff")

# model_type (config.json) -> transformers class name. Qwen2.5-VL shares the layout and chat format.
FAMILIES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
# Where the language model's final RMSNorm lives, across transformers versions.
_NORM_PATHS = ("model.language_model.norm", "model.norm", "language_model.model.norm", "language_model.norm")


class VLMLoadError(FileNotFoundError):
    pass


@dataclass
class VLMOutput:
    text: str                  # generated text (special tokens removed)
    token_ids: torch.Tensor    # [N] generated ids
    hidden: torch.Tensor       # [N, D] final-norm state that produced token k (row k)
    prompt: str                # the rendered chat prompt
    prompt_len: int            # prompt length in tokens (image pads expanded)


def check_model_folder(path: str | os.PathLike) -> dict:
    """Check a local HF model folder before loading; return its config dict. Clear errors otherwise."""
    import json
    path = os.fspath(path)
    where = (f"Put a Qwen2-VL model folder (config.json, *.safetensors, tokenizer and preprocessor files, "
             f"e.g. {VLM_NAME}) under ComfyUI's models/{VLM_FOLDER}/.")
    if not os.path.isdir(path):
        raise VLMLoadError(f"VLM folder not found: {path}. {where}")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise VLMLoadError(f"{path} has no config.json, so it is not a transformers model folder. {where}")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise VLMLoadError(f"{cfg_path} is not valid JSON ({e}); the file is damaged or incomplete: copy it "
                           f"again from the model's release. {where}") from None
    files = os.listdir(path)
    if not any(n.endswith(".safetensors") for n in files):
        raise VLMLoadError(f"{path} has no *.safetensors weights (only {', '.join(sorted(files)[:8])}). {where}")
    if not any(n in files for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise VLMLoadError(f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json). {where}")
    if cfg.get("model_type") not in FAMILIES:
        raise VLMLoadError(f"{path}: model_type {cfg.get('model_type')!r} is not supported; "
                           f"supported: {', '.join(FAMILIES)}")
    return cfg


def find_final_norm(model: torch.nn.Module) -> torch.nn.Module:
    for dotted in _NORM_PATHS:
        obj = model
        try:
            for part in dotted.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.Module):
            return obj
    raise AttributeError(f"cannot find the language model's final norm in {type(model).__name__}")


def _unpack(content: Prompt | Sequence[Any], add_vision_id: bool | None) -> tuple[list, bool]:
    if isinstance(content, Prompt):
        return content.content, content.add_vision_id if add_vision_id is None else add_vision_id
    return list(content), True if add_vision_id is None else add_vision_id


MAX_ASPECT = 200   # Qwen2-VL's image processor refuses more extreme images


def check_images(images: Sequence[Any]) -> None:
    """Images the Qwen2-VL processor cannot take get a message that says which one and what to do."""
    for i, im in enumerate(images, 1):
        w, h = im.size
        if min(w, h) < 1:
            raise ValueError(f"image {i} is empty ({w}x{h} pixels)")
        if max(w, h) / min(w, h) >= MAX_ASPECT:
            raise ValueError(f"image {i} is {w}x{h} pixels (aspect ratio {max(w, h) / min(w, h):.0f}:1); Qwen2-VL "
                             f"takes images up to {MAX_ASPECT}:1: crop or pad it")


def free_memory(device: torch.device) -> None:
    """Collect what a failed step left unreachable and hand the accelerator's cached blocks back."""
    import gc
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


class _TokenCallback:
    """A stopping criterion that never stops: it reports progress (and lets the callback raise,
    e.g. ComfyUI's interrupt exception) after each generated token."""

    def __init__(self, prompt_len: int, total: int, fn: Callable[[int, int], None]):
        self.prompt_len, self.total, self.fn = prompt_len, total, fn

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        self.fn(input_ids.shape[1] - self.prompt_len, self.total)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class VLMEncoder:
    """A Qwen2-VL-family model plus its processor, used as ThinkDiff's multimodal encoder."""

    def __init__(self, model, processor, name: str = ""):
        self.model, self.processor, self.name = model, processor, name
        self.norm = find_final_norm(model)
        self.tokenizer = processor.tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: str | torch.dtype = "auto",
                        device: str | torch.device = "cpu", attn_implementation: str = "sdpa") -> "VLMEncoder":
        """Load from a local folder only (``local_files_only=True``; never downloads)."""
        import transformers
        cfg = check_model_folder(path)
        device = torch.device(device)
        model_cls = getattr(transformers, FAMILIES[cfg["model_type"]])
        from safetensors import SafetensorError
        try:
            model = model_cls.from_pretrained(os.fspath(path), dtype=resolve_dtype(dtype, device),
                                              local_files_only=True, attn_implementation=attn_implementation)
        except (SafetensorError, OSError) as e:
            raise VLMLoadError(f"{os.fspath(path)}: the weights could not be read ({e.__class__.__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else '-'}). A *.safetensors file is "
                               f"probably truncated (an interrupted download): compare the files' sizes with the "
                               f"model's release and copy the broken ones again") from None
        processor = transformers.AutoProcessor.from_pretrained(os.fspath(path), local_files_only=True)
        return cls(model.to(device).eval().requires_grad_(False), processor, name=os.path.basename(os.fspath(path)))

    @property
    def hidden_size(self) -> int:
        return int(self.norm.weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid >= 0 and tid not in ids and tid != self.tokenizer.unk_token_id:
                ids.append(tid)
        return ids

    def prepare(self, content: Prompt | Sequence[Any], system: str | None = DEFAULT_SYSTEM,
                max_pixels: int | None = None, add_vision_id: bool | None = None) -> tuple[dict, str]:
        """Tokenise a :class:`Prompt` (or a bare content list of strings and PIL images) into model
        inputs on the model's device. ``add_vision_id`` (writes "Picture i: " before each image)
        defaults to the prompt's own choice, and to True for a bare list."""
        content, add_vision_id = _unpack(content, add_vision_id)
        prompt, images = render_qwen_chat(content, system=system, add_vision_id=add_vision_id)
        check_images(images)
        kwargs = {}
        if images and max_pixels:
            kwargs["images_kwargs"] = {"max_pixels": int(max_pixels)}
        inputs = self.processor(text=[prompt], images=[im.convert("RGB") for im in images] or None,
                                return_tensors="pt", **kwargs)
        return {k: v.to(self.device) for k, v in inputs.items()}, prompt

    @torch.inference_mode()
    def generate(self, content: Prompt | Sequence[Any], *, max_new_tokens: int = 128, stop_at_eos: bool = False,
                 do_sample: bool = True, temperature: float = 0.6, top_p: float = 0.9, seed: int = 0,
                 system: str | None = DEFAULT_SYSTEM, max_pixels: int | None = None,
                 add_vision_id: bool | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> VLMOutput:
        """Generate up to ``max_new_tokens`` (exactly that many unless ``stop_at_eos``) and capture
        the final-norm state behind each generated token."""
        from transformers import GenerationConfig, StoppingCriteriaList
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if do_sample:
            if not (math.isfinite(temperature) and temperature > 0):
                raise ValueError(f"temperature is {temperature}: give a finite number above 0 (0.6 as in the paper), "
                                 f"or sample greedily")
            if not (math.isfinite(top_p) and 0 < top_p <= 1):
                raise ValueError(f"top_p is {top_p}: give a number in (0, 1] (0.9 as in the paper)")
        inputs, prompt = self.prepare(content, system=system, max_pixels=max_pixels, add_vision_id=add_vision_id)
        prompt_len = int(inputs["input_ids"].shape[1])
        eos = self._eos_ids()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
        # A fresh config: the checkpoint's defaults (top_k, repetition penalty, ...) must not leak in.
        gen = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=0 if stop_at_eos else max_new_tokens,
                               do_sample=do_sample, temperature=temperature if do_sample else None,
                               top_p=top_p if do_sample else None, top_k=None, repetition_penalty=None,
                               eos_token_id=eos, pad_token_id=pad, use_cache=True)
        rows: list[torch.Tensor] = []
        handle = self.norm.register_forward_hook(
            lambda mod, inp, out: rows.append((out[0] if isinstance(out, tuple) else out)[:, -1].detach()))
        stopping = StoppingCriteriaList([_TokenCallback(prompt_len, max_new_tokens, on_token)] if on_token else [])
        saved_cfg = self.model.generation_config
        fork = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        oom = None
        try:
            with fork:
                torch.manual_seed(seed)
                self.model.generation_config = gen
                out = self.model.generate(**inputs, generation_config=gen, stopping_criteria=stopping)
        except torch.OutOfMemoryError as e:
            # only the text leaves this block: the exception's traceback holds generate's frames (the KV
            # cache, the activations), which are freed when it ends
            oom = str(e).splitlines()[0][:300] if str(e) else "out of memory"
        finally:
            self.model.generation_config = saved_cfg
            handle.remove()
        if oom is not None:
            rows.clear()
            del inputs
            free_memory(self.device)
            raise torch.OutOfMemoryError(
                f"the VLM ran out of memory on {self.device} while generating up to {max_new_tokens} tokens after a "
                f"{prompt_len}-token prompt ({oom}). What it had taken is freed. Lower max_new_tokens, give fewer "
                f"or smaller images, load the VLM in bf16/fp16, or free memory for it (other models, other "
                f"programs)")
        ids = out[0, prompt_len:]
        if len(rows) != ids.shape[0]:
            raise RuntimeError(f"captured {len(rows)} hidden states for {ids.shape[0]} generated tokens")
        hidden = torch.cat(rows, dim=0)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return VLMOutput(text=text, token_ids=ids.cpu(), hidden=hidden, prompt=prompt, prompt_len=prompt_len)

    @torch.inference_mode()
    def teacher_forced_states(self, content: Prompt | Sequence[Any], token_ids: torch.Tensor,
                              system: str | None = DEFAULT_SYSTEM, max_pixels: int | None = None,
                              add_vision_id: bool | None = None) -> torch.Tensor:
        """One forward pass over prompt + generated tokens; the final-norm states at the positions
        that predicted each generated token ([N, D]). A check of :meth:`generate`'s rows."""
        inputs, _ = self.prepare(content, system=system, max_pixels=max_pixels, add_vision_id=add_vision_id)
        prompt_len = inputs["input_ids"].shape[1]
        ids = token_ids.to(self.device).view(1, -1)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], ids[:, :-1]], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        for key in ("mm_token_type_ids", "token_type_ids"):   # text positions are type 0
            if key in inputs:
                inputs[key] = torch.cat([inputs[key], torch.zeros_like(ids[:, :-1])], dim=1)
        captured = []
        handle = self.norm.register_forward_hook(
            lambda mod, inp, out: captured.append(out[0] if isinstance(out, tuple) else out))
        try:
            self.model(**inputs, use_cache=False)
        finally:
            handle.remove()
        return captured[0][0, prompt_len - 1:]
