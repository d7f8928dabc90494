"""``python -m thinkdiff_core info FILE`` and ``python -m thinkdiff_core convert IN.pth OUT.safetensors``."""
from __future__ import annotations

import argparse
import json
import sys

from . import dtypes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m thinkdiff_core", description="ThinkDiff aligner file tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="variant, dims, parameter count and dtype of an aligner file")
    pi.add_argument("file")
    pi.add_argument("--json", action="store_true", help="print machine-readable JSON")
    pc = sub.add_parser("convert", help="official .pth -> safetensors with metadata")
    pc.add_argument("src")
    pc.add_argument("dst")
    pc.add_argument("--dtype", choices=["keep", *dtypes.choices()], default="keep")
    pc.add_argument("--source-vlm", default=None, help="VLM the aligner reads (stored in the metadata)")
    pc.add_argument("--t5", default=None, help="T5 the aligner was fitted to (stored in the metadata)")
    pd = sub.add_parser("demo", help="the core pipeline on tiny random models (CPU): prints the VLM text "
                                     "and the FLUX prompt-embedding shape")
    pd.add_argument("--max-new-tokens", type=int, default=128)
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--cache", default=None, help="folder for the tiny models (default: ~/.cache/thinkdiff/demo_core)")
    pd.add_argument("--comfyui", default=None, help="ComfyUI folder whose Qwen2 tokenizer the tiny VLM uses "
                                                    "(default: $COMFYUI_DIR)")
    args = p.parse_args(argv)
    if args.cmd == "demo":
        from .demo import run
        try:
            r = run(cache=args.cache, max_new_tokens=args.max_new_tokens, seed=args.seed, comfyui_dir=args.comfyui)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"VLM text ({r['tokens']} tokens, random tiny model): {r['text']}")
        print(f"hidden rows: {list(r['rows'])}")
        print(f"prompt embeddings for FLUX: {r['prompt_embeds']}; pooled: {r['pooled']}")
        return 0

    from .checkpoint import AlignerFileError, convert, read_checkpoint
    try:
        if args.cmd == "info":
            info = read_checkpoint(args.file)[1]
            print(json.dumps(info.as_dict(), indent=2) if args.json else info.describe())
        else:
            dtype = None if args.dtype == "keep" else dtypes.parse_dtype(args.dtype)
            if not args.dst.endswith(".safetensors"):
                p.error(f"output must end in .safetensors: {args.dst}")
            info = convert(args.src, args.dst, dtype=dtype, source_vlm=args.source_vlm, t5=args.t5)
            print(f"wrote {args.dst}\n" + info.describe())
    except AlignerFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
