"""The frozen Flan-T5 decoder that the aligner is fitted to (docs/method.md §1.1, 2.4).

Only the decoder stack and the LM head are built; for ThinkDiff-LVLM the encoder is never materialised
(the official code builds the whole fp32 T5-XXL, docs/method.md §8.9). From the encoder we read one
tensor, its ``final_layer_norm.weight``, which initialises the aligner's output norm (docs/method.md §1.1
and §10.6). ThinkDiff-CLIP (docs/method.md §3) also needs the frozen encoder, for the caption prefix:
``load_t5_decoder(..., with_encoder=True)`` builds it too (:meth:`T5Decoder.encode`).
"""
from __future__ import annotations

import copy
import functools
import json
import os

import torch
from torch import nn


class T5Decoder(nn.Module):
    """T5 decoder + LM head reading an external cross-attention memory (the aligned VLM rows)."""

    def __init__(self, config, scale_outputs: bool = False, with_encoder: bool = False):
        super().__init__()
        from transformers.models.t5.modeling_t5 import T5Stack
        if with_encoder:                 # ThinkDiff-CLIP: encodes the caption prefix (frozen)
            ecfg = copy.deepcopy(config)
            ecfg.is_decoder, ecfg.is_encoder_decoder, ecfg.use_cache = False, False, False
            self.encoder = T5Stack(ecfg)
        else:
            self.encoder = None
        cfg = copy.deepcopy(config)
        cfg.is_decoder, cfg.is_encoder_decoder, cfg.use_cache = True, False, False
        cfg.num_layers = config.num_decoder_layers
        self.config = cfg
        self.decoder = T5Stack(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # T5 v1.0 (tied head) scaled the decoder output by d_model^-0.5; Flan-T5 (untied head) does not.
        self.scale_outputs = scale_outputs

    @property
    def d_model(self) -> int:
        return int(self.config.d_model)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The frozen T5 encoder's states of the text tokens [B, L] -> [B, L, d_model] (no gradient)."""
        if self.encoder is None:
            raise RuntimeError("this T5Decoder was loaded without its encoder (load_t5_decoder(with_encoder=True))")
        with torch.no_grad():
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """memory [B, S, d_model], memory_mask [B, S] (1 = real row), input_ids [B, L] -> logits [B, L, V]."""
        w = self.lm_head.weight
        h = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                         encoder_hidden_states=memory.to(w.dtype), encoder_attention_mask=memory_mask,
                         use_cache=False).last_hidden_state
        if self.scale_outputs:
            h = h * self.d_model ** -0.5
        return self.lm_head(h)


def _weight_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as fh:
            return sorted({os.path.join(path, f) for f in json.load(fh)["weight_map"].values()})
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"t5: {path} has no *.safetensors weights (only {', '.join(sorted(os.listdir(path))[:8])}); "
                                f"a transformers T5 folder with safetensors is needed (e.g. google/flan-t5-xxl)")
    return files


def check_t5_folder(path: str) -> dict:
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(f"t5: model folder not found: {path or '(empty)'}; give a local Flan-T5 folder "
                                f"(config.json, *.safetensors, tokenizer), e.g. flan-t5-xxl")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"t5: {path} has no config.json, so it is not a transformers model folder")
    with open(cfg_path) as fh:
        raw = json.load(fh)
    if raw.get("model_type") != "t5":
        raise ValueError(f"t5: {path} is a {raw.get('model_type')!r} model, expected a T5 (Flan-T5) folder")
    return raw


def load_t5_decoder(path: str, dtype: torch.dtype = torch.float32, device="cpu",
                    with_encoder: bool = False) -> tuple[T5Decoder, torch.Tensor]:
    """Read the decoder, LM head and the encoder's final norm weight from a local T5 folder (with_encoder:
    the whole encoder too, for ThinkDiff-CLIP).

    Returns (frozen decoder in eval mode, encoder.final_layer_norm.weight)."""
    from safetensors import safe_open
    from transformers import T5Config
    raw = check_t5_folder(path)
    config = T5Config.from_pretrained(path, local_files_only=True)
    scale = raw["scale_decoder_outputs"] if "scale_decoder_outputs" in raw else raw.get("tie_word_embeddings", True) is not False
    sd, norm = {}, None
    for f in _weight_files(path):
        with safe_open(f, framework="pt", device="cpu") as fh:
            for k in fh.keys():
                if k == "encoder.final_layer_norm.weight":
                    norm = fh.get_tensor(k).float()
                if k.startswith("decoder.") or k in ("shared.weight", "lm_head.weight") or (
                        with_encoder and k.startswith("encoder.")):
                    sd[k] = fh.get_tensor(k)
    if norm is None:
        raise KeyError(f"t5: {path} has no encoder.final_layer_norm.weight (needed to initialise the aligner's norm)")
    if "shared.weight" not in sd:
        raise KeyError(f"t5: {path} has no shared.weight (token embeddings)")
    sd.setdefault("decoder.embed_tokens.weight", sd["shared.weight"])
    if with_encoder:
        sd.setdefault("encoder.embed_tokens.weight", sd["shared.weight"])
    sd.setdefault("lm_head.weight", sd["shared.weight"])    # tied head (T5 v1.0); Flan-T5 stores its own
    sd.pop("shared.weight")
    with torch.device("meta"):
        model = T5Decoder(config, scale_outputs=scale, with_encoder=with_encoder)
    model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False), norm


def random_t5_decoder(config, dtype: torch.dtype, device, seed: int = 0) -> T5Decoder:
    """A random-weight decoder of a given shape (benchmarks), built directly in dtype on device."""
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = T5Decoder(config)
    finally:
        torch.set_default_dtype(old)
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str):
    """A tokenizer from a local folder (never downloaded); cached, as the Qwen vocabulary takes ~1 s."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
