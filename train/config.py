"""Configs of the three commands: dataclasses whose defaults are the paper's values (docs/method.md §2.2-2.5).

Values come from, in increasing priority: the defaults below, a YAML file (``--config run.yaml``, keys
are the field names), and command-line options (``--lr 3e-4`` or ``--lr=3e-4``; ``--batch-size`` and
``--batch_size`` are the same). Booleans take ``true``/``false`` (a bare ``--resume`` means true).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields

from thinkdiff_core import dtypes
from thinkdiff_core.prompts import DEFAULT_SYSTEM

# dtype options, all from thinkdiff_core.dtypes (resolved there with resolve_dtype / parse_dtype)
ANY_DTYPE = dtypes.choices()                                  # stored tensors: fp32, bf16, fp16
MODEL_DTYPE = dtypes.choices(auto=True)                       # VLM weights
TRAIN_DTYPE = dtypes.choices(auto=True, only=("fp32", "bf16"))  # fit: no fp16 (no loss scaling; T5 overflows)


def opt(default, help: str, choices: list[str] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class PrecomputeConfig:
    # variant (docs/method.md §2.2 LVLM, §3 CLIP)
    variant: str = opt("lvlm", "lvlm: store a VLM's generations (--vlm); clip: store BLIP-2 vision tokens (--vision) "
                               "and the cleaned captions (same-name .txt / the tar's txt) for ThinkDiff-CLIP",
                       ["lvlm", "clip"])
    # inputs / outputs
    vlm: str = opt("", "local Qwen2-VL model folder (e.g. Qwen2-VL-7B-Instruct); never downloaded")
    vision: str = opt("", "clip: local BLIP-2 folder (e.g. blip2-flan-t5-xxl; only its vision tower is read) or a "
                          "Blip2VisionModel folder")
    data: str = opt("", "image-caption source: a folder of images (+ optional same-name .txt captions), "
                        "a .tar, a folder of .tar shards, a glob or a brace pattern like cc3m/{00000..00331}.tar")
    out: str = opt("", "output folder of feature shards (webdataset .tar)")
    shard_size: int = opt(1000, "images per output shard for folder sources (tar sources: one output tar per input tar)")
    store_image: bool = opt(False, "also store the source image bytes in the shards (the official shards did)")
    # prompt and sampling (docs/method.md §2.2)
    instructions: str = opt("training", "'training' = the paper's 16 captioning instructions, or a text file with one "
                                        "instruction per line; one is drawn uniformly per image")
    system: str = opt(DEFAULT_SYSTEM, "system prompt ('' for none)")
    temperature: float = opt(0.6, "sampling temperature")
    top_p: float = opt(0.9, "nucleus sampling top-p")
    max_new_tokens: int = opt(256, "at most this many generated tokens per image")
    stop_at_eos: bool = opt(True, "stop at the VLM's end of turn (natural EOS, as in the paper)")
    do_sample: bool = opt(True, "sample (false: greedy)")
    max_pixels: int = opt(0, "cap on image pixels for the Qwen2-VL processor (0 = processor default, as in the paper)")
    # numerics / placement
    feature_dtype: str = opt("bf16", "dtype of the stored states", ANY_DTYPE)
    model_dtype: str = opt("auto", "VLM weights dtype: auto = fp32 on CPU, bf16 on a GPU that supports it, else fp16",
                           MODEL_DTYPE)
    device: str = opt("auto", "auto (cuda:LOCAL_RANK if a GPU is present, else cpu), cpu, cuda, cuda:1, ...")
    seed: int = opt(42, "seed: the instruction and the sampling seed of an image depend only on (seed, image key)")


@dataclass
class FitConfig:
    # data and models
    data: str = opt("", "feature shards written by `precompute` (folder, glob, brace pattern, or comma-separated list)")
    val_data: str = opt("", "held-out feature shards; empty = hold out the last --val-shards shards of --data")
    val_shards: int = opt(1, "shards of --data held out for validation when --val-data is empty (0 = no validation)")
    t5: str = opt("", "local Flan-T5 folder (config.json + *.safetensors + tokenizer), e.g. flan-t5-xxl")
    tokenizer: str = opt("", "local folder with the VLM's (Qwen2-VL) tokenizer; empty = the VLM named in "
                             "DATA/precompute.json")
    out: str = opt("out/fit", "run folder: log.jsonl, config.yaml, checkpoints/")
    # aligner (docs/method.md §1.1)
    hidden_dim: int = opt(0, "aligner hidden width (0 = the T5 d_model, 4096 for flan-t5-xxl as in the paper)")
    norm_init: str = opt("t5", "initial scale of the aligner's output norm: t5 = a copy of the T5 encoder's final "
                               "norm (the paper), ones = PyTorch's default (an ablation)", ["t5", "ones"])
    standardise_inputs: bool = opt(False, "train on standardised features (per-dimension mean and std of the "
                                          "training rows), folded into the first Linear at export, so the "
                                          "exported aligner is the plain paper layout; not in the paper (ThinkDiff-"
                                          "mini uses it with --encoder-term: see bench/RESULTS.md)")
    # objective (docs/method.md §2.3/2.4)
    max_split: int = opt(128, "split point s is uniform in 1..min(N-1, max_split)")
    max_label_len: int = opt(128, "T5 label tokens (incl. </s>) per sample")
    max_text_len: int = opt(32, "ThinkDiff-CLIP data: T5 tokens (incl. </s>) of the caption prefix and of the "
                                "suffix labels (paper: 32); max_split and max_label_len are LVLM-only")
    encoder_term: float = opt(0.0, "weight of an extra term, not in the paper (an ablation): 1 - cosine between the "
                                   "mean aligned row and the mean frozen T5 *encoder* state of the same rows' text "
                                   "(pulls the aligned tokens toward the space the image model read in training); "
                                   "0 = the paper's decoder loss only. Validation reports the decoder loss either way")
    # optimisation (docs/method.md §2.5)
    batch_size: int = opt(32, "samples per process per micro-step (paper: 32 per GPU)")
    grad_accum: int = opt(1, "micro-steps per optimizer step")
    max_steps: int = opt(25000, "optimizer steps to run (paper: about 25k)")
    lr: float = opt(1e-4, "peak learning rate")
    warmup_lr: float = opt(1e-6, "learning rate at step 0 of the linear warm-up")
    warmup_steps: int = opt(2000, "linear warm-up steps")
    min_lr: float = opt(8e-5, "cosine floor")
    decay_steps: int = opt(200000, "cosine horizon in steps (paper: 40 epochs x 5000)")
    weight_decay: float = opt(0.05, "AdamW weight decay on >=2-D tensors (biases and the norm get 0)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.999, "AdamW beta2")
    precision: str = opt("auto", "autocast: auto = bf16 on a GPU that supports it, else fp32", TRAIN_DTYPE)
    decoder_dtype: str = opt("auto", "frozen T5 decoder weights: auto = bf16 on a GPU that supports it, else fp32",
                             TRAIN_DTYPE)
    decoder_dropout: bool = opt(True, "dropout of the frozen T5 decoder (flan-t5: 0.1) active in training steps, "
                                      "as in the official trainer, which puts the whole model in train mode; "
                                      "validation always runs it in eval mode. The weights stay frozen either way")
    device: str = opt("auto", "auto (GPU when present) or cpu")
    seed: int = opt(42, "seed of the aligner init, the data order and the random splits")
    # bookkeeping
    log_interval: int = opt(10, "steps between log.jsonl lines")
    val_interval: int = opt(1000, "steps between validation passes (and one at the end)")
    val_max_samples: int = opt(512, "validation samples (all processes together)")
    ckpt_interval: int = opt(1000, "steps between checkpoints (and one at the end)")
    keep_ckpts: int = opt(3, "checkpoints kept (older ones are deleted)")
    resume: bool = opt(False, "continue from the last checkpoint in --out (starts fresh if there is none)")
    progress: bool = opt(True, "show a tqdm progress bar")


@dataclass
class ExportConfig:
    run: str = opt("", "a fit run folder (its latest checkpoint is used) or a checkpoint file")
    out: str = opt("", "output .safetensors file")
    dtype: str = opt("fp32", "stored dtype", ANY_DTYPE)
    source_vlm: str = opt("", "VLM the aligner reads, stored in the metadata (default: from the run's data)")
    t5: str = opt("", "T5 the aligner was fitted to, stored in the metadata (default: the run's --t5 folder name)")


_TYPES = {"int": int, "float": float, "str": str, "bool": None}


def _to_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _coerce(f: dataclasses.Field, v):
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        return _to_bool(v)
    if kind == "float" and isinstance(v, str):
        return float(v)   # YAML 1.1 reads 1e-4 as a string
    return _TYPES[kind](v)


def add_arguments(p: argparse.ArgumentParser, cls) -> None:
    p.add_argument("--config", metavar="YAML", help="YAML file of option values (keys = option names with _)")
    for f in fields(cls):
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        flags = ["--" + f.name.replace("_", "-")] + (["--" + f.name] if "_" in f.name else [])
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default!r})")
        if kind == "bool":
            kw.update(nargs="?", const=True, type=_to_bool, metavar="{true,false}")
        elif f.metadata.get("choices"):
            kw.update(type=_TYPES[kind], choices=f.metadata["choices"], metavar="{" + ",".join(f.metadata["choices"]) + "}")
        else:
            kw.update(type=_TYPES[kind], metavar=kind.upper())
        p.add_argument(*flags, **kw)


def from_args(cls, args: argparse.Namespace):
    """defaults < YAML (--config) < command line."""
    values = {}
    if getattr(args, "config", None):
        import os

        import yaml
        if not os.path.isfile(args.config):
            raise SystemExit(f"error: config file not found: {args.config}")
        with open(args.config) as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"error: {args.config} must hold a mapping of option: value")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(loaded) - set(known))
        if unknown:
            raise SystemExit(f"error: {args.config}: unknown option(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(known)}")
        values.update({k: _coerce(known[k], v) for k, v in loaded.items()})
    values.update({f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
    return cls(**values)


def require(cfg, *names: str) -> None:
    """Stop with a clear error if an option in `names` is empty or an option with choices has another value
    (the command line checks choices itself; YAML files and configs built in Python come through here)."""
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        raise SystemExit("error: missing " + ", ".join(f"--{n.replace('_', '-')}" for n in missing)
                         + " (give it on the command line or in the --config YAML)")
    for f in fields(cfg):
        allowed = f.metadata.get("choices")
        if allowed and getattr(cfg, f.name) not in allowed:
            raise SystemExit(f"error: --{f.name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                             f"got {getattr(cfg, f.name)!r}")
