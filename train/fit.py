"""fit: train the aligner so that a frozen Flan-T5 decoder can continue the VLM's text (docs/method.md §2.3-2.5).

Per sample with N generated rows: draw s uniform in 1..min(N-1, 128); the prefix rows [0, s) go
through the aligner and become the T5 decoder's cross-attention memory; the decoder must predict
the suffix text (Qwen ids [s, N) -> text -> T5 tokens). Only the aligner is trained.

    python -m train fit --data feats/ --t5 flan-t5-xxl --out runs/lvlm           # one process
    torchrun --nproc_per_node 4 -m train fit --config run.yaml                    # DDP, 4 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m train fit --config run.yaml # DDP; on a CPU-only
                                            # machine this runs 2 CPU processes over gloo (as torchrun does)
    python -m train fit --config run.yaml --resume                                # continue a run

Outputs in --out: config.yaml, log.jsonl (one JSON line per log step, validation, checkpoint,
resume, checkpoint_unreadable), checkpoints/step_XXXXXXXX.pt (format in train/checkpoint.py).
Checkpoints are written to a temp file and renamed, so a killed run (even SIGKILL) loses only the steps since the last
checkpoint; SIGINT/SIGTERM finish the current step, save a checkpoint and exit with status 0.
--resume skips an unreadable last checkpoint (truncated, garbage) for the one before it, with a
warning; a failed checkpoint write (full disk) stops the run with an error and keeps the previous one.

ThinkDiff-CLIP (docs/method.md §3): with shards written by `precompute --variant clip` the same loop trains
the CLIP aligner: per image, k caption words (uniform in 1..W-1) are encoded by the frozen Flan-T5
encoder; the memory is [aligned 65 image tokens ; encoded prefix] and the decoder predicts the other
words (--max-text-len 32 T5 tokens each). Data, loop, checkpoints, resume and processes are shared.

The frozen decoder runs in train mode during training steps (its dropout is active, as in the
official trainer; --decoder-dropout false turns that off) and in eval mode for validation.

Reading order: the pieces (schedule, optimizer, loss, RNG, prefetch), the setup helpers, `fit`
itself (setup -> resume -> loop).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import resource
import signal
import time

import torch
import torch.nn.functional as F

from thinkdiff_core.aligner import Aligner
from thinkdiff_core.dtypes import dtype_name, resolve_dtype

from . import checkpoint
from .config import FitConfig, require
from .data import (CLIP, TrainStream, batches, collate, collate_clip, expand_shards, feature_dim, feature_stats,
                   provenance_file,
                   read_provenance, shard_variant, val_items)
from .t5 import check_t5_folder, load_t5_decoder, load_tokenizer


# ----------------------------------------------------------------------------------------------------
# pieces the loop (and bench/bench_fit.py) uses

def lr_at(step: int, cfg: FitConfig) -> float:
    """Linear warm-up from warmup_lr to lr, then a cosine from lr to min_lr over decay_steps counted
    from step 0 (docs/method.md §2.5: at 25k steps 9.92e-5, so effectively constant)."""
    if step < cfg.warmup_steps:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / cfg.warmup_steps
    t = min(step, cfg.decay_steps) / max(cfg.decay_steps, 1)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer(aligner: torch.nn.Module, cfg: FitConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases and the RMSNorm weight get none)."""
    params = [p for p in aligner.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def batch_loss(aligner, decoder, batch: dict, device, reduction: str = "mean") -> torch.Tensor:
    """Token-level CE of the suffix given the aligned prefix; mean over the batch's label tokens.
    ThinkDiff-CLIP batches (text_ids) append the frozen T5 encoder's states of the caption prefix to the
    aligned image tokens: memory [image tokens ; text], mask [ones ; text mask] (docs/method.md §3)."""
    memory = aligner(batch["prefix"].to(device, non_blocking=True))
    mask = batch["prefix_mask"].to(device)
    if "text_ids" in batch:
        text_mask = batch["text_mask"].to(device)
        text = decoder.encode(batch["text_ids"].to(device), text_mask)
        memory = torch.cat([memory, text.to(memory.dtype)], dim=1)
        mask = torch.cat([mask, text_mask], dim=1)
    logits = decoder(memory, mask, batch["decoder_input_ids"].to(device),
                     batch["decoder_attention_mask"].to(device))
    labels = batch["labels"].to(device)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction=reduction)


