"""python -m train {precompute,fit,export,tiny-models,mini} [options]; `python -m train COMMAND --help` lists options."""
from __future__ import annotations

import argparse
import sys

from . import config

COMMANDS = {
    "precompute": (config.PrecomputeConfig,
                   "run the VLM over an image(-caption) source with the paper's captioning prompts and write the "
                   "generated tokens' final-norm states, ids and text to webdataset shards (resumable; "
                   "RANK/WORLD_SIZE shard the work)"),
    "fit": (config.FitConfig,
            "train the aligner so a frozen Flan-T5 decoder predicts the suffix of each generation from the "
            "aligned prefix states (random split, AdamW, warm-up + cosine; accelerate/torchrun for DDP; "
            "atomic checkpoints, --resume)"),
    "export": (config.ExportConfig,
               "write a fit checkpoint's aligner as .safetensors with metadata (loadable by "
               "thinkdiff_core.checkpoint.load_aligner and `python -m thinkdiff_core info`)"),
}
EPILOG = """examples (CPU, tiny random models; see train/README.md):
  python -m train tiny-models tiny/
  python -m train precompute --vlm tiny/qwen2vl --data tiny/images --out tiny/feats --shard-size 4 --max-new-tokens 32
  python -m train fit --data tiny/feats --t5 tiny/t5 --out tiny/run --max-steps 50 --batch-size 4 --warmup-steps 10
  python -m train export --run tiny/run --out tiny/aligner.safetensors
  python -m train precompute --variant clip --vision tiny/blip2 --data tiny/images --out tiny/clip_feats --shard-size 4
  python -m train fit --data tiny/clip_feats --t5 tiny/t5 --out tiny/clip_run --max-steps 50 --batch-size 4
options come from defaults (the paper's values) < --config YAML < the command line."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "tiny-models":
        from .tiny import main as tiny_main
        return tiny_main(argv[1:])
    if argv and argv[0] == "mini":
        from .mini.cli import main as mini_main
        return mini_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m train", description="ThinkDiff training package (ThinkDiff-LVLM; ThinkDiff-CLIP with precompute --variant clip).",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, text) in COMMANDS.items():
        config.add_arguments(sub.add_parser(name, help=text, description=text), cls)
    sub.add_parser("mini", help="ThinkDiff-mini: train tiny models on easy-vqa and evaluate the method "
                                "(python -m train mini build|eval --help)")
    sub.add_parser("tiny-models", help="build a tiny random Qwen2-VL, Flan-T5 (real tokenizers) and BLIP-2 and sample "
                                       "photos with captions, for a CPU quick start (python -m train tiny-models OUTDIR)")
    args = p.parse_args(argv)
    cls = COMMANDS[args.command][0]
    cfg = config.from_args(cls, args)
    import importlib
    module = importlib.import_module(f".{args.command}", __package__)
    from .checkpoint import CheckpointWriteError
    try:
        return module.main(cfg)
    except (FileNotFoundError, KeyError, ValueError, CheckpointWriteError) as e:
        if isinstance(e, KeyError):
            e = e.args[0] if e.args else e
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
