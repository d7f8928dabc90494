"""Build ThinkDiff-mini, top to bottom: every model trained here on easy-vqa, on a CPU.

    python -m train mini build [--out .cache/mini] [--size full|quick] [--jobs 2]

Stages (each skipped when its output exists, so an interrupted build continues where it stopped):
  1. judge        a CNN reading colour and shape, trained on real images only
  2. autoencoder  TAESD layout (ComfyUI's "Load VAE" detects it), 64x64 images <-> 16x8x8 latents
  3. t5           tiny flan-T5 layout + the real T5 tokenizer, autoencodes the captions
  4. image model  tiny SD3-layout MMDiT ("Load Diffusion Model" detects it), rectified flow on the
                  latents, conditioned ONLY on the tiny T5's encoder states of captions
  5. vlm          tiny Qwen2-VL + the real Qwen tokenizer: captions with the paper's 16 instructions and
                  answers the in-context prompt
  6. aligner      our own `python -m train precompute | fit | export` on the VLM's generated-token states
                  through the frozen tiny T5 *decoder*; it never sees the image model (one per seed and
                  per ablation)
The sizes are plain values in SIZES: `full` is bench/RESULTS.md's build; `quick` the quick start's and CI's.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace

import torch

from thinkdiff_core.release import MINI_CONTEXT_DIM

from . import data

IMAGE_SIZE = 64                  # easy-vqa's own size; latents 8x8 (the judge reads them at 32)
# what the stages' outputs depend on beyond the sizes: a build folder made with other values is refused
FORMAT = {"format": 8, "image_size": IMAGE_SIZE}   # 8: the quick autoencoder's batch 24 (7: encoder-side term 30;
# 6: channels-last autoencoder, threads fixed per stage; 5: captions "An image of a ..."; 4: depth-3 image model,
# frozen VLM vision)


@dataclass(frozen=True)
class Sizes:
    judge_steps: int = 800
    ae_steps: int = 2000
    ae_batch: int = 32               # quick 24: a quarter less time, the same ceiling (bench/RESULTS.md, 2026-12-03)
    t5_steps: int = 300
    t5_dim: int = MINI_CONTEXT_DIM    # the nodes accept an aligner of this output width (thinkdiff_core.release)
    dit_steps: int = 10000
    dit_depth: int = 3               # hidden 192 (ComfyUI reads SD3 as 64 x depth); depth 2 drew blobs: shape 56 %
    dit_batch: int = 64
    vlm_steps: int = 3000             # language training, vision tower frozen
    vlm_vision_steps: int = 4000      # vision-tower warm-up on the labels before the language training
    vlm_hidden: int = 96
    vlm_layers: int = 2
    vlm_vision_dim: int = 64
    vlm_used_rows: bool = False       # train only the embedding / LM-head rows the task's tokens use
    precompute_images: int = 1536
    fit_steps: int = 600
    aligner_hidden: int = 256
    seeds: tuple = (0, 1, 2)
    eval_cases: int = 400
    ablations: bool = True


SIZES = {
    "full": Sizes(),
    # the quick start's default and CI's quality check: about 17 min on 2 CPU cores (the VLM in a second
    # process beside the image stages), shorter schedules, a VLM that trains only the token rows it uses.
    # Three aligner seeds, as the full size: one seed is a weak measure (seeds 0-2 of one build drew aligned
    # colour 86 / 42 / 65 %); the quick start fits only the first (models_only)
    "quick": Sizes(ae_steps=700, ae_batch=24, t5_steps=150, dit_steps=4000, dit_batch=32, vlm_steps=2000,
                   vlm_vision_steps=2000, vlm_used_rows=True, precompute_images=1024, seeds=(0, 1, 2), eval_cases=400,
                   ablations=False),
}

# the default aligner's extra `python -m train fit` options. Not the paper's decoder-only objective: on these
# tiny models that alone leaves the aligned path at chance (its rows share one direction; bench/RESULTS.md),
# so the mini aligner also standardises its inputs and adds the encoder-side term (the decoder loss stays on).
# Weight 30, not 10: on the quick build (bench/RESULTS.md, 2026-12-03 third session, n = 200, mean of three
# aligner seeds) aligned colour 39.3 -> 64.0 %, in-context 34.3 -> 47.0 % (the seeds spread widely); 100 drew
# more on seed 0 but leaves the decoder loss at 4.8 (2.4 at 30, 1.5 at 10), and 1,500 steps at 30 fell back
# (the decoder loss pulls the rows away again)
MINI_FIT = ["--standardise-inputs", "true", "--encoder-term", "30"]

# aligner variants: name -> options replacing MINI_FIT's values (one thing changed per variant)
ABLATIONS = {
    "decoder_only": ["--standardise-inputs", "false", "--encoder-term", "0"],   # the paper's objective alone
    "no_encoder_term": ["--encoder-term", "0"],        # standardised inputs, decoder loss only
    "no_standardise": ["--standardise-inputs", "false"],
    "encoder_term_10": ["--encoder-term", "10"],     # the default until 2026-12-03
    "encoder_term_100": ["--encoder-term", "100"],
    "norm_ones": ["--norm-init", "ones"],             # output norm scale starts at 1, not the T5 encoder's norm
    "no_decoder_dropout": ["--decoder-dropout", "false"],
    "hidden_64": ["--aligner-hidden", "64"],          # capacity
    "hidden_1024": ["--aligner-hidden", "1024"],
}


def fit_options(variant: str = "aligner") -> list[str]:
    """MINI_FIT with an ablation's options put in place (argparse keeps the last value of an option)."""
    return [*MINI_FIT, *ABLATIONS.get(variant, [])]