def encoder_term(aligner, decoder, batch: dict, device) -> torch.Tensor:
    """1 - cosine between the mean aligned prefix row and the mean frozen T5 *encoder* state of the prefix's own
    text (cfg.encoder_term; an ablation, not the paper's objective)."""
    memory = aligner(batch["prefix"].to(device, non_blocking=True))
    mask = batch["prefix_mask"].to(device).unsqueeze(-1).to(memory.dtype)
    text_mask = batch["prefix_text_mask"].to(device)
    target = decoder.encode(batch["prefix_text_ids"].to(device), text_mask)
    tm = text_mask.unsqueeze(-1).to(target.dtype)
    a = (memory * mask).sum(1) / mask.sum(1).clamp_min(1)
    t = (target * tm).sum(1) / tm.sum(1).clamp_min(1)
    return (1 - F.cosine_similarity(a.float(), t.float(), dim=-1)).mean()


class Standardised(torch.nn.Module):
    """The aligner on standardised features, (x - mean) / std (--standardise-inputs); export folds the
    statistics into its first Linear (Aligner.fold_input_standardisation)."""

    def __init__(self, aligner: Aligner, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.aligner = aligner
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.aligner((features.to(self.mean) - self.mean) / self.std)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def prefetch(iterable, depth: int = 2):
    """Run an iterator in a background thread, `depth` items ahead, in order; its errors re-raise here."""
    import queue
    import threading
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = threading.Event()

    def put(x) -> bool:
        while not done.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in iterable:
                if not put((True, item)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((False, e))

    thread = threading.Thread(target=produce, daemon=True, name="fit-data")
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            yield item
    finally:                      # close() or garbage collection stops the thread (after its current item)
        done.set()
        thread.join(timeout=60)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------------
# setup helpers

def resolve_precision(cfg: FitConfig, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(autocast dtype, decoder weights dtype): "auto" is fp32 on a CPU, bf16 on a GPU that supports it;
    never fp16 (the loop has no loss scaling, and T5 overflows in fp16)."""
    return (resolve_dtype(cfg.precision, device, fp16_supported=False),
            resolve_dtype(cfg.decoder_dtype, device, fp16_supported=False))


def autocast_for(device: torch.device, precision: torch.dtype):
    """A factory of autocast contexts (a no-op one for fp32)."""
    if precision == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=precision)


def tokenizer_folder(cfg: FitConfig) -> str:
    """--tokenizer, else the VLM folder named in the data's precompute.json."""
    if cfg.tokenizer:
        if not os.path.isdir(cfg.tokenizer):
            raise FileNotFoundError(f"tokenizer: folder not found: {cfg.tokenizer}")
        return cfg.tokenizer
    prov = read_provenance(cfg.data)
    if prov is None:
        raise FileNotFoundError(f"tokenizer: no --tokenizer given and {provenance_file(cfg.data)} not found; pass "
                                f"--tokenizer with the VLM folder (or any folder with its Qwen2-VL tokenizer)")
    if not os.path.isdir(prov.vlm):
        raise FileNotFoundError(f"tokenizer: {prov.path} names the VLM folder {prov.vlm}, which does not exist "
                                f"here; pass --tokenizer with a folder holding the Qwen2-VL tokenizer")
    return prov.vlm


def split_shards(cfg: FitConfig, world: int, master: bool) -> tuple[list[str], list[str]]:
    """(training shards, validation shards): --val-data, else the last --val-shards of --data."""
    shards = expand_shards(cfg.data, "data")
    val_shards = expand_shards(cfg.val_data, "val_data") if cfg.val_data else []
    if not cfg.val_data and cfg.val_shards > 0:
        if len(shards) - cfg.val_shards >= world:
            shards, val_shards = shards[:-cfg.val_shards], shards[-cfg.val_shards:]
        elif master:
            print(f"[fit] only {len(shards)} shard(s): no validation (need more than {world} to hold "
                  f"{cfg.val_shards} out); pass --val-data or more shards", flush=True)
    if len(shards) < world:
        raise SystemExit(f"error: {len(shards)} training shard(s) for {world} processes; every process needs "
                         f"at least one shard (write more, smaller shards with precompute --shard-size)")
    return shards, val_shards


def resume(cfg: FitConfig, world: int, rank: int, master: bool, aligner, optimizer, scheduler
           ) -> tuple[int, tuple, list[dict]]:
    """Load the last readable checkpoint of --out into the aligner, optimizer, scheduler and RNGs when
    --resume is given; returns (step, this process's data position, the unreadable checkpoints skipped as
    log records). A run folder with checkpoints needs --resume. A checkpoint torch.load cannot read
    (truncated, garbage) is skipped with a warning for the one before it; none readable is an error."""
    found = checkpoint.list_checkpoints(cfg.out)
    if found and not cfg.resume:
        raise SystemExit(f"error: {cfg.out} already has checkpoints ({os.path.basename(found[-1])}); "
                         f"pass --resume to continue that run or choose another --out")
    if not cfg.resume:
        return 0, (0, 0, 0), []
    if not found:
        if master:
            print(f"[fit] --resume: no checkpoint in {checkpoint.folder(cfg.out)}, starting from step 0", flush=True)
        return 0, (0, 0, 0), []
    skipped = []
    for path in reversed(found):
        try:
            ckpt = checkpoint.load(path)
            break
        except checkpoint.UnreadableCheckpoint as e:
            skipped.append({"event": "checkpoint_unreadable", "path": path, "error": str(e)})
            if master:
                print(f"[fit] warning: --resume: {e}; "
                      f"falling back to the previous checkpoint", flush=True)
    else:
        raise SystemExit(f"error: --resume: no readable checkpoint in {checkpoint.folder(cfg.out)} (unreadable: "
                         f"{', '.join(os.path.basename(r['path']) for r in skipped)}); move them away to start "
                         f"from step 0, or restore a good copy")
    if skipped and master:
        print(f"[fit] --resume: continuing from {path}", flush=True)
    if bool(ckpt["config"].get("standardise_inputs")) != cfg.standardise_inputs:
        raise SystemExit(f"error: {path} was trained with standardise_inputs="
                         f"{bool(ckpt['config'].get('standardise_inputs'))}; resume it with the same setting")
    if ckpt["world_size"] != world:
        raise SystemExit(f"error: {path} was written by {ckpt['world_size']} process(es); resume "
                         f"it with the same number (got {world})")
    for k in ("seed", "batch_size", "grad_accum", "data", "max_split", "decoder_dropout"):
        if ckpt["config"].get(k) != getattr(cfg, k) and master:
            print(f"[fit] warning: {k} changed since the checkpoint "
                  f"({ckpt['config'].get(k)!r} -> {getattr(cfg, k)!r})", flush=True)
    aligner.load_state_dict(ckpt["aligner"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"][rank])
    return ckpt["step"], tuple(ckpt["positions"][rank]), skipped


class RunLog:
    """log.jsonl (and config.yaml) of the run folder; only the main process writes."""

    def __init__(self, cfg: FitConfig, master: bool):
        os.makedirs(cfg.out, exist_ok=True)
        self.file = open(os.path.join(cfg.out, "log.jsonl"), "a") if master else None
        if master:
            import yaml
            with open(os.path.join(cfg.out, "config.yaml"), "w") as fh:
                yaml.safe_dump(dataclasses.asdict(cfg), fh, sort_keys=False)

    def __call__(self, record: dict) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def all_sum(values: list[float], device, world: int) -> list[float]:
    """Sum over processes."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def make_collate(variant: str, qwen_tok, t5_tok, cfg: FitConfig):
    """items -> batch for the data's variant (LVLM: collate; CLIP: collate_clip)."""
    if variant == CLIP:
        return lambda items: collate_clip(items, t5_tok, cfg.max_text_len)
    return lambda items: collate(items, qwen_tok, t5_tok, cfg.max_label_len)


@torch.no_grad()
def evaluate(aligner, decoder, held_out: list, collate_fn, cfg: FitConfig, device, autocast,
             world: int) -> float:
    """Mean token CE over every process's held-out samples, with the decoder in eval mode (no dropout,
    so every validation pass of the same aligner gives the same number)."""
    decoder.eval()
    total, count = 0.0, 0
    for i in range(0, len(held_out), cfg.batch_size):
        b = collate_fn(held_out[i:i + cfg.batch_size])
        with autocast():
            total += float(batch_loss(aligner, decoder, b, device, reduction="sum"))
        count += int((b["labels"] != -100).sum())
    total, count = all_sum([total, count], device, world)
    return total / count if count else None


def train_step(model, decoder, train_batches, optimizer, scheduler, accelerator, cfg: FitConfig, device,
               autocast) -> tuple[torch.Tensor, tuple, float]:
    """One optimizer step over cfg.grad_accum micro-batches; the decoder is in train mode when
    cfg.decoder_dropout (its dropout active, its weights still frozen). Returns (sum of the micro-batch
    losses, the data position after the last batch, the learning rate used)."""
    decoder.train(cfg.decoder_dropout)
    loss_sum = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        batch, position = next(train_batches)
        # gradients are all-reduced only on the last micro-step
        sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else accelerator.no_sync(model)
        with sync:
            with autocast():
                loss = batch_loss(model, decoder, batch, device)
                if cfg.encoder_term:
                    loss = loss + cfg.encoder_term * encoder_term(model, decoder, batch, device)
            accelerator.backward(loss / cfg.grad_accum)
        loss_sum += loss.detach()
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, position, lr


@contextlib.contextmanager
def stop_requests():
    """SIGINT / SIGTERM set stop["signal"] instead of interrupting: the loop finishes the step,
    checkpoints and exits. The previous handlers come back on exit."""
    stop = {"signal": 0}
    handler = lambda signum, frame: stop.update(signal=signum)   # noqa: E731
    old_handlers = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------------------------------

def fit(cfg: FitConfig) -> dict:
    """Run (or continue) a fit; returns {'step', 'losses', 'val_losses', 'aligner', 'decoder', 'stopped',
    'last_checkpoint'}."""
    require(cfg, "data", "t5")
    check_t5_folder(cfg.t5)
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm import tqdm

    # ---- setup: processes, data, tokenizers, models --------------------------------------------------
    accelerator = Accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    rank, world, master = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    precision, dec_dtype = resolve_precision(cfg, device)
    autocast = autocast_for(device, precision)
    shards, val_shards = split_shards(cfg, world, master)
    variant = shard_variant(shards[0])            # lvlm or clip: what precompute wrote
    # ThinkDiff-CLIP captions need only the T5 tokenizer; LVLM suffixes are decoded with the VLM's
    qwen_tok = load_tokenizer(tokenizer_folder(cfg)) if variant != CLIP else None
    t5_tok = load_tokenizer(cfg.t5)

    # frozen T5 decoder (CLIP: and encoder); the aligner's norm starts from the T5 encoder's final norm
    # (docs/method.md §1.1)
    decoder, t5_norm = load_t5_decoder(cfg.t5, dtype=dec_dtype, device=device, with_encoder=variant == CLIP or bool(cfg.encoder_term))
    if cfg.encoder_term and variant == CLIP:
        raise ValueError("--encoder-term is for ThinkDiff-LVLM data (the prefix rows' own text); these shards are "
                         "ThinkDiff-CLIP image tokens")
    dims = [feature_dim(shards[0]), cfg.hidden_dim or decoder.d_model, decoder.d_model]
    torch.manual_seed(cfg.seed)                                  # identical init on every process
    aligner = Aligner(dims[0], dims[2], dims[1])
    if cfg.norm_init == "t5":
        aligner.init_norm_from_t5(t5_norm)
    aligner = aligner.to(device)
    # what the loop and validation run: the aligner, or the aligner on standardised features
    net, input_stats = aligner, None
    if cfg.standardise_inputs:
        mean, std = feature_stats(shards)
        input_stats = {"mean": mean, "std": std}
        net = Standardised(aligner, mean, std).to(device)
    torch.manual_seed(cfg.seed + rank)                           # docs/method.md §2.5: seed 42 + rank (dropout masks);
    random.seed(cfg.seed + rank)                                 # a resume restores both
    optimizer = make_optimizer(aligner, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)

    # ---- resume ----------------------------------------------------------------------------------------
    step, position, skipped = resume(cfg, world, rank, master, aligner, optimizer, scheduler)

    # ---- data streams ----------------------------------------------------------------------------------
    model = accelerator.prepare(net)          # DDP when world > 1; the optimizer stays ours
    stream = TrainStream(shards[rank::world], cfg.seed, rank, cfg.max_split, position)
    # batches are read and tokenised one or two ahead in a thread; each carries the stream position
    # after its last sample, and a checkpoint stores the position of the last batch actually used
    train_collate = make_collate(variant, qwen_tok, t5_tok, cfg)
    train_batches = prefetch(((train_collate(group), pos) for group, pos in batches(stream, cfg.batch_size)), depth=2)
    held_out = val_items(val_shards, cfg.seed, rank, world, cfg.val_max_samples, cfg.max_split)
    # the data thread uses the tokenizers concurrently: validation gets its own copies
    val_collate = make_collate(variant, copy.deepcopy(qwen_tok), copy.deepcopy(t5_tok), cfg) if val_shards else None

    def validate() -> float | None:
        if not val_shards:
            return None
        return evaluate(net, decoder, held_out, val_collate, cfg, device, autocast, world)

    def save(reason: str) -> None:
        positions = gather_object([list(position)])            # every process's place in its data
        rngs = gather_object([rng_state()])
        if master:
            path = checkpoint.save(cfg.out, {
                "step": step, "aligner": aligner.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "positions": positions, "rng": rngs, "world_size": world,
                "config": dataclasses.asdict(cfg), "dims": dims,
                **({"input_stats": input_stats} if input_stats else {})}, cfg.keep_ckpts)
            log({"event": "checkpoint", "step": step, "path": path, "reason": reason})

    log = RunLog(cfg, master)
    for record in skipped:                                       # before the resume line they explain
        log(record)
    log({"event": "resume" if step else "start", "step": step, "variant": variant, "world_size": world,
         "device": str(device),
         "precision": dtype_name(precision), "decoder_dtype": dtype_name(dec_dtype),
         "decoder_dropout": cfg.decoder_dropout, "dims": dims, "train_shards": len(shards),
         "val_shards": len(val_shards), "val_samples": len(held_out) * world})

    # ---- the loop --------------------------------------------------------------------------------------
    losses, val_losses, last_ckpt = {}, {}, step
    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True, desc="fit",
               disable=not (master and cfg.progress))
    samples_per_step = cfg.batch_size * cfg.grad_accum * world
    with stop_requests() as stop:
        try:
            if step == 0 and cfg.val_interval:                 # the baseline: the untrained aligner
                val = validate()
                if val is not None:
                    val_losses[0] = val
                    log({"event": "step", "step": 0, "val_loss": val})
            while step < cfg.max_steps:
                t0 = time.perf_counter()
                loss_sum, position, lr = train_step(model, decoder, train_batches, optimizer, scheduler,
                                                    accelerator, cfg, device, autocast)
                step += 1
                loss_value, stopping = all_sum([loss_sum.item() / cfg.grad_accum / world,
                                                float(stop["signal"] > 0)], device, world)
                losses[step] = loss_value
                dt = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")

                record = {"event": "step", "step": step, "loss": loss_value, "lr": lr,
                          "samples_per_s": samples_per_step / dt, "mem_mb": round(memory_mb(device), 1)}
                if (cfg.val_interval and step % cfg.val_interval == 0) or step == cfg.max_steps:
                    val = validate()
                    if val is not None:
                        val_losses[step] = record["val_loss"] = val
                        if master:
                            bar.write(f"step {step}: loss {loss_value:.4f}, val_loss {val:.4f}")
                if step % cfg.log_interval == 0 or "val_loss" in record or step == cfg.max_steps:
                    log(record)
                if stopping:       # any process got SIGINT/SIGTERM: all of them stop after this step
                    name = signal.Signals(stop["signal"]).name if stop["signal"] else "a signal to another process"
                    save(f"stopped by {name}")
                    if master:
                        print(f"\n[fit] stopped by {name} at step {step}; checkpoint saved; continue with --resume",
                              flush=True)
                    break
                if step % cfg.ckpt_interval == 0 or step == cfg.max_steps:
                    save("interval" if step < cfg.max_steps else "end")
                    last_ckpt = step
        finally:
            train_batches.close()
            bar.close()
            log.close()
            decoder.eval()
    if stream.skipped and master:
        print(f"[fit] skipped {stream.skipped} sample(s) with fewer than 2 generated tokens", flush=True)
    if world > 1:
        accelerator.wait_for_everyone()
    if input_stats:      # what export writes: the statistics folded in, so it takes raw features
        aligner = copy.deepcopy(aligner).fold_input_standardisation(input_stats["mean"], input_stats["std"])
    return {"step": step, "losses": losses, "val_losses": val_losses, "aligner": aligner, "decoder": decoder,
            "stopped": bool(stop["signal"]), "last_checkpoint": last_ckpt, "variant": variant}


def main(cfg: FitConfig) -> int:
    fit(cfg)
    return 0
