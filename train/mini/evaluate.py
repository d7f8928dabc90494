"""Evaluate ThinkDiff-mini: generate held-out cases and judge each image with the real-image judge.

    python -m train mini eval [--out .cache/mini-full] [--size full|quick] [--results bench/RESULTS.md --grid docs/mini_grid.png]

Conditions (each image judged for colour and shape; chance is 1/8 and 1/3):
  caption     the true caption through the tiny T5 *encoder* (the image model's own input: upper bound)
  aligned     a held-out image -> the VLM captions it (the image_text preset, one of the 16 instructions) ->
              the aligner -> the image model, per aligner seed
  empty       the T5 encoding of "" (chance)
  in_context  two shots (word + image) sharing an attribute and a query word -> the VLM reasons ->
              the aligner -> the image model; judged against the case's answer
The VLM and the conditioning go through the same calls the nodes make (thinkdiff_core.prompts.build_prompt,
VLMEncoder.generate, thinkdiff_core.conditioning.build_flux_conditioning), and the sampler is ComfyUI's
(euler, simple, SD3 shift, ConditioningZeroOut negative; tests/mini checks it against the real server).
"""
from __future__ import annotations

import json
import os
import random
import time

import torch

from thinkdiff_core.conditioning import ThinkDiffEmbeds, build_flux_conditioning
from thinkdiff_core.prompts import TRAINING_INSTRUCTIONS, build_prompt

from . import data
from .build import ABLATIONS, IMAGE_SIZE, SIZES, Paths, load_dit, load_judge, load_vae
from .image import LATENT_CHANNELS, POOLED_DIM, comfy_noise, sample
from .judge import score

STEPS, CFG = 20, 3.0     # what the mini workflow's KSampler uses
VLM_SETTINGS = dict(max_new_tokens=24, stop_at_eos=True, temperature=0.6, top_p=0.9)


def _pil(item):
    return data.load_image(item.path)


def caption_cases(n: int, seed: int = 1):
    rng = random.Random(seed)
    items = rng.sample(data.load("test"), n)
    return [(it, rng.choice(TRAINING_INSTRUCTIONS)) for it in items]


def in_context_cases(n: int, seed: int = 2):
    rng = random.Random(seed)
    groups = data.by_key(data.load("test"))
    return [data.in_context_case(rng, groups, shots=2) for _ in range(n)]


def vlm_embeds(vlm, prompt, seed: int) -> ThinkDiffEmbeds:
    out = vlm.generate(prompt, seed=seed, **VLM_SETTINGS)
    return ThinkDiffEmbeds.from_vlm_output(out, source=vlm.name, preset=prompt.preset,
                                           num_images=len(prompt.images))


def parse_text(text: str) -> tuple[int, int]:
    """The (colour, shape) indices a generated text names (-1 where none)."""
    words = text.lower().replace(".", " ").replace(",", " ").split()
    c = next((data.COLOURS.index(w) for w in words if w in data.COLOURS), -1)
    s = next((data.SHAPES.index(w) for w in words if w in data.SHAPES), -1)
    return c, s


@torch.no_grad()
def generate(dit, vae, contexts: list[torch.Tensor], seeds: list[int]) -> torch.Tensor:
    """Images [N, 3, IMAGE_SIZE, IMAGE_SIZE] from contexts [1, T_i, C]; cases with equal T are batched (no padding, so
    each is what a batch-1 ComfyUI run computes)."""
    latent = IMAGE_SIZE // 8
    out: list = [None] * len(contexts)
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(contexts):
        by_len.setdefault(c.shape[1], []).append(i)
    for idx in by_len.values():
        for k in range(0, len(idx), 64):
            part = idx[k:k + 64]
            ctx = torch.cat([contexts[i] for i in part])
            noise = torch.cat([comfy_noise(seeds[i], (1, LATENT_CHANNELS, latent, latent)) for i in part])
            imgs = vae.decode(sample(dit, ctx, noise, steps=STEPS, cfg=CFG)).clamp(0, 1)
            for j, i in enumerate(part):
                out[i] = imgs[j]
    return torch.stack(out)


def load_aligner(path: str):
    from thinkdiff_core.checkpoint import load_aligner as load
    return load(path)[0]


def conditioning(aligner, embeds: ThinkDiffEmbeds) -> torch.Tensor:
    """What the ThinkDiff Conditioning node gives the sampler (no CLIP connected: zero pooled vector)."""
    return build_flux_conditioning(aligner, embeds, empty_prompt_pooled=torch.zeros(1, POOLED_DIM)).tokens


