"""Throughput of one `fit` training step (samples/s; on a GPU also MFU), random weights, synthetic batches.

The step is the one train/fit.py runs: aligner (fp32 params) -> frozen T5 decoder as cross-attention
memory -> token CE, backward into the aligner only, AdamW step; bf16 autocast + bf16 decoder on a GPU;
the decoder in train mode (dropout 0.1 active) as fit's default --decoder-dropout true runs it.
Every sample has the worst-case shape: a full prefix and full labels (no padding).

Run from the repository root:

    python -m bench.bench_fit                       # tiny shapes (aligner 64->64, T5 d_model 64, 2 layers)
    python -m bench.bench_fit --real                # paper shapes: aligner 3584->4096, flan-t5-xxl-sized
                                                    # decoder (4096, 24 layers, 64 heads x 64, d_ff 10240,
                                                    # vocab 32128), bf16, batch 32, 128 prefix / 128 labels
    python -m bench.bench_fit --real --layers 1 --batch-size 2 --device cpu --precision fp32   # reduced depth
    python -m bench.bench_fit --collate             # also time the data path (collate with the real tokenizers;
                                                    # from --comfyui, else $COMFYUI_DIR, else ./.comfyui)

MFU = model FLOPs per second / peak dense bf16 FLOP/s (--peak-tflops, default 989 = H100 SXM).
Model FLOPs (per sample, multiply-add = 2): forward of the aligner over P prefix rows and of the
decoder over L label tokens (self-attention, cross-attention incl. the K/V projections of the P
memory rows, gated FFN, LM head); backward = 2x forward for the trained aligner, 1x forward for the
frozen decoder's linear layers (input gradients only, no weight gradients) and 2x for its attention
score/value products.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from thinkdiff_core.aligner import Aligner
from thinkdiff_core.dtypes import dtype_name
from train.config import TRAIN_DTYPE, FitConfig
from train.fit import autocast_for, batch_loss, make_optimizer, resolve_precision
from train.t5 import random_t5_decoder


def flops_per_sample(a: dict, t: dict, P: int, L: int) -> dict:
    d, inner, ff, V, n = t["d_model"], t["num_heads"] * t["d_kv"], t["d_ff"], t["vocab_size"], t["num_layers"]
    aligner = 2 * P * (a["in"] * a["hidden"] + a["hidden"] * a["out"])
    linear = n * (2 * L * 4 * d * inner          # self-attention q, k, v, o
                  + 2 * L * 2 * d * inner        # cross-attention q, o
                  + 2 * P * 2 * d * inner        # cross-attention k, v over the memory rows
                  + 2 * L * 3 * d * ff)          # gated-gelu FFN (wi_0, wi_1, wo)
    linear += 2 * L * d * V                      # LM head
    attn = n * (2 * 2 * L * L * inner + 2 * 2 * L * P * inner)
    return {"forward": aligner + linear + attn, "train": 3 * aligner + 2 * linear + 3 * attn}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", action="store_true", help="paper shapes (defaults below switch to them)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=TRAIN_DTYPE, default="auto",
                   help="autocast and decoder dtype, as fit resolves them: auto = bf16 on a GPU that supports "
                        "it, else fp32")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--prefix", type=int, default=128)
    p.add_argument("--labels", type=int, default=128)
    p.add_argument("--layers", type=int, default=None, help="decoder layers (real: 24)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    p.add_argument("--no-decoder-dropout", action="store_true",
                   help="decoder in eval mode, as fit --decoder-dropout false")
    p.add_argument("--collate", action="store_true", help="also time collate() with the real tokenizers")
    p.add_argument("--collate-only", action="store_true", help="only time collate() (no model)")
    p.add_argument("--comfyui", default=None,
                   help="ComfyUI folder whose tokenizers --collate uses (default: $COMFYUI_DIR, else ./.comfyui)")
    args = p.parse_args()

    from transformers import T5Config
    if args.real:
        a = {"in": 3584, "hidden": 4096, "out": 4096}
        t = dict(d_model=4096, num_layers=args.layers or 24, num_heads=64, d_kv=64, d_ff=10240, vocab_size=32128)
        bs, steps, warm = args.batch_size or 32, args.steps or 10, args.warmup if args.warmup is not None else 3
    else:
        a = {"in": 64, "hidden": 64, "out": 64}
        t = dict(d_model=64, num_layers=args.layers or 2, num_heads=4, d_kv=16, d_ff=128, vocab_size=32128)
        bs, steps, warm = args.batch_size or 32, args.steps or 20, args.warmup if args.warmup is not None else 3
    device = torch.device(args.device)
    precision, dec_dtype = resolve_precision(FitConfig(precision=args.precision, decoder_dtype=args.precision), device)
    cfg_t5 = T5Config(**t, num_decoder_layers=t["num_layers"], feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)

    if args.collate_only:
        return time_collate(a["in"], bs, args.comfyui)
    decoder = random_t5_decoder(cfg_t5, dec_dtype, device).train(not args.no_decoder_dropout)
    torch.manual_seed(0)
    aligner = Aligner(a["in"], a["out"], a["hidden"]).to(device)
    optimizer = make_optimizer(aligner, FitConfig())
    P, L = args.prefix, args.labels
    g = torch.Generator().manual_seed(0)
    batch = {"prefix": torch.randn(bs, P, a["in"], generator=g).to(torch.bfloat16),   # stored as bf16, as precompute writes
             "prefix_mask": torch.ones(bs, P, dtype=torch.long),
             "labels": torch.randint(2, 32000, (bs, L), generator=g),
             "decoder_attention_mask": torch.ones(bs, L, dtype=torch.long)}
    batch["decoder_input_ids"] = torch.cat([torch.zeros(bs, 1, dtype=torch.long), batch["labels"][:, :-1]], 1)
    autocast = autocast_for(device, precision)

    def step() -> float:
        with autocast():
            loss = batch_loss(aligner, decoder, batch, device)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()            # a sync point, as in fit's logging

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warm):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    f = flops_per_sample(a, t, P, L)
    n_dec = sum(p.numel() for p in decoder.parameters())
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor() or platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()
    print(f"machine: {cpu} | nproc {os.cpu_count()} | "
          f"torch {torch.__version__} | threads {torch.get_num_threads()}"
          + (f" | {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print(f"shapes: aligner {a['in']}->{a['hidden']}->{a['out']}, decoder d_model {t['d_model']} x {t['num_layers']} "
          f"layers ({n_dec / 1e6:.1f} M params, {dtype_name(dec_dtype)}, dropout {'off' if args.no_decoder_dropout else 'on'}), heads {t['num_heads']}x{t['d_kv']}, d_ff {t['d_ff']}, "
          f"vocab {t['vocab_size']}; batch {bs}, prefix {P}, labels {L}; precision {dtype_name(precision)}; device {device}")
    print(f"step {dt * 1000:.1f} ms  ->  {bs / dt:.1f} samples/s  "
          f"({f['train'] * bs / dt / 1e12:.3f} model TFLOP/s; {f['train'] / 1e9:.1f} GFLOP per sample)")
    if device.type == "cuda":
        print(f"MFU {f['train'] * bs / dt / (args.peak_tflops * 1e12) * 100:.1f}% of {args.peak_tflops:.0f} TFLOP/s; "
              f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")

    if args.collate:
        time_collate(a["in"], bs, args.comfyui)


def time_collate(in_dim: int, bs: int, comfyui: str | None = None) -> None:
    """The data path of one batch: decode the stored states, Qwen-decode the suffix, T5-tokenise."""
    from thinkdiff_core.tiny import find_tokenizer
    from train.data import Sample, collate, draw_split, encode_sample
    from train.t5 import load_tokenizer
    from train.tiny import default_comfyui
    comfyui = default_comfyui(comfyui)
    qtok = load_tokenizer(find_tokenizer("qwen25_tokenizer", comfyui))
    ttok = load_tokenizer(find_tokenizer("t5_tokenizer", comfyui))
    text = ("A detailed photograph of a red vintage car parked on a cobblestone street in front of a small "
            "cafe with green shutters, warm evening light, people sitting at tables outside. ") * 12
    ids = qtok(text, add_special_tokens=False)["input_ids"][:255] + [qtok.convert_tokens_to_ids("<|im_end|>")]
    samples = []
    for i in range(bs):
        enc = encode_sample(f"s{i}", {"output_token_ids": ids}, torch.randn(len(ids), in_dim))
        samples.append(Sample(f"s{i}", ids, enc["output_embed.pth"]))
    items = [(s, draw_split(len(s.ids), 128, s.key)) for s in samples]
    collate(items, qtok, ttok, 128)
    t0 = time.perf_counter()
    for _ in range(5):
        collate(items, qtok, ttok, 128)
    print(f"collate (torch.load of {bs} x [{len(ids)}, {in_dim}] bf16 + Qwen decode + T5 tokenise): "
          f"{(time.perf_counter() - t0) / 5 * 1000:.1f} ms per batch of {bs} (one CPU process)")


if __name__ == "__main__":
    main()
