"""The CoBSAT run: generate every sample's image with ThinkDiff-LVLM and with the text-rewriter baseline, judge
each image with a local VLM (the benchmark's two questions and parsing), and tabulate as the paper does.

Methods:
  thinkdiff      ThinkDiff-LVLM through the diffusers entry point (thinkdiff_core.diffusers_pipeline.generate):
                 128 VLM tokens, EOS suppressed, aligned rows as FLUX's prompt embeddings, pooled CLIP-L of "".
  text_rewriter  the zero-training rival (official repo issues #3/#4): the same VLM, the same in-context prompt,
                 writes a prompt until it stops (EOS), and FLUX reads that text with its own CLIP-L and T5.

Files under --out (the benchmark's own results layout, so its evaluation script can read the images too):
  exps/<method>_image/shot_<s>/default/task_<id>/<i>_<theta>_<x_0_..._x_s>.jpg   the image
  exps/<method>_image/shot_<s>/default/task_<id>/<...>.json                      the VLM's text
  evals/<method>_image/shot_<s>/task_<id>/<...>.json                             the judge's replies and checks
  results.json                                                                   the table as JSON
A second run skips every image (and judgement) that is already there: the run is resumable.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

from . import cobsat

log = logging.getLogger("thinkdiff")

METHODS = ("thinkdiff", "text_rewriter")
METHOD_LABEL = {"thinkdiff": "ThinkDiff-LVLM", "text_rewriter": "Text rewriter"}


@dataclass
class Config:
    cobsat: str
    out: str
    flux: str
    vlm: str
    aligner: str
    judge: str | None = None                 # default: the --vlm folder
    shots: tuple = cobsat.SHOTS
    tasks: tuple = tuple(cobsat.PAPER_ORDER)
    max_samples: int | None = None           # default: all 1000
    methods: tuple = METHODS
    device: str = "auto"
    dtype: str = "auto"
    steps: int = 28
    guidance: float = 3.5
    size: int = 512
    seed: int = 42
    vlm_seed: int = 0
    vlm_new_tokens: int = 128                # ThinkDiff's VLM rows (the paper: exactly 128, EOS suppressed)
    max_pixels: int | None = None
    rewriter_max_new_tokens: int = 256
    judge_max_new_tokens: int = 512
    cpu_offload: bool = False
    extra: dict = field(default_factory=dict)

    def judge_dir(self) -> str:
        return self.judge or self.vlm


def _paths(cfg: Config, method: str, s: cobsat.Sample) -> tuple[str, str, str]:
    name = cobsat.safe_name(s.save_path)
    exp = os.path.join(cfg.out, "exps", f"{method}_image", f"shot_{s.shot}", "default", f"task_{s.task.id}")
    ev = os.path.join(cfg.out, "evals", f"{method}_image", f"shot_{s.shot}", f"task_{s.task.id}")
    return os.path.join(exp, name + ".jpg"), os.path.join(exp, name + ".json"), os.path.join(ev, name + ".json")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _save_image(image, path: str) -> None:
    """Atomically (a half-written file would be taken as finished by the next run)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.jpg"
    image.convert("RGB").save(tmp, quality=95)
    os.replace(tmp, path)


def check_flux_folder(path: str) -> None:
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(
            f"{path} is not a diffusers FLUX folder (no model_index.json). Give the whole diffusers folder of "
            f"FLUX.1-dev (black-forest-labs/FLUX.1-dev: model_index.json, transformer/, vae/, text_encoder/, "
            f"text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/)")


