"""ThinkDiff-mini's savings, side by side in one run (ratios, since these machines are noisy):
- the VLM's language training step with every embedding / LM-head row trained vs only the rows the task's
  tokens use (``vlm_used_rows``, the quick size), timed as a short real training run minus the same run
  with 2 steps (set-up, saving), divided by the step difference;
- the autoencoder's encode + decode of 256 images through the whole TAESD vs through its shallow form
  (what ``TAESD.encode`` / ``decode`` run while the residual Blocks are zero: the same numbers);
- the autoencoder's training step in the contiguous layout (what the build uses) vs channels-last
  (``train_autoencoder(channels_last=True)``), and channels-last under bf16 autocast (neither used, see
  bench/RESULTS.md),
  timed like the VLM's step: a run of N + 2 steps minus a run of 2 steps, divided by N.

    python -m bench.bench_mini_steps [--threads 1] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--vlm-steps", type=int, default=30)
    p.add_argument("--ae-steps", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from devtools import paths as dev_paths
    from train.mini import data, image, lang
    items = data.load("train")
    images = data.image_tensor(items[:256], 64)
    quiet = lambda m: None   # noqa: E731
    tok = dev_paths.tokenizer_dir("qwen25_tokenizer")

    ae = image.train_autoencoder(images[:32], 2, log=quiet)   # Blocks zero, as trained

    @torch.no_grad()
    def coder(shallow: bool) -> float:
        ae._blocks_zero = shallow
        t = time.perf_counter()
        ae.decode(ae.encode(images))
        return time.perf_counter() - t

    def ae_steps(steps, layout):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=layout == "bf16"):   # bf16: channels-last too
            image.train_autoencoder(images, steps, channels_last=layout != "contiguous", log=quiet)
        return time.perf_counter() - t

    def per(layout):
        n = args.ae_steps
        return (ae_steps(n + 2, layout) - ae_steps(2, layout)) / n

    def vlm(steps, used):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            lang.train_vlm(os.path.join(d, "vlm"), tok, items, steps, used_rows=used, log=quiet)
            return time.perf_counter() - t

    per_step: dict = {}
    for _ in range(args.rounds):
        for name, fn in [("VLM language step, every row", lambda: (vlm(args.vlm_steps + 2, False) - vlm(2, False))
                          / args.vlm_steps),
                         ("VLM language step, used rows only", lambda: (vlm(args.vlm_steps + 2, True) - vlm(2, True))
                          / args.vlm_steps),
                         ("autoencoder encode + decode of 256 images, whole TAESD", lambda: coder(False)),
                         ("autoencoder encode + decode of 256 images, shallow form", lambda: coder(True)),
                         ("autoencoder training step (batch 32), contiguous", lambda: per("contiguous")),
                         ("autoencoder training step (batch 32), channels-last", lambda: per("channels_last")),
                         ("autoencoder training step (batch 32), channels-last + bf16 autocast",
                          lambda: per("bf16"))]:
            per_step.setdefault(name, []).append(fn())
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?") \
        if os.path.exists("/proc/cpuinfo") else "?"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU cores ({cpu})")
    for name, ts in per_step.items():
        print(f"{name}: {1000 * min(ts):.0f} ms (rounds: {', '.join(f'{1000 * t:.0f}' for t in ts)})")
    names = list(per_step)
    print(f"ratio VLM step every row / used rows: {min(per_step[names[0]]) / min(per_step[names[1]]):.2f}")
    print(f"ratio autoencoder whole / shallow: {min(per_step[names[2]]) / min(per_step[names[3]]):.2f}")
    print(f"ratio autoencoder training step contiguous / channels-last: "
          f"{min(per_step[names[4]]) / min(per_step[names[5]]):.2f}")
    print(f"ratio autoencoder training step channels-last / + bf16: {min(per_step[names[5]]) / min(per_step[names[6]]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