class Paths:
    def __init__(self, out: str):
        self.out = os.path.abspath(out)
        j = lambda *p: os.path.join(self.out, *p)   # noqa: E731
        self.judge, self.vae, self.t5, self.dit = j("judge.safetensors"), j("vae.safetensors"), j("t5"), j("dit.safetensors")
        self.dit_plain = j("dit_no_cond_aug.safetensors")
        self.vlm, self.images, self.feats, self.runs = j("vlm"), j("precompute_images"), j("feats"), j("runs")
        self.log = j("build.jsonl")

    def aligner(self, name: str = "aligner", seed: int = 0) -> str:
        return os.path.join(self.out, f"{name}_seed{seed}.safetensors")


def _log_to(path: str):
    def log(msg: str | dict) -> None:
        if isinstance(msg, dict):
            with open(path, "a") as f:
                f.write(json.dumps({"time": time.time(), **msg}) + "\n")
            msg = " ".join(f"{k}={v}" for k, v in msg.items())
        print(f"[mini {time.strftime('%H:%M:%S')}] {msg}", flush=True)
    return log


def _save_file(tensors: dict, path: str, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def _stage(name: str, out: str, log, fn) -> None:
    """Run fn(tmp) unless `out` exists; fn writes to tmp, which is renamed to out when complete."""
    if os.path.exists(out):
        log(f"{name}: exists ({out})")
        return
    tmp = out + ".partial"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    elif os.path.exists(tmp):
        os.remove(tmp)
    t, threads = time.time(), torch.get_num_threads()
    log(f"{name}: building")
    metrics = fn(tmp) or {}
    os.replace(tmp, out)
    # a stage's floats depend on its thread count: logged, and a change within the stage with it
    now = torch.get_num_threads()
    log({"stage": name, "seconds": round(time.time() - t, 1), "threads": threads if now == threads else f"{threads}->{now}",
         **metrics})


def check_format(out: str, size: str) -> None:
    """The stages are resumed from what `out` holds: refuse a folder built by another version of this code
    (e.g. 32-pixel models) instead of mixing its models with new ones."""
    info = os.path.join(out, "format.json")
    want = {**FORMAT, "size": size}
    if os.path.exists(info):
        with open(info) as f:
            have = json.load(f)
        if have != want:
            raise RuntimeError(f"{out} holds a ThinkDiff-mini build of another kind ({have}; this code builds "
                               f"{want}): delete that folder (it is only a cache) or give another --out")
    elif any(not n.startswith(".") for n in os.listdir(out)):
        raise RuntimeError(f"{out} is not empty and has no format.json (an older ThinkDiff-mini build?): delete "
                           f"it or give another --out")
    else:
        with open(info, "w") as f:
            json.dump(want, f)


def load_dit(path: str):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .image import build_dit
    with safe_open(path, "pt") as f:
        cfg = json.loads(f.metadata()["mini_config"])
    dit = build_dit(**cfg)
    dit.load_state_dict(load_file(path))
    return dit.eval()


def load_vae(path: str):
    from safetensors.torch import load_file

    from .image import TAESD
    return TAESD.from_comfy_state_dict(load_file(path))


def load_judge(path: str):
    from safetensors.torch import load_file

    from .judge import Judge
    j = Judge()
    j.load_state_dict(load_file(path))
    return j.eval()


def fit_aligner(p: Paths, sizes: Sizes, name: str, seed: int, extra: list[str], log) -> str:
    """`python -m train fit` + `export` (in this process, the same code as the command line)."""
    from train.__main__ import main as train_main
    out = p.aligner(name, seed)
    if os.path.exists(out):
        return out
    hidden = str(sizes.aligner_hidden)
    if "--aligner-hidden" in extra:
        i = extra.index("--aligner-hidden")
        hidden, extra = extra[i + 1], extra[:i] + extra[i + 2:]
    run = os.path.join(p.runs, f"{name}_seed{seed}")
    steps = str(sizes.fit_steps)
    argv = ["fit", "--data", p.feats, "--t5", p.t5, "--out", run, "--hidden-dim", hidden, "--max-steps", steps,
            "--batch-size", "32", "--lr", "1e-3", "--warmup-lr", "1e-5", "--warmup-steps", "50",
            "--min-lr", "1e-4", "--decay-steps", steps, "--weight-decay", "0.0", "--val-shards", "1",
            "--val-interval", steps, "--val-max-samples", "128", "--ckpt-interval", steps, "--log-interval", "50",
            "--seed", str(seed), "--progress", "false", "--resume", *extra]
    t = time.time()
    log("python -m train " + " ".join(argv))
    if train_main(argv) != 0:
        raise RuntimeError(f"fit {name} seed {seed} failed")
    if train_main(["export", "--run", run, "--out", out]) != 0:
        raise RuntimeError(f"export {name} seed {seed} failed")
    losses = [json.loads(line) for line in open(os.path.join(run, "log.jsonl")) if '"val_loss"' in line]
    log({"stage": f"aligner {name} seed {seed}", "seconds": round(time.time() - t, 1),
         "threads": torch.get_num_threads(), "val_loss_start": losses[0]["val_loss"] if losses else None,
         "val_loss_end": losses[-1]["val_loss"] if losses else None})
    return out


def train_image_model(p: Paths, sizes: Sizes, train_items, images: torch.Tensor, dst: str, cond_noise: float = 0.5,
                      token_drop: float = 0.15, log=print) -> None:
    """Stage 4: the image model on the tiny T5's encoder states of the captions (every template) and the
    autoencoder's latents of the train images and their mirror images; saved to dst with its config."""
    from .image import train_dit
    from .lang import t5_encode
    ae = load_vae(p.vae)
    with torch.no_grad():
        lat = torch.cat([ae.encode(images[i:i + 256]) for i in range(0, len(images), 256)])
        lat_flip = torch.cat([ae.encode(images[i:i + 256].flip(-1)) for i in range(0, len(images), 256)])
    classes = [(c, s) for c in data.COLOURS for s in data.SHAPES]
    states = t5_encode(p.t5, [data.caption(c, s, t) for c, s in classes for t in data.TEMPLATES])
    k = len(data.TEMPLATES)
    contexts = [states[i * k:(i + 1) * k] for i in range(len(classes))]
    cls = torch.tensor([classes.index((it.colour, it.shape)) for it in train_items])
    cfg = dict(context_dim=sizes.t5_dim, depth=sizes.dit_depth, latent_size=lat.shape[-1])
    dit = train_dit(torch.cat([lat, lat_flip]), torch.cat([cls, cls]), contexts, sizes.dit_steps,
                    context_dim=sizes.t5_dim, depth=sizes.dit_depth, batch=sizes.dit_batch,
                    cond_noise=cond_noise, token_drop=token_drop, log=log)
    _save_file(dit.state_dict(), dst, metadata={"mini_config": json.dumps(cfg)})


def judge_stage(p: Paths, sizes: Sizes, train_items, test_items, log, images: torch.Tensor | None = None) -> None:
    """Stage 1, unless it exists: the judge, on real images only; its accuracy on held-out real images is the
    ceiling of every score."""
    def fn(tmp):
        from .judge import score, train_judge
        x = data.image_tensor(train_items, IMAGE_SIZE) if images is None else images
        judge = train_judge(x, data.labels(train_items), sizes.judge_steps, log=log)
        _save_file(judge.state_dict(), tmp)
        return {f"real_test_{k}": v for k, v in score(judge.predict(data.image_tensor(test_items, IMAGE_SIZE)),
                                                       data.labels(test_items)).items()}
    _stage("judge", p.judge, log, fn)


def t5_stage(p: Paths, sizes: Sizes, log) -> None:
    """Stage 3 (the tiny T5), unless it exists."""
    from devtools import paths as dev_paths   # the tokenizers ComfyUI ships

    from .lang import train_t5
    _stage("t5", p.t5, log, lambda tmp: (train_t5(tmp, dev_paths.tokenizer_dir("t5_tokenizer"), sizes.t5_steps,
                                                   d_model=sizes.t5_dim, log=log), None)[1])


def language_branch(p: Paths, sizes: Sizes, train_items, log, beside: bool = False) -> None:
    """Stage 5 and the aligner's precompute: the VLM, then its generated-token states of held-in train
    images (`python -m train precompute`). Needs nothing from the image stages, so ``build(jobs=2)`` runs it
    in a second process beside them (``beside``), with the T5 and the judge first (the image stages wait for
    them) and the first seed's aligner last (what the workflow loads; it never sees the image model)."""
    from devtools import paths as dev_paths   # the tokenizers ComfyUI ships

    from .lang import train_vlm
    if beside:
        t5_stage(p, sizes, log)
        judge_stage(p, sizes, train_items, data.load("test"), log)
    _stage("vlm", p.vlm, log, lambda tmp: (train_vlm(
        tmp, dev_paths.tokenizer_dir("qwen25_tokenizer"), train_items, sizes.vlm_steps, hidden=sizes.vlm_hidden,
        layers=sizes.vlm_layers, vision_dim=sizes.vlm_vision_dim, vision_steps=sizes.vlm_vision_steps,
        used_rows=sizes.vlm_used_rows, log=log), None)[1])

    def images_stage(tmp):
        os.makedirs(tmp)
        for it in train_items[:sizes.precompute_images]:
            shutil.copy(it.path, os.path.join(tmp, os.path.basename(it.path)))
    _stage("precompute images", p.images, log, images_stage)
    from train.__main__ import main as train_main   # resumable: finished shards are skipped
    shard = str(max(64, sizes.precompute_images // 8))   # 8 shards: the last one is held out by fit
    argv = ["precompute", "--vlm", p.vlm, "--data", p.images, "--out", p.feats, "--shard-size", shard,
            "--max-new-tokens", "24", "--feature-dtype", "fp32", "--device", "cpu"]
    t = time.time()
    log("python -m train " + " ".join(argv))
    if train_main(argv) != 0:
        raise RuntimeError("precompute failed")
    log({"stage": "precompute", "seconds": round(time.time() - t, 1)})
    if beside:
        fit_aligner(p, sizes, "aligner", sizes.seeds[0], fit_options(), log)


class _Beside:
    """The language branch in a second process (`python -m train mini build --only language`, one torch
    thread: T5, judge, VLM, precompute, the first aligner), stopped with this one if this one fails or is
    interrupted. Meanwhile this process runs the autoencoder and (once the T5 exists) the image model with
    one thread fewer; `wait` gives the threads back for what is left (other seeds, ablations). Every
    stage's thread count is fixed, never changed mid-stage by when the other branch ends, so a build is the
    same float for float on the same kind of CPU (on 2 cores every stage runs on one thread)."""

    def __init__(self, out: str, size: str):
        import subprocess
        import sys

        from devtools import paths as dev_paths
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [dev_paths.ROOT, os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "train", "mini", "build", "--out", out, "--size", size, "--only", "language",
               "--threads", "1"]
        self.proc = subprocess.Popen(cmd, cwd=dev_paths.ROOT, env=env)
        self.threads = torch.get_num_threads()
        torch.set_num_threads(max(1, self.threads - 1))

    def wait_for(self, path: str) -> None:
        """Until the branch has written `path` (stages are renamed into place when complete)."""
        while not os.path.exists(path):
            if self.proc.poll() is not None:
                self.wait()   # raises if it failed
                if not os.path.exists(path):
                    raise RuntimeError(f"the language branch ended without writing {path}")
            time.sleep(1)

    def wait(self) -> None:
        rc = self.proc.wait()
        torch.set_num_threads(self.threads)
        if rc != 0:
            raise RuntimeError(f"the VLM branch of the build failed (exit {rc}; its output is above); run the "
                               f"same command again to continue where it stopped")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def build(out: str, size: str = "full", log=None, stop_after: str = "", models_only: bool = False,
          jobs: int = 1, only: str = "") -> Paths:
    """Run the stages in order (existing outputs are kept); ``stop_after`` names the last stage to run
    ('judge', 'autoencoder', 't5', 'image model', 'vlm' = the VLM and its precompute; empty = all);
    ``models_only``: what the workflow loads (one aligner, no ablations), as the quick start needs;
    ``jobs`` 2: T5, judge, VLM, precompute and the first aligner in a second process (one torch thread)
    beside autoencoder and image model (one thread fewer); the rest after both with every thread (`_Beside`);
    ``only`` 'language': just that branch (what the second process runs)."""
    sizes = SIZES[size]
    if models_only:
        sizes = replace(sizes, seeds=sizes.seeds[:1], ablations=False)
    p = Paths(out)
    os.makedirs(p.out, exist_ok=True)
    check_format(p.out, size)
    log = log or _log_to(p.log)
    log({"event": "build", "size": size, "sizes": asdict(sizes), "threads": torch.get_num_threads(),
         "jobs": jobs, "only": only})
    train_items, test_items = data.load("train"), data.load("test")
    if only == "language":
        language_branch(p, sizes, train_items, log, beside=True)
        return p
    beside = None
    if jobs >= 2 and not stop_after and not os.path.exists(p.vlm):
        beside = _Beside(p.out, size)
    try:
        images = _image_branch(p, sizes, train_items, test_items, log, stop_after, beside)
        if stop_after in ("judge", "autoencoder", "t5", "image model"):
            return p
        if beside:
            beside.wait()
        language_branch(p, sizes, train_items, log)
    finally:
        if beside:
            beside.stop()
    if stop_after == "vlm":
        return p

    # 6. aligner: fit + export per seed / ablation on the precomputed states
    for seed in sizes.seeds:
        fit_aligner(p, sizes, "aligner", seed, fit_options(), log)
    if sizes.ablations:
        for name in ABLATIONS:
            fit_aligner(p, sizes, name, 0, fit_options(name), log)
        # the image model without conditioning augmentation (noise and token drop on the T5 states)
        _stage("image model without conditioning augmentation", p.dit_plain, log,
               lambda tmp: train_image_model(p, sizes, train_items, images, tmp, cond_noise=0.0, token_drop=0.0,
                                             log=log))
    return p


def _image_branch(p: Paths, sizes: Sizes, train_items, test_items, log, stop_after: str,
                  beside: "_Beside | None" = None) -> torch.Tensor:
    """Stages 1-4: judge, autoencoder, T5, image model; returns the train images they read. With a language
    branch ``beside``, judge and T5 are its: this waits for their files where it needs them."""
    images = data.image_tensor(train_items, IMAGE_SIZE)

    # 1. judge (built by the language branch when that runs beside)
    if not beside:
        judge_stage(p, sizes, train_items, test_items, log, images)
    if stop_after == "judge":
        return images

    # 2. autoencoder
    def ae_stage(tmp):
        from .image import train_autoencoder
        from .judge import score
        ae = train_autoencoder(images, sizes.ae_steps, batch=sizes.ae_batch, channels_last=True, log=log)
        _save_file(ae.comfy_state_dict(), tmp)
        test = data.image_tensor(test_items, IMAGE_SIZE)
        with torch.no_grad():
            rec = ae.decode(ae.encode(test)).clamp(0, 1)
        # the autoencoder's ceiling: the judge on reconstructions of real held-out images
        if beside:
            beside.wait_for(p.judge)
        ceiling = score(load_judge(p.judge).predict(rec), data.labels(test_items))
        return {"test_mse": round((rec - test).pow(2).mean().item(), 5),
                **{f"reconstruction_{k}": v for k, v in ceiling.items()}}
    _stage("autoencoder", p.vae, log, ae_stage)
    if stop_after == "autoencoder":
        return images

    # 3. T5 (built by the language branch first when that runs beside: wait for it)
    if beside:
        beside.wait_for(p.t5)
    t5_stage(p, sizes, log)
    if stop_after == "t5":
        return images

    # 4. image model on T5 encoder states of the captions (every template), nothing else
    _stage("image model", p.dit, log, lambda tmp: train_image_model(p, sizes, train_items, images, tmp, log=log))
    return images
