"""precompute: run the VLM over images and store the states of the tokens it generates (docs/method.md §2.2).

For every image: draw one of the 16 captioning instructions, build the chat (system prompt, then the
image, then the instruction), sample up to 256 tokens (T 0.6, top-p 0.9, natural EOS) and store the
generated ids, the text and the [N, D] final-norm states (row k produced token k) in webdataset
shards (format in train/data.py).

ThinkDiff-CLIP (--variant clip, docs/method.md §3): for every image with a caption, store the frozen BLIP-2
vision tower's 65 tokens (CLS + 8x8 grid) and the caption cleaned as BLIP's caption processor does;
images without a caption are skipped (counted). `fit` then trains the CLIP aligner on these shards.
    python -m train precompute --variant clip --vision blip2-flan-t5-xxl --data cc3m/ --out clip_feats/

Resumable: each output shard is written to a temp name and renamed when complete, and shards that
exist are skipped. Shardable: with RANK/WORLD_SIZE set (torchrun, accelerate launch) process r
takes every world-th output shard, e.g.
    torchrun --nproc_per_node 8 -m train precompute --vlm Qwen2-VL-7B-Instruct --data cc3m/ --out feats/
"""
from __future__ import annotations

import io
import os
import random
import time

import torch

from thinkdiff_core.dtypes import parse_dtype
from thinkdiff_core.prompts import TRAINING_INSTRUCTIONS, caption_prompt
from thinkdiff_core.vlm import VLMEncoder

from .config import PrecomputeConfig, require
from .data import CLIP, Provenance, clean_caption, encode_image_sample, encode_sample, image_units, write_provenance


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables torchrun / accelerate launch set."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def load_instructions(spec: str) -> tuple[str, ...]:
    if spec == "training":
        return TRAINING_INSTRUCTIONS
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"instructions: file not found: {spec} (or use 'training')")
    with open(spec, encoding="utf-8") as fh:
        lines = tuple(line.strip() for line in fh if line.strip())
    if not lines:
        raise ValueError(f"instructions: {spec} has no non-empty lines")
    return lines


def sample_plan(seed: int, key: str, instructions) -> tuple[str, int]:
    """The instruction and the sampling seed of one image depend only on (seed, key): a resumed or
    re-sharded run produces the same outputs."""
    rng = random.Random(f"{seed}:{key}")
    return rng.choice(instructions), rng.getrandbits(31)


def main(cfg: PrecomputeConfig) -> int:
    clip = cfg.variant == CLIP
    require(cfg, "vision" if clip else "vlm", "data", "out")
    feature_dtype = parse_dtype(cfg.feature_dtype)
    rank, world, local_rank = dist_env()
    instructions = () if clip else load_instructions(cfg.instructions)
    units = image_units(cfg.data, cfg.shard_size)
    os.makedirs(cfg.out, exist_ok=True)
    mine = units[rank::world]
    todo = [u for u in mine if not os.path.exists(os.path.join(cfg.out, u.name))]
    print(f"[precompute rank {rank}/{world}] {len(units)} shard(s) in all, {len(mine)} mine, "
          f"{len(mine) - len(todo)} already done, {len(todo)} to do", flush=True)
    if not todo:
        return 0

    device = cfg.device
    if device == "auto":
        device = f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    if clip:
        from thinkdiff_core.vision import VisionEncoder
        enc = VisionEncoder.from_pretrained(cfg.vision, dtype=cfg.model_dtype, device=device)
    else:
        enc = VLMEncoder.from_pretrained(cfg.vlm, dtype=cfg.model_dtype, device=device)
    if rank == 0:   # provenance, and lets `fit` find the VLM's tokenizer
        write_provenance(cfg.out, Provenance(vlm=os.path.abspath(cfg.vision if clip else cfg.vlm), vlm_name=enc.name,
                                             hidden_size=enc.hidden_size, config=vars(cfg), variant=cfg.variant))

    def lvlm_sample(key, image, meta):
        instruction, seed = sample_plan(cfg.seed, key, instructions)
        # docs/method.md §2.2: [image, instruction] in the plain chat template (no "Picture 1: ")
        o = enc.generate(caption_prompt(image, instruction), max_new_tokens=cfg.max_new_tokens,
                         stop_at_eos=cfg.stop_at_eos, do_sample=cfg.do_sample, temperature=cfg.temperature,
                         top_p=cfg.top_p, seed=seed, system=cfg.system or None,
                         max_pixels=cfg.max_pixels or None)
        record = {"prompt": instruction, "generated_text": o.text, "output_token_ids": o.token_ids.tolist(),
                  "n_tokens": int(o.token_ids.numel()), "input_prompt": o.prompt, "sampling_seed": seed,
                  "source": meta}
        return encode_sample(key, record, o.hidden, feature_dtype), record["n_tokens"]

    def clip_sample(key, image, meta):
        caption = clean_caption(meta.get("caption") or "")
        if not caption:
            return None, 0
        tokens = enc.encode([image]).tokens[0]
        return encode_image_sample(key, caption, tokens, meta, feature_dtype), int(tokens.shape[0])

    make_sample = clip_sample if clip else lvlm_sample
    import webdataset as wds
    from PIL import Image
    from tqdm import tqdm
    total = sum(u.count() for u in todo)
    bar = tqdm(total=total, unit="img", desc=f"precompute[{rank}]", dynamic_ncols=True, position=rank if world > 1 else 0)
    done, skipped, uncaptioned, tokens, t0 = 0, 0, 0, 0, time.time()
    for unit in todo:
        final = os.path.join(cfg.out, unit.name)
        tmp = os.path.join(cfg.out, f".{unit.name}.tmp")
        with open(tmp, "wb") as fh, wds.TarWriter(fh) as sink:
            for key, data, ext, meta in unit.samples():
                try:
                    image = Image.open(io.BytesIO(data)).convert("RGB")
                except Exception as e:  # broken web images are common in CC3M/LAION tars
                    skipped += 1
                    tqdm.write(f"[precompute] skipping {key}: unreadable image ({e.__class__.__name__})")
                    continue
                sample, n = make_sample(key, image, meta)
                if sample is None:
                    uncaptioned += 1
                    bar.update(1)
                    continue
                if cfg.store_image:
                    sample[ext] = data
                sink.write(sample)
                done, tokens = done + 1, tokens + n
                bar.update(1)
                bar.set_postfix(tok_per_img=f"{tokens / done:.1f}")
        os.replace(tmp, final)
    bar.close()
    print(f"[precompute rank {rank}] {done} image(s), {tokens} tokens, {skipped} unreadable"
          + (f", {uncaptioned} without a caption (skipped)" if clip else "")
          + f", {time.time() - t0:.1f}s", flush=True)
    return 0