class _Generator:
    """Loads the VLM, the aligner and FLUX once, on first use."""

    def __init__(self, cfg: Config):
        import torch
        from diffusers import FluxPipeline
        from diffusers.utils import logging as dlog

        from ..checkpoint import load_aligner
        from ..dtypes import resolve_dtype
        from ..vlm import VLMEncoder
        dlog.set_verbosity_error()   # the CLIP "truncated to 77 tokens" warning would break the progress bar
        self.cfg, self.device = cfg, _device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, self.device)
        check_flux_folder(cfg.flux)
        self.vlm = VLMEncoder.from_pretrained(cfg.vlm, dtype=dtype, device=self.device)
        self.aligner, _ = load_aligner(cfg.aligner, device=self.device)
        self.pipe = FluxPipeline.from_pretrained(cfg.flux, dtype=dtype, local_files_only=True)
        if cfg.cpu_offload:
            self.pipe.enable_model_cpu_offload()
        else:
            self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)   # one bar for the whole run
        self.torch = torch

    def prompt(self, s: cobsat.Sample):
        from PIL import Image

        from ..prompts import build_prompt
        images = [Image.open(p).convert("RGB") for p in s.images]
        return build_prompt("in_context", images, ", ".join(s.words))

    def thinkdiff(self, s: cobsat.Sample):
        from ..diffusers_pipeline import lvlm_conditioning, run_flux, think
        out = think(self.vlm, prompt=self.prompt(s), seed=self.cfg.vlm_seed, max_pixels=self.cfg.max_pixels,
                    max_new_tokens=self.cfg.vlm_new_tokens)
        cond = lvlm_conditioning(self.pipe, self.aligner, out, source=self.vlm.name, preset="in_context",
                                 num_images=len(s.images), guidance=self.cfg.guidance)
        image = run_flux(self.pipe, cond, num_inference_steps=self.cfg.steps, height=self.cfg.size,
                         width=self.cfg.size, seed=self.cfg.seed)
        return image, out.text

    def text_rewriter(self, s: cobsat.Sample):
        from ..diffusers_pipeline import generate_from_text, think
        out = think(self.vlm, prompt=self.prompt(s), seed=self.cfg.vlm_seed, max_pixels=self.cfg.max_pixels,
                    stop_at_eos=True, max_new_tokens=self.cfg.rewriter_max_new_tokens)
        image = generate_from_text(self.pipe, out.text, guidance=self.cfg.guidance, num_inference_steps=self.cfg.steps,
                                   height=self.cfg.size, width=self.cfg.size, seed=self.cfg.seed)
        return image, out.text


class Judge:
    """A local Qwen2-VL-family model asked the benchmark's two questions per image, greedily (the benchmark's
    LLaVA judge ran at temperature 0, up to 512 new tokens), one image then the question."""

    def __init__(self, encoder, max_new_tokens: int = 512):
        self.encoder, self.max_new_tokens = encoder, max_new_tokens

    @property
    def name(self) -> str:
        return self.encoder.name

    def ask(self, image, question: str) -> str:
        from ..prompts import Prompt
        out = self.encoder.generate(Prompt([image, question], add_vision_id=False), do_sample=False, stop_at_eos=True,
                                    max_new_tokens=self.max_new_tokens)
        return out.text

    def judge(self, sample: cobsat.Sample, image_path: str) -> dict:
        from PIL import Image
        image = Image.open(image_path).convert("RGB")
        replies = {mode: self.ask(image, q) for mode, q in cobsat.questions(sample.task).items()}
        return {"response_detail": replies["detail"], "response_obj": replies["obj"],
                **cobsat.score(sample, replies)}


