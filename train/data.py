"""Data: image-caption sources for `precompute`, feature shards for `fit`, and the random-split batches.

Two kinds of feature shards, one per ThinkDiff variant; `fit` trains the variant its shards hold.

ThinkDiff-LVLM shards (webdataset tar, one sample = the files sharing a key):
  KEY.json              {"key", "prompt" (instruction), "generated_text", "output_token_ids" (Qwen ids,
                         incl. the EOS id when generation stopped there), "input_prompt", "n_tokens",
                         "source" (caption / metadata of the input sample, if any)}
  KEY.output_embed.pth  torch.save of the [N, D] final-norm states, row k produced token k (docs/method.md §1.1);
                        read with torch.load(weights_only=True). The official shards' name
                        ``model.norm.output_embed.pth`` is read too.
  KEY.jpg / KEY.png     the source image (only with --store-image)

ThinkDiff-CLIP shards (docs/method.md §3): the frozen vision tower's output is precomputed (no augmentation in
the official pipeline, so this equals running it in every step):
  KEY.json              {"key", "caption" (cleaned as BLIP's caption processor does), "source"}
  KEY.image_embed.pth   torch.save of the [65, D] tokens of the image (CLS + the 8x8 grid, docs/method.md §1.2)

Next to the shards, precompute.json records their provenance (read and written only by
`write_provenance` / `read_provenance` below): the VLM folder (fit finds the Qwen tokenizer there),
the VLM's name (export stores it), its hidden size and the precompute config.
"""
from __future__ import annotations

import glob
import io
import json
import os
import random
import re
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
FEATURE_KEYS = ("output_embed.pth", "model.norm.output_embed.pth")
IMAGE_FEATURE_KEY = "image_embed.pth"          # ThinkDiff-CLIP shards
LVLM, CLIP = "lvlm", "clip"


# ----------------------------------------------------------------------------------------------------
# shard lists and tar reading

def expand_shards(spec: str, what: str = "data") -> list[str]:
    """A folder (its *.tar, sorted), a .tar file, a glob, a brace pattern, or a comma-separated list."""
    from braceexpand import braceexpand
    paths: list[str] = []
    for part in [s.strip() for s in spec.split(",") if s.strip()]:
        if os.path.isdir(part):
            found = sorted(glob.glob(os.path.join(part, "*.tar")))
            if not found:
                raise FileNotFoundError(f"{what}: no .tar shards in folder {part}")
            paths += found
            continue
        for p in braceexpand(part):
            matches = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
            if not matches or not all(os.path.isfile(m) for m in matches):
                raise FileNotFoundError(f"{what}: shard not found: {p}")
            paths += matches
    if not paths:
        raise FileNotFoundError(f"{what}: nothing found for {spec!r}")
    return paths


def split_key(name: str) -> tuple[str, str]:
    """webdataset convention: 'dir/abc.output_embed.pth' -> ('dir/abc', 'output_embed.pth')."""
    d, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (os.path.join(d, stem) if d else stem), ext