def evaluate(out: str, size: str = "full", log=print) -> dict:
    from transformers import AutoTokenizer, T5EncoderModel

    from thinkdiff_core.vlm import VLMEncoder
    sizes = SIZES[size]
    p = Paths(out)
    t0 = time.time()
    judge, vae, dit = load_judge(p.judge), load_vae(p.vae), load_dit(p.dit)
    tok = AutoTokenizer.from_pretrained(p.t5, local_files_only=True)
    t5 = T5EncoderModel.from_pretrained(p.t5, local_files_only=True).eval()
    vlm = VLMEncoder.from_pretrained(p.vlm)
    n = sizes.eval_cases
    cap_cases, ic_cases = caption_cases(n), in_context_cases(n)
    cap_target = torch.tensor([it.label for it, _ in cap_cases])
    ic_target = torch.tensor([[data.COLOURS.index(c.colour), data.SHAPES.index(c.shape)] for c in ic_cases])
    seeds = list(range(n))
    results: dict = {"size": size, "n": n, "steps": STEPS, "cfg": CFG, "conditions": {}}

    def judged(name: str, contexts, target, image_model=None) -> dict:
        imgs = generate(image_model or dit, vae, contexts, seeds)
        r = score(judge.predict(imgs), target)
        results["conditions"][name] = r
        log(f"  {name}: colour {r['colour']:.3f} shape {r['shape']:.3f} both {r['both']:.3f} (n={r['n']})")
        return {"images": imgs, **r}

    with torch.no_grad():
        real = data.image_tensor([it for it, _ in cap_cases], IMAGE_SIZE)
        r = score(judge.predict(vae.decode(vae.encode(real))), cap_target)
        results["conditions"]["reconstruction"] = r
        log(f"  autoencoder reconstructions: colour {r['colour']:.3f} shape {r['shape']:.3f} both {r['both']:.3f}")
        enc = lambda text: t5(**tok([text], return_tensors="pt")).last_hidden_state   # noqa: E731
        log("caption -> T5 encoder (upper bound)")
        cap_ctx = [enc(data.caption(it.colour, it.shape)) for it, _ in cap_cases]
        judged("caption", cap_ctx, cap_target)
        judged("empty", [enc("") for _ in cap_cases], cap_target)

    log(f"VLM: captions of {n} held-out images and {n} in-context cases")
    cap_embeds = [vlm_embeds(vlm, build_prompt("image_text", [_pil(it)], instr), seed=i)
                  for i, (it, instr) in enumerate(cap_cases)]
    ic_embeds = [vlm_embeds(vlm, build_prompt("in_context", [_pil(s) for s in case.shots], case.text), seed=i)
                 for i, case in enumerate(ic_cases)]
    text_cap = score(torch.tensor([parse_text(e.text) for e in cap_embeds]), cap_target)
    text_ic = score(torch.tensor([parse_text(e.text) for e in ic_embeds]), ic_target)
    results["vlm_text"] = {"caption": text_cap, "in_context": text_ic}
    log(f"  VLM text right: captions {text_cap['both']:.3f}, in-context answers {text_ic['both']:.3f}")

    grid_rows = []
    for seed in sizes.seeds:
        aligner = load_aligner(p.aligner("aligner", seed))
        judged(f"aligned/seed{seed}", [conditioning(aligner, e) for e in cap_embeds], cap_target)
        r = judged(f"in_context/seed{seed}", [conditioning(aligner, e) for e in ic_embeds], ic_target)
        if not grid_rows:
            grid_rows = [(ic_cases[i], ic_embeds[i].text, r["images"][i]) for i in range(8)]
    for name in ("aligned", "in_context"):
        runs = [results["conditions"][f"{name}/seed{s}"] for s in sizes.seeds]
        results["conditions"][name] = {k: sum(r[k] for r in runs) / len(runs) for k in ("colour", "shape", "both")}
        results["conditions"][name].update(n=runs[0]["n"], seeds=len(runs),
                                           both_min=min(r["both"] for r in runs), both_max=max(r["both"] for r in runs))
    if sizes.ablations:
        results["ablations"] = {}
        for name in ABLATIONS:
            path = p.aligner(name, 0)
            if os.path.exists(path):
                a = load_aligner(path)
                results["ablations"][name] = {
                    "aligned": judged(f"ablation {name}/aligned", [conditioning(a, e) for e in cap_embeds], cap_target),
                    "in_context": judged(f"ablation {name}/in_context", [conditioning(a, e) for e in ic_embeds],
                                         ic_target)}
                for v in results["ablations"][name].values():
                    v.pop("images")
        if os.path.exists(p.dit_plain):   # the image model trained without conditioning augmentation
            plain, aligner = load_dit(p.dit_plain), load_aligner(p.aligner("aligner", 0))
            r = {"caption": judged("no cond. aug./caption", cap_ctx, cap_target, plain),
                 "aligned": judged("no cond. aug./aligned", [conditioning(aligner, e) for e in cap_embeds],
                                   cap_target, plain),
                 "in_context": judged("no cond. aug./in_context", [conditioning(aligner, e) for e in ic_embeds],
                                      ic_target, plain)}
            for v in r.values():
                v.pop("images")
            results["ablations"]["image model without conditioning augmentation"] = r
    results["seconds"] = round(time.time() - t0, 1)
    results["grid"] = [{"words": c.text, "vlm_text": t, "answer": c.answer} for c, t, _ in grid_rows]
    with open(os.path.join(p.out, "eval.json"), "w") as f:
        json.dump(results, f, indent=1)
    results["_grid_rows"] = grid_rows
    return results


def write_grid(rows, path: str, cell: int = 96) -> None:
    """Input shots, the words, the VLM's text and the generated image, one case per row."""
    from PIL import Image, ImageDraw
    text_w = 330
    W, H = cell * 3 + text_w + 20, cell * len(rows)
    grid = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(grid)
    for r, (case, text, img) in enumerate(rows):
        y = r * cell
        for k, shot in enumerate(case.shots):
            grid.paste(_pil(shot).resize((cell - 8, cell - 8)), (k * cell + 4, y + 4))
        draw.text((2 * cell + 8, y + 8), f"words: {case.text}", fill="black")
        draw.text((2 * cell + 8, y + 26), "VLM: " + " ".join(text.split())[:52], fill="black")
        draw.text((2 * cell + 8, y + 44), f"asked: {case.colour} {case.shape}", fill="gray")
        arr = (img.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
        grid.paste(Image.fromarray(arr).resize((cell - 8, cell - 8), Image.NEAREST), (W - cell + 4, y + 4))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