def _progress(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def run(cfg: Config) -> dict:
    """Generate, judge and tabulate; returns the results dict (also written to <out>/results.json)."""
    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    for t in cfg.tasks:
        if t not in cobsat.TASKS:
            raise ValueError(f"unknown task {t}; CoBSAT's tasks are 1..10")
    samples = [s for shot in cfg.shots for t in cfg.tasks
               for s in cobsat.build_samples(cfg.cobsat, t, shot, cfg.max_samples)]
    missing = sorted({p for s in samples for p in s.images if not os.path.isfile(p)})
    if missing:
        raise FileNotFoundError(f"{len(missing)} CoBSAT image(s) are missing, e.g. {missing[0]}: the folder is "
                                f"incomplete (unzip the benchmark's datasets.zip again)")
    t0 = time.time()
    stats = {"generated": 0, "skipped_generation": 0, "judged": 0, "skipped_judging": 0}

    # 1. images (resumable: an existing image is never regenerated)
    todo = [(m, s) for s in samples for m in cfg.methods if not os.path.isfile(_paths(cfg, m, s)[0])]
    stats["skipped_generation"] = len(samples) * len(cfg.methods) - len(todo)
    gen = None
    if todo:
        gen = _Generator(cfg)
        with _progress(len(todo), "generating") as bar:
            for m, s in todo:
                image, text = getattr(gen, m)(s)
                img_path, text_path, _ = _paths(cfg, m, s)
                _write_json(text_path, {"description": text, "text_inputs": s.text_inputs, "images": s.images,
                                        "method": m})
                _save_image(image, img_path)
                stats["generated"] += 1
                bar.update()

    # 2. judgements (resumable: kept while the judge and the image are unchanged)
    judge_name = os.path.basename(os.path.normpath(cfg.judge_dir()))

    def needs_judging(m, s):
        img, _, ev = _paths(cfg, m, s)
        if not os.path.isfile(img):
            return False
        if not os.path.isfile(ev) or os.path.getmtime(ev) < os.path.getmtime(img):
            return True
        with open(ev) as f:
            return json.load(f).get("judge") != judge_name

    todo = [(m, s) for s in samples for m in cfg.methods if needs_judging(m, s)]
    stats["skipped_judging"] = len(samples) * len(cfg.methods) - len(todo)
    if todo:
        if gen is not None and os.path.realpath(cfg.judge_dir()) == os.path.realpath(cfg.vlm):
            encoder = gen.vlm
        else:
            from ..dtypes import resolve_dtype
            from ..vlm import VLMEncoder
            device = _device(cfg.device)
            encoder = VLMEncoder.from_pretrained(cfg.judge_dir(), dtype=resolve_dtype(cfg.dtype, device), device=device)
        if gen is not None:   # FLUX is not needed any more: free its memory for the judge
            gen.pipe = None
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        judge = Judge(encoder, cfg.judge_max_new_tokens)
        with _progress(len(todo), "judging") as bar:
            for m, s in todo:
                img, _, ev = _paths(cfg, m, s)
                _write_json(ev, {"file_path": img, "judge": judge_name, **judge.judge(s, img)})
                stats["judged"] += 1
                bar.update()

    # 3. the table: accuracy per task = correct / samples (a missing image counts as wrong), mean over tasks
    acc: dict = {}
    for m in cfg.methods:
        for shot in cfg.shots:
            row = {}
            for t in cfg.tasks:
                rows = [s for s in samples if s.shot == shot and s.task.id == t]
                correct = 0
                for s in rows:
                    ev = _paths(cfg, m, s)[2]
                    if os.path.isfile(ev):
                        with open(ev) as f:
                            correct += bool(json.load(f)["correct"])
                row[cobsat.TASKS[t].short] = correct / len(rows) if rows else 0.0
            row["mean"] = sum(row.values()) / len(row) if row else 0.0
            acc.setdefault(m, {})[str(shot)] = row
    n = cfg.max_samples if cfg.max_samples is not None else cobsat.NUM_SAMPLES
    labels = []
    if cobsat.is_fixture(cfg.cobsat):
        labels.append("SYNTHETIC FIXTURE: flat-colour images in the CoBSAT layout, not the benchmark's data; "
                      "the numbers are meaningless")
    if n < cobsat.NUM_SAMPLES or set(cfg.tasks) != set(cobsat.TASKS):
        labels.append(f"PARTIAL RUN: {min(n, cobsat.NUM_SAMPLES)} of {cobsat.NUM_SAMPLES} samples per task, "
                      f"{len(cfg.tasks)} of 10 tasks: not comparable with the paper's table")
    if judge_name.lower().find("llava-v1.5-13b") < 0:
        labels.append(f"judge: {judge_name} (the benchmark's default judge is LLaVA-1.5-13B; numbers judged by "
                      f"another model are not directly comparable with the paper's)")
    result = {"benchmark": "CoBSAT", "metric": "accuracy (both judge answers correct)",
              "samples_per_task": min(n, cobsat.NUM_SAMPLES), "labels": labels,
              "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}, "judge": judge_name,
              "accuracy": acc, "paper_thinkdiff_lvlm": {
                  str(s): dict(zip([cobsat.TASKS[t].short for t in cobsat.PAPER_ORDER], v)) for s, v in
                  cobsat.PAPER_THINKDIFF.items()},
              "stats": stats, "seconds": round(time.time() - t0, 1)}
    _write_json(os.path.join(cfg.out, "results.json"), result)
    return result


def format_table(result: dict) -> str:
    """The paper's table layout: one block per shot setting, methods as rows, tasks in the paper's column
    order plus the mean, and the paper's ThinkDiff-LVLM row for reference."""
    tasks = [t for t in cobsat.PAPER_ORDER if t in result["config"]["tasks"]]
    heads = [cobsat.TASKS[t].short for t in tasks] + ["Avg"]
    lines = [f"! {label}" for label in result["labels"]]
    for shot in result["config"]["shots"]:
        lines.append(f"CoBSAT {shot}-shot accuracy ({result['samples_per_task']} samples per task, judge "
                     f"{result['judge']})")
        lines.append(f"{'Method':<26}" + "".join(f"{h:>7}" for h in heads))
        for m, per_shot in result["accuracy"].items():
            row = per_shot[str(shot)]
            vals = [row[cobsat.TASKS[t].short] for t in tasks] + [row["mean"]]
            lines.append(f"{METHOD_LABEL.get(m, m):<26}" + "".join(f"{v:>7.3f}" for v in vals))
        paper = result["paper_thinkdiff_lvlm"].get(str(shot))
        if paper:
            vals = [paper[cobsat.TASKS[t].short] for t in tasks]
            vals.append(sum(vals) / len(vals))
            lines.append(f"{'(paper) ThinkDiff-LVLM':<26}" + "".join(f"{v:>7.3f}" for v in vals))
        lines.append("")
    return "\n".join(lines)
