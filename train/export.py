"""export: a fit checkpoint -> the aligner as safetensors with metadata (thinkdiff_core's format).

    python -m train export --run runs/lvlm --out thinkdiff_lvlm.safetensors
    python -m thinkdiff_core info thinkdiff_lvlm.safetensors
"""
from __future__ import annotations

import json
import os

import torch

from thinkdiff_core.aligner import Aligner
from thinkdiff_core.checkpoint import read_checkpoint, save_aligner
from thinkdiff_core.dtypes import DTYPES

from .config import ExportConfig, require
from .fit import checkpoints



def load_fit_checkpoint(run: str) -> tuple[Aligner, dict, str]:
    """(aligner, checkpoint dict, path) from a run folder (latest checkpoint) or a checkpoint file."""
    if os.path.isdir(run):
        found = checkpoints(run)
        if not found:
            raise FileNotFoundError(f"run: no checkpoints in {run}/checkpoints (has `fit` run there?)")
        path = found[-1]
    elif os.path.isfile(run):
        path = run
    else:
        raise FileNotFoundError(f"run: not found: {run}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "aligner" not in ckpt or "dims" not in ckpt:
        raise ValueError(f"run: {path} is not a checkpoint written by `python -m train fit`")
    in_dim, hidden, out_dim = ckpt["dims"]
    aligner = Aligner(in_dim, out_dim, hidden)
    aligner.load_state_dict(ckpt["aligner"], strict=True)
    return aligner, ckpt, path


def source_vlm_name(data: str) -> str:
    first = data.split(",")[0].strip()
    meta = os.path.join(first if os.path.isdir(first) else os.path.dirname(first), "precompute.json")
    if os.path.isfile(meta):
        with open(meta) as fh:
            return json.load(fh).get("vlm_name", "")
    return ""


def main(cfg: ExportConfig) -> int:
    require(cfg, "run", "out")
    if not cfg.out.endswith(".safetensors"):
        raise SystemExit(f"error: --out must end in .safetensors: {cfg.out}")
    if cfg.dtype not in DTYPES:
        raise SystemExit(f"error: --dtype must be one of {', '.join(DTYPES)}")
    aligner, ckpt, path = load_fit_checkpoint(cfg.run)
    run_cfg = ckpt["config"]
    save_aligner(aligner, cfg.out, variant="lvlm", dtype=DTYPES[cfg.dtype],
                 source_vlm=cfg.source_vlm or source_vlm_name(run_cfg.get("data", "")),
                 t5=cfg.t5 or os.path.basename(os.path.normpath(run_cfg.get("t5", ""))),
                 extra={"train_step": str(ckpt["step"]), "train_checkpoint": os.path.basename(path),
                        "train_config": run_cfg})
    print(f"wrote {cfg.out} (from {path}, step {ckpt['step']})")
    print(read_checkpoint(cfg.out)[1].describe())
    return 0
