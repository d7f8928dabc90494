"""Shared helpers of the train/ tests: tiny models, a learnable feature data set, subprocess runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable


def easy_vqa_captions(limit: int | None = None) -> list[tuple[str, str, str]]:
    """(image id, colour, shape) of easy-vqa training images, from its own question/answer pairs."""
    import easy_vqa
    qs, ans, ids = easy_vqa.get_train_questions()
    colour, shape = {}, {}
    for q, a, i in zip(qs, ans, ids):
        if q == "what color is the shape?":
            colour[i] = a
        elif q in ("what shape is in the image?", "what is the shape?", "what shape is present?",
                   "what shape does the image contain?"):
            shape[i] = a
    out = [(str(i), colour[i], shape[i]) for i in sorted(set(colour) & set(shape))]
    return out[:limit] if limit else out


def write_learnable_shards(folder: str, qwen_tok, n_train: int = 192, n_val: int = 48, shard_size: int = 48,
                           dim: int = 32, seed: int = 0,
                           template: str = "a {colour} {shape}") -> dict:
    """Feature shards whose text is predictable from the features (and only from them).

    Each sample is an easy-vqa image's caption (default "a {colour} {shape}") tokenised with the real Qwen tokenizer (+ <|im_end|>, as a generation ends). Row k
    of its [N, dim] features = embedding(colour) + embedding(shape) + 0.3 * embedding(position k) +
    noise: every prefix row says which colour and shape the suffix will name, but the aligner must
    learn to turn that into memory the frozen decoder can read.
    """
    from train.data import encode_sample
    rows = easy_vqa_captions()
    g = torch.Generator().manual_seed(seed)
    colours = sorted({c for _, c, _ in rows})
    shapes = sorted({s for _, _, s in rows})
    emb = {name: torch.randn(dim, generator=g) for name in colours + shapes}
    pos = torch.randn(64, dim, generator=g)
    eos = qwen_tok.convert_tokens_to_ids("<|im_end|>")
    samples = []
    for image_id, colour, shape in rows[:n_train + n_val]:
        text = template.format(colour=colour, shape=shape)
        ids = qwen_tok(text, add_special_tokens=False)["input_ids"] + [eos]
        n = len(ids)
        feat = emb[colour] + emb[shape] + 0.3 * pos[:n] + 0.1 * torch.randn(n, dim, generator=g)
        samples.append(encode_sample(f"evqa{image_id}", {"generated_text": text, "output_token_ids": ids,
                                                         "colour": colour, "shape": shape}, feat, torch.float32))
    return _write_shards(folder, samples, n_train, shard_size, dim)


def _write_shards(folder: str, samples: list[dict], n_train: int, shard_size: int, dim: int) -> dict:
    """train-XXXX.tar shards of shard_size samples and one val.tar (the samples after n_train)."""
    import webdataset as wds
    os.makedirs(folder, exist_ok=True)
    train, val = samples[:n_train], samples[n_train:]
    names = []
    for i in range(0, len(train), shard_size):
        names.append(os.path.join(folder, f"train-{i // shard_size:04d}.tar"))
        with wds.TarWriter(names[-1]) as w:
            for s in train[i:i + shard_size]:
                w.write(s)
    val_path = os.path.join(folder, "val.tar")
    with wds.TarWriter(val_path) as w:
        for s in val:
            w.write(s)
    return {"train": names, "val": val_path, "dim": dim}


def write_learnable_clip_shards(folder: str, n_train: int = 192, n_val: int = 48, shard_size: int = 48,
                                dim: int = 32, seed: int = 0, template: str = "a {colour} {shape}") -> dict:
    """ThinkDiff-CLIP shards whose caption suffix is predictable from the image tokens (and only from them).

    Each sample: an easy-vqa image's caption (cleaned, default "a {colour} {shape}") and 65 "image tokens"
    [65, dim] = embedding(colour) + embedding(shape) + 0.3 * embedding(token position) + noise. Whatever
    word split is drawn, the suffix names the colour and/or the shape, which only the image tokens tell."""
    from train.data import clean_caption, encode_image_sample
    rows = easy_vqa_captions()
    g = torch.Generator().manual_seed(seed)
    colours = sorted({c for _, c, _ in rows})
    shapes = sorted({s for _, _, s in rows})
    emb = {name: torch.randn(dim, generator=g) for name in colours + shapes}
    pos = torch.randn(65, dim, generator=g)
    samples = []
    for image_id, colour, shape in rows[:n_train + n_val]:
        tokens = emb[colour] + emb[shape] + 0.3 * pos + 0.1 * torch.randn(65, dim, generator=g)
        samples.append(encode_image_sample(f"evqa{image_id}", clean_caption(template.format(colour=colour, shape=shape)),
                                           tokens, {"colour": colour, "shape": shape}, torch.float32))
    return _write_shards(folder, samples, n_train, shard_size, dim)


def run(args: list[str], timeout: float = 300, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    return subprocess.run(args, cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout, **kw)


def log_records(out: str, event: str = "step") -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as fh:
        return [r for r in map(json.loads, fh) if r.get("event") == event]
