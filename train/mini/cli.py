"""python -m train mini {build,eval,install} [--out DIR] [--size full|quick] [--jobs N] [--threads N]

build    trains every ThinkDiff-mini model on easy-vqa (train/mini/build.py; stages resume)
install  builds what is missing, then links the models into a ComfyUI models folder (--models) under the
         names workflows/thinkdiff_mini_in_context.json loads (thinkdiff_core.release.MINI_FILES)
eval   builds what is missing, then generates held-out cases and judges them (train/mini/evaluate.py);
       --results FILE writes the table into FILE between the mini markers, --grid FILE the image grid
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from .build import MINI_FIT, SIZES

def markers(size: str) -> tuple[str, str]:
    """The comments around a size's table in RESULTS.md (the full build's keep their first spelling)."""
    name = "thinkdiff-mini results" if size == "full" else f"thinkdiff-mini {size} results"
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


DEFAULT_OUT = os.path.join(".cache", "mini-{size}")   # one folder per size (a folder holds one build)


ABLATION_TEXT = {
    "decoder_only": "the paper's objective alone: decoder loss only, raw features (no standardising, no encoder term)",
    "no_encoder_term": "no encoder-side term (decoder loss only, standardised features)",
    "no_standardise": "raw features (no --standardise-inputs)",
    "encoder_term_10": "encoder-side term weight 10 (default 30)",
    "encoder_term_100": "encoder-side term weight 100 (default 30)",
    "norm_ones": "aligner output norm starts at 1 (not the T5 encoder's final norm)",
    "no_decoder_dropout": "T5 decoder dropout off while fitting",
    "hidden_64": "aligner hidden width 64 (default 256)",
    "hidden_1024": "aligner hidden width 1024 (default 256)",
}


def _pct(r: dict) -> str:
    return f"{100 * r['colour']:.1f} / {100 * r['shape']:.1f} / **{100 * r['both']:.1f}**"


def results_table(res: dict, command: str) -> str:
    c = res["conditions"]
    begin, end = markers(res["size"])
    lines = [begin, "",
             f"Command: `{command}` ({res['seconds']:.0f} s for the evaluation; build times in the build log).",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads. Size `{res['size']}`: n = {res['n']} held-out cases per condition, "
             f"{res['steps']} euler steps, CFG {res['cfg']}. Each cell: colour / shape / **both** (%), judged by a "
             f"CNN trained on real easy-vqa images only (with random blur); chance is 12.5 / 33.3 / 4.2.", "",
             "| condition | colour / shape / both |", "|---|---|",
             f"| caption → tiny T5 encoder (upper bound) | {_pct(c['caption'])} |"]
    if "reconstruction" in c:
        lines.insert(-1, f"| the autoencoder's reconstructions of the real images (its ceiling) | {_pct(c['reconstruction'])} |")
    a, ic = c["aligned"], c["in_context"]
    lines += [f"| **aligned**: image → tiny Qwen2-VL caption → aligner → image model (mean of {a['seeds']} aligner "
              f"seeds; both ranges {100 * a['both_min']:.1f}–{100 * a['both_max']:.1f}) | {_pct(a)} |",
              f"| **in-context**: 2 shots + query word → VLM reasons → aligner → image model (mean of {ic['seeds']} "
              f"seeds; both {100 * ic['both_min']:.1f}–{100 * ic['both_max']:.1f}) | {_pct(ic)} |",
              f"| empty prompt (chance) | {_pct(c['empty'])} |", ""]
    t = res["vlm_text"]
    lines += [f"The VLM's own text names the right colour and shape in {100 * t['caption']['both']:.1f}% of the "
              f"captions and {100 * t['in_context']['both']:.1f}% of the in-context answers.", ""]
    if res.get("ablations"):
        lines += ["Ablations (aligner seed 0, the same cases; one thing changed per row):", "",
                  "| variant | caption (upper bound) | aligned | in-context |", "|---|---|---|---|",
                  f"| default (`python -m train fit` {' '.join(MINI_FIT)}) | {_pct(c['caption'])} | {_pct(c['aligned/seed0'])} | {_pct(c['in_context/seed0'])} |"]
        for name, r in res["ablations"].items():
            cap = _pct(r["caption"]) if "caption" in r else "(same image model)"
            lines.append(f"| {ABLATION_TEXT.get(name, name)} | {cap} | {_pct(r['aligned'])} | {_pct(r['in_context'])} |")
        lines.append("")
    lines.append(end)
    return "\n".join(lines)


def write_results(path: str, table: str, size: str = "full") -> None:
    """Put the table between its size's markers in the file (replacing what is there), or append it."""
    begin, end = markers(size)
    text = open(path).read() if os.path.exists(path) else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + table + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## ThinkDiff-mini ({size})\n\n" + table + "\n"
    with open(path, "w") as f:
        f.write(text)


def install(built, models: str, aligner_seed: int = 0) -> list[str]:
    # (the quick start installs seed 0's aligner; `eval` reports every seed)
    """Symlink the built models into ComfyUI's models folders under the names the mini workflow loads."""
    from thinkdiff_core.release import ALIGNER_FOLDER, MINI_FILES, VLM_FOLDER
    sources = {VLM_FOLDER: built.vlm, ALIGNER_FOLDER: built.aligner("aligner", aligner_seed),
               "diffusion_models": built.dit, "vae": built.vae}
    done = []
    for folder, name in MINI_FILES.items():
        dst = os.path.join(models, folder, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(dst) or os.path.isfile(dst):
            os.remove(dst)
        elif os.path.isdir(dst):
            import shutil
            shutil.rmtree(dst)
        os.symlink(os.path.abspath(sources[folder]), dst)
        done.append(dst)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train mini", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "eval", "install"])
    p.add_argument("--out", default="", help=f"models and logs (default {DEFAULT_OUT})")
    p.add_argument("--size", default="full", choices=list(SIZES))
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--results", default="", help="write the table into this markdown file (e.g. bench/RESULTS.md)")
    p.add_argument("--grid", default="", help="write the in-context image grid here (e.g. docs/mini_grid.png)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="build: 2 trains the VLM in a second process beside the image stages (default: 2 with "
                        "2 or more CPU cores)")
    p.add_argument("--only", default="", choices=["", "language"], help=argparse.SUPPRESS)
    p.add_argument("--models", default="", help="install: a ComfyUI models folder (e.g. ComfyUI/models)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = args.out or DEFAULT_OUT.format(size=args.size)
    from .build import build
    built = build(args.out, args.size, models_only=args.command == "install", jobs=args.jobs,
                  only=args.only)
    if args.command == "build":
        return 0
    if args.command == "install":
        if not args.models:
            p.error("install needs --models (a ComfyUI models folder)")
        for path in install(built, args.models):
            print("installed", path)
        return 0
    from .evaluate import evaluate, write_grid
    res = evaluate(args.out, args.size)
    rows = res.pop("_grid_rows")
    if args.grid:
        write_grid(rows, args.grid)
    if args.results:
        command = "python -m train mini " + " ".join(sys.argv[1:] if argv is None else argv)
        write_results(args.results, results_table(res, command), args.size)
    print(json.dumps({k: v for k, v in res["conditions"].items() if "/" not in k}, indent=1))
    return 0
