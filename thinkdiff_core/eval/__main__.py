"""``python -m thinkdiff_core.eval cobsat --cobsat DIR --flux DIR --vlm DIR --aligner FILE --out DIR [...]``"""
from __future__ import annotations

import argparse
import json
import sys


def _ints(text: str) -> tuple:
    return tuple(int(x) for x in text.replace(",", " ").split())


def main(argv: list[str] | None = None) -> int:
    from . import cobsat
    from .harness import METHODS, Config, format_table, run
    p = argparse.ArgumentParser(prog="python -m thinkdiff_core.eval",
                                description="Benchmarks for ThinkDiff on diffusers (no ComfyUI needed).")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cobsat", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="CoBSAT in-context accuracy of ThinkDiff-LVLM and of the text-rewriter baseline",
                       description="Generates the CoBSAT samples' images with ThinkDiff-LVLM (diffusers FluxPipeline) "
                                   "and with the text-rewriter baseline (the VLM writes a prompt for FLUX's own T5), "
                                   "judges each image with a local VLM using the benchmark's two questions and "
                                   "parsing, and prints the paper's table. Resumable: finished images and "
                                   "judgements are skipped. Everything loads from local folders only.")
    c.add_argument("--cobsat", required=True, help="the CoBSAT folder (the benchmark's repository with datasets/ "
                                                   "unzipped into it, or the datasets folder itself)")
    c.add_argument("--flux", required=True, help="diffusers folder of FLUX.1-dev (model_index.json, transformer/, ...)")
    c.add_argument("--vlm", required=True, help="Qwen2-VL folder ThinkDiff reads with (Qwen2-VL-7B-Instruct)")
    c.add_argument("--aligner", required=True, help="aligner file (thinkdiff_lvlm.pth or a converted .safetensors)")
    c.add_argument("--judge", default=None, help="Qwen2-VL-family folder of the judge (default: the --vlm folder)")
    c.add_argument("--out", required=True, help="output folder (images, judgements, results.json); reused to resume")
    c.add_argument("--shots", type=_ints, default=cobsat.SHOTS, help="shot settings, e.g. '2 4'")
    c.add_argument("--tasks", type=_ints, default=tuple(cobsat.PAPER_ORDER), help="task ids 1..10, e.g. '1 2'")
    c.add_argument("--max-samples", type=int, default=None,
                   help=f"first N of the {cobsat.NUM_SAMPLES} fixed samples per task (quick runs; default all)")
    c.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    c.add_argument("--device", default="auto", help="cuda, cpu, ... (auto: cuda if available)")
    c.add_argument("--dtype", default="auto", help="fp32, bf16, fp16 or auto (bf16 on GPUs that have it)")
    c.add_argument("--steps", type=int, default=28, help="FLUX steps")
    c.add_argument("--guidance", type=float, default=3.5, help="FLUX-dev distilled guidance")
    c.add_argument("--size", type=int, default=512, help="image side in pixels (the official in-context script: 512)")
    c.add_argument("--seed", type=int, default=42, help="FLUX seed of every image (the official scripts: 42)")
    c.add_argument("--vlm-seed", type=int, default=0, help="seed of the VLM's sampling (T 0.6, top-p 0.9)")
    c.add_argument("--vlm-new-tokens", type=int, default=128,
                   help="VLM tokens (rows) ThinkDiff aligns, EOS suppressed (the paper: 128)")
    c.add_argument("--max-pixels", type=int, default=None, help="Qwen2-VL max_pixels for the input images")
    c.add_argument("--rewriter-max-new-tokens", type=int, default=256,
                   help="most tokens the VLM may write for the text-rewriter prompt (it stops at EOS)")
    c.add_argument("--judge-max-new-tokens", type=int, default=512, help="most tokens of a judge reply (greedy)")
    c.add_argument("--cpu-offload", action="store_true", help="diffusers enable_model_cpu_offload() for FLUX")
    c.add_argument("--json", action="store_true",
                   help="print all of results.json after the table (default: accuracies and labels as one JSON line)")
    args = p.parse_args(argv)
    cfg = Config(cobsat=args.cobsat, out=args.out, flux=args.flux, vlm=args.vlm, aligner=args.aligner,
                 judge=args.judge, shots=args.shots, tasks=args.tasks, max_samples=args.max_samples,
                 methods=tuple(args.methods), device=args.device, dtype=args.dtype, steps=args.steps,
                 guidance=args.guidance, size=args.size, seed=args.seed, vlm_seed=args.vlm_seed,
                 vlm_new_tokens=args.vlm_new_tokens,
                 max_pixels=args.max_pixels, rewriter_max_new_tokens=args.rewriter_max_new_tokens,
                 judge_max_new_tokens=args.judge_max_new_tokens, cpu_offload=args.cpu_offload)
    from ..checkpoint import AlignerFileError
    from ..vlm import VLMLoadError
    try:
        result = run(cfg)
    except (FileNotFoundError, VLMLoadError, AlignerFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    s = result["stats"]
    print(f"generated {s['generated']} image(s) ({s['skipped_generation']} already there), judged {s['judged']} "
          f"({s['skipped_judging']} already there) in {result['seconds']} s; results: {args.out}/results.json")
    if args.json:
        print(json.dumps(result, indent=1))
    else:   # the table as one JSON line (all of results.json with --json)
        print(json.dumps({k: result[k] for k in ("benchmark", "samples_per_task", "judge", "labels", "accuracy")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