def iter_tar(path: str) -> Iterator[dict]:
    """Samples of a webdataset tar in file order: {'__key__': key, ext: bytes, ...}."""
    current: dict | None = None
    with tarfile.open(path, "r|*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, ext = split_key(m.name)
            if not ext or os.path.basename(key).startswith("."):
                continue
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[ext.lower()] = tf.extractfile(m).read()
    if current is not None:
        yield current


# ----------------------------------------------------------------------------------------------------
# precompute.json: provenance of a feature folder

PROVENANCE_FILE = "precompute.json"


@dataclass
class Provenance:
    vlm: str                 # absolute path of the VLM folder precompute read
    vlm_name: str            # its name (e.g. Qwen2-VL-7B-Instruct), stored in exported aligners
    hidden_size: int         # width of the stored states
    config: dict             # the PrecomputeConfig
    path: str = ""           # the precompute.json it was read from
    variant: str = LVLM      # lvlm (VLM generations) or clip (vision tokens + captions); vlm is then the vision encoder


def provenance_file(data: str) -> str:
    """Where the precompute.json of a --data value (folder, shard, glob, brace pattern or list) is:
    next to its first shard."""
    first = data.split(",")[0].strip()
    return os.path.join(first if os.path.isdir(first) else os.path.dirname(first), PROVENANCE_FILE)


def write_provenance(folder: str, p: Provenance) -> str:
    """Write folder/precompute.json atomically (temp file + rename)."""
    final, tmp = os.path.join(folder, PROVENANCE_FILE), os.path.join(folder, f".{PROVENANCE_FILE}.tmp")
    with open(tmp, "w") as fh:
        json.dump({"variant": p.variant, "vlm": p.vlm, "vlm_name": p.vlm_name, "hidden_size": p.hidden_size,
                   "config": p.config}, fh, indent=2)
    os.replace(tmp, final)
    return final


def read_provenance(data: str) -> Provenance | None:
    """The provenance of a --data value's shards, or None when there is no precompute.json."""
    path = provenance_file(data) if data.strip() else ""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as fh:
        raw = json.load(fh)
    return Provenance(vlm=raw.get("vlm", ""), vlm_name=raw.get("vlm_name", ""),
                      hidden_size=int(raw.get("hidden_size", 0)), config=raw.get("config", {}), path=path,
                      variant=raw.get("variant", LVLM))


# ----------------------------------------------------------------------------------------------------
# image-caption sources (precompute)

@dataclass
class Unit:
    """One unit of precompute work = one output shard."""
    name: str                                   # output file name, e.g. 000003.tar
    count: Callable[[], int]                    # number of samples (for the progress bar)
    samples: Callable[[], Iterator[tuple[str, bytes, str, dict]]]   # (key, image bytes, image ext, source meta)


def _folder_units(folder: str, shard_size: int) -> list[Unit]:
    files = sorted(os.path.relpath(os.path.join(r, n), folder) for r, _, ns in os.walk(folder) for n in ns
                   if n.rsplit(".", 1)[-1].lower() in IMAGE_EXTS and not n.startswith("."))
    if not files:
        raise FileNotFoundError(f"data: no images ({', '.join(IMAGE_EXTS)}) in folder {folder}")

    def make(chunk: list[str]):
        def samples():
            for rel in chunk:
                path = os.path.join(folder, rel)
                stem = os.path.splitext(path)[0]
                meta = {"file": rel}
                if os.path.isfile(stem + ".txt"):
                    with open(stem + ".txt", encoding="utf-8") as fh:
                        meta["caption"] = fh.read().strip()
                with open(path, "rb") as fh:
                    data = fh.read()
                # a webdataset key may not contain dots: they separate the key from the extension
                key = os.path.splitext(rel)[0].replace(os.sep, "__").replace(".", "_")
                yield key, data, rel.rsplit(".", 1)[-1].lower(), meta
        return samples

    chunks = [files[i:i + shard_size] for i in range(0, len(files), shard_size)]
    return [Unit(f"{i:06d}.tar", (lambda c=c: len(c)), make(c)) for i, c in enumerate(chunks)]


def _tar_units(tars: list[str]) -> list[Unit]:
    def make(path: str):
        def samples():
            for s in iter_tar(path):
                ext = next((e for e in IMAGE_EXTS if e in s), None)
                if ext is None:
                    continue
                meta = {}
                if "txt" in s:
                    meta["caption"] = s["txt"].decode("utf-8", "replace").strip()
                if "json" in s:
                    try:
                        meta["json"] = json.loads(s["json"])
                    except ValueError:
                        pass
                yield s["__key__"].replace("/", "__").replace(".", "_"), s[ext], ext, meta
        return samples

    def count(path: str) -> int:   # headers only: random-access mode seeks over the file data
        with tarfile.open(path, "r:*") as tf:
            return len({split_key(m.name)[0] for m in tf.getmembers()
                        if m.isfile() and split_key(m.name)[1].lower() in IMAGE_EXTS})

    names = [os.path.basename(t) for t in tars]
    if len(set(names)) != len(names):   # tars from several folders with clashing names
        names = [f"{i:06d}.tar" for i in range(len(tars))]
    return [Unit(n, (lambda t=t: count(t)), make(t)) for n, t in zip(names, tars)]


def image_units(spec: str, shard_size: int) -> list[Unit]:
    if os.path.isdir(spec) and not glob.glob(os.path.join(spec, "*.tar")):
        return _folder_units(spec, shard_size)
    if not os.path.exists(spec) and not any(c in spec for c in "*?[{,"):
        raise FileNotFoundError(f"data: image source not found: {spec}")
    return _tar_units(expand_shards(spec, "data"))


# ----------------------------------------------------------------------------------------------------
# feature shards (fit)

def encode_sample(key: str, record: dict, hidden: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> dict:
    """One feature-shard sample for webdataset.TarWriter: record must hold output_token_ids (N ids)
    and hidden is the [N, D] tensor of their final-norm states."""
    if hidden.ndim != 2 or hidden.shape[0] != len(record["output_token_ids"]):
        raise ValueError(f"{key}: {tuple(hidden.shape)} states for {len(record['output_token_ids'])} token ids")
    buf = io.BytesIO()
    torch.save(hidden.detach().to("cpu", dtype).contiguous(), buf)
    return {"__key__": key, "json": json.dumps({"key": key, **record}).encode(), "output_embed.pth": buf.getvalue()}


def encode_image_sample(key: str, caption: str, tokens: torch.Tensor, source: dict | None = None,
                        dtype: torch.dtype = torch.bfloat16) -> dict:
    """One ThinkDiff-CLIP shard sample: the image's [65, D] vision tokens and its cleaned caption."""
    if tokens.ndim != 2:
        raise ValueError(f"{key}: expected [tokens, D] vision tokens, got {tuple(tokens.shape)}")
    buf = io.BytesIO()
    torch.save(tokens.detach().to("cpu", dtype).contiguous(), buf)
    return {"__key__": key, "json": json.dumps({"key": key, "caption": caption, "source": source or {}}).encode(),
            IMAGE_FEATURE_KEY: buf.getvalue()}


@dataclass
class Sample:
    key: str
    ids: list[int]          # Qwen token ids of the generation (LVLM); [] for a CLIP sample
    feat: bytes             # torch.save'd [N, D] tensor (decoded lazily: shards are read whole)
    caption: str | None = None   # ThinkDiff-CLIP: the cleaned caption (feat holds the image's tokens)

    @property
    def variant(self) -> str:
        return CLIP if self.caption is not None else LVLM

    def features(self) -> torch.Tensor:
        t = torch.load(io.BytesIO(self.feat), map_location="cpu", weights_only=True)
        if self.caption is None and (t.ndim != 2 or t.shape[0] != len(self.ids)):
            raise ValueError(f"sample {self.key}: features {tuple(t.shape)} do not match {len(self.ids)} token ids")
        return t

    def usable(self) -> bool:
        """LVLM: at least 2 tokens (docs/method.md §8.6); CLIP: a non-empty caption."""
        return bool(self.caption.split(" ")[0]) if self.caption is not None else len(self.ids) >= 2

    def draw(self, max_split: int, seed: str) -> int:
        """The random split point: LVLM rows (draw_split), CLIP caption words (draw_word_split)."""
        if self.caption is not None:
            return draw_word_split(len(self.caption.split(" ")), seed)
        return draw_split(len(self.ids), max_split, seed)


def read_feature_shard(path: str) -> list[Sample]:
    out = []
    for s in iter_tar(path):
        if IMAGE_FEATURE_KEY in s and "json" in s:
            meta = json.loads(s["json"])
            out.append(Sample(s["__key__"], [], s[IMAGE_FEATURE_KEY], caption=str(meta.get("caption", ""))))
            continue
        feat = next((s[k] for k in FEATURE_KEYS if k in s), None)
        if feat is None or "json" not in s:
            raise ValueError(f"{path}: sample {s['__key__']} has no json / output_embed.pth / {IMAGE_FEATURE_KEY} "
                             f"(files: {', '.join(k for k in s if k != '__key__')}); not a feature shard?")
        meta = json.loads(s["json"])
        out.append(Sample(s["__key__"], [int(i) for i in meta["output_token_ids"]], feat))
    return out


def feature_stats(shards: list[str], max_rows: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (fp32) of the feature rows of `shards`, read in order (so every process
    and every resume computes the same numbers); a small floor keeps near-constant dimensions finite."""
    total, total_sq, n = None, None, 0
    for path in shards:
        for s in read_feature_shard(path):
            f = s.features().float()
            f = f.reshape(-1, f.shape[-1])
            total = f.sum(0) if total is None else total + f.sum(0)
            total_sq = f.pow(2).sum(0) if total_sq is None else total_sq + f.pow(2).sum(0)
            n += f.shape[0]
            if n >= max_rows:
                break
        if n >= max_rows:
            break
    if not n:
        raise ValueError("no feature rows to standardise with")
    mean = total / n
    var = (total_sq / n - mean.pow(2)).clamp_min(0)
    return mean, (var + 1e-4 * var.mean() + 1e-12).sqrt()


def feature_dim(path: str) -> int:
    for s in read_feature_shard(path):
        return int(s.features().shape[-1])
    raise ValueError(f"{path}: empty feature shard")


def shard_variant(path: str) -> str:
    """lvlm or clip: what the shard's first sample holds."""
    for s in read_feature_shard(path):
        return s.variant
    raise ValueError(f"{path}: empty feature shard")


def draw_split(n: int, max_split: int, seed: str) -> int:
    """s uniform in 1..min(N-1, max_split) (docs/method.md §2.3); needs N >= 2 (docs/method.md §8.6: N = 1 is skipped)."""
    return random.Random(seed).randint(1, min(n - 1, max_split))


def draw_word_split(words: int, seed: str) -> int:
    """ThinkDiff-CLIP (docs/method.md §3): k uniform in 1..W-1 caption words go to the prefix; W <= 1 gives
    k = 0 (empty prefix, the whole caption is the suffix)."""
    return 0 if words <= 1 else random.Random(seed).randint(1, words - 1)


_CAPTION_PUNCT = re.compile(r"""[.!"()*#:;~]""")


def clean_caption(caption: str, max_words: int = 50) -> str:
    """BLIP's caption processor (docs/method.md §3): lower-case; each of . ! " ( ) * # : ; ~ becomes a space;
    whitespace collapsed; stripped; at most max_words words."""
    text = re.sub(r"\s{2,}", " ", _CAPTION_PUNCT.sub(" ", caption.lower())).rstrip("\n").strip(" ")
    return " ".join(text.split(" ")[:max_words])


class TrainStream:
    """An endless, exactly resumable stream of (sample, split) for one process.

    Process `rank` owns shards[rank::world]. Epoch e visits them in a seeded order and each shard's
    samples in a seeded order; the split point of a sample depends only on (seed, epoch, shard, key).
    The position (epoch, shard index, sample index) after every sample is reported, so a checkpoint
    can store it and a resumed run skips straight to it. Samples with fewer than 2 tokens (CLIP: an empty
    caption) are skipped. The split is a row count (LVLM) or a word count (CLIP), see Sample.draw.
    """

    def __init__(self, shards: list[str], seed: int, rank: int, max_split: int,
                 position: tuple[int, int, int] = (0, 0, 0)):
        self.shards, self.seed, self.rank, self.max_split = shards, seed, rank, max_split
        self.position = tuple(position)
        self.skipped = 0

    def __iter__(self):
        epoch, si, sj = self.position
        usable = True
        while True:
            if (si, sj) == (0, 0):
                if not usable:
                    raise ValueError(f"no usable sample in {len(self.shards)} shard(s) ({self.shards[0]}, ...): every "
                                     f"generation has fewer than 2 tokens, so no prefix/suffix split exists; "
                                     f"precompute with a larger --max-new-tokens")
                usable = False
            order = list(self.shards)
            random.Random(f"{self.seed}:{epoch}:{self.rank}").shuffle(order)
            for i in range(si, len(order)):
                name = os.path.basename(order[i])
                samples = read_feature_shard(order[i])
                idx = list(range(len(samples)))
                random.Random(f"{self.seed}:{epoch}:{name}").shuffle(idx)
                for j in range(sj, len(idx)):
                    s = samples[idx[j]]
                    self.position = (epoch, i, j + 1)
                    if not s.usable():
                        self.skipped += 1
                        continue
                    usable = True
                    yield s, s.draw(self.max_split, f"{self.seed}:{epoch}:{name}:{s.key}")
                sj = 0
            si, epoch = 0, epoch + 1


def batches(stream: TrainStream, batch_size: int):
    """Groups of batch_size (sample, split) pairs, each with the stream position after its last sample."""
    group = []
    for item in stream:
        group.append(item)
        if len(group) == batch_size:
            yield group, stream.position
            group = []


def val_items(shards: list[str], seed: int, rank: int, world: int, max_samples: int, max_split: int):
    """Held-out (sample, split) pairs for this process: every world-th of the first max_samples usable
    samples; the splits are fixed (seeded by key) so every validation pass sees the same inputs."""
    items = []
    for path in shards:
        for s in read_feature_shard(path):
            if not s.usable():
                continue
            if len(items) >= max_samples:
                break
            items.append((s, s.draw(max_split, f"val:{seed}:{s.key}")))
    return items[rank::world]


def collate(items: list[tuple[Sample, int]], qwen_tok, t5_tok, max_label_len: int) -> dict:
    """Spec 2.3/2.4: prefix rows [0, s) padded with zeros + mask; suffix ids [s, N) decoded with the
    Qwen tokenizer (special tokens skipped), re-tokenised with T5 (<= max_label_len, with </s>);
    labels = T5 ids with pad -> -100; decoder inputs = labels shifted right with start id 0."""
    prefixes = [s.features()[:k] for s, k in items]
    texts = qwen_tok.batch_decode([s.ids[k:] for s, k in items], skip_special_tokens=True)
    enc = t5_tok(texts, padding="longest", truncation=True, max_length=max_label_len,
                 add_special_tokens=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    dec_in = torch.zeros_like(enc["input_ids"])                 # T5's decoder start id is 0 (= pad)
    dec_in[:, 1:] = enc["input_ids"][:, :-1].masked_fill(enc["attention_mask"][:, :-1] == 0, 0)
    smax = max(p.shape[0] for p in prefixes)
    prefix = torch.zeros(len(items), smax, prefixes[0].shape[1], dtype=prefixes[0].dtype)
    mask = torch.zeros(len(items), smax, dtype=torch.long)
    for b, p in enumerate(prefixes):
        prefix[b, :p.shape[0]] = p
        mask[b, :p.shape[0]] = 1
    # the prefix rows' own text in T5 tokens: only the optional encoder-side term (fit --encoder-term) reads it
    pre = t5_tok(qwen_tok.batch_decode([s.ids[:k] for s, k in items], skip_special_tokens=True), padding="longest",
                 truncation=True, max_length=max_label_len, add_special_tokens=True, return_tensors="pt")
    return {"prefix": prefix, "prefix_mask": mask, "labels": labels, "decoder_input_ids": dec_in,
            "decoder_attention_mask": enc["attention_mask"], "texts": texts,
            "prefix_text_ids": pre["input_ids"], "prefix_text_mask": pre["attention_mask"]}


def collate_clip(items: list[tuple[Sample, int]], t5_tok, max_text_len: int) -> dict:
    """ThinkDiff-CLIP (docs/method.md §3): the images' [65, D] tokens ("prefix", all real rows); the first k
    caption words -> T5 tokens (<= max_text_len, with </s>) for the frozen T5 encoder; the rest -> labels
    (<= max_text_len, with </s>, pad -> -100) and decoder inputs (shifted right, start id 0). The T5 memory
    is [aligned image tokens ; encoded prefix] with the mask [ones ; prefix mask]."""
    feats = [s.features() for s, _ in items]
    words = [s.caption.split(" ") for s, _ in items]
    prefixes = [" ".join(w[:k]) for w, (_, k) in zip(words, items)]
    suffixes = [" ".join(w[k:]) for w, (_, k) in zip(words, items)]
    pre = t5_tok(prefixes, padding="longest", truncation=True, max_length=max_text_len, add_special_tokens=True,
                 return_tensors="pt")
    enc = t5_tok(suffixes, padding="longest", truncation=True, max_length=max_text_len, add_special_tokens=True,
                 return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    dec_in = torch.zeros_like(enc["input_ids"])
    dec_in[:, 1:] = enc["input_ids"][:, :-1].masked_fill(enc["attention_mask"][:, :-1] == 0, 0)
    prefix = torch.stack(feats)
    return {"prefix": prefix, "prefix_mask": torch.ones(prefix.shape[:2], dtype=torch.long),
            "text_ids": pre["input_ids"], "text_mask": pre["attention_mask"], "labels": labels,
            "decoder_input_ids": dec_in, "decoder_attention_mask": enc["attention_mask"], "texts": suffixes,
            "prefix_texts": prefixes}
