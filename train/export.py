"""export: a fit checkpoint -> the aligner as safetensors with metadata (thinkdiff_core's format).

    python -m train export --run runs/lvlm --out thinkdiff_lvlm.safetensors
    python -m thinkdiff_core info thinkdiff_lvlm.safetensors
"""
from __future__ import annotations

import os

from thinkdiff_core.checkpoint import read_checkpoint, save_aligner
from thinkdiff_core.dtypes import parse_dtype

from .checkpoint import load_fit_checkpoint
from .config import ExportConfig, require
from .data import read_provenance


def main(cfg: ExportConfig) -> int:
    require(cfg, "run", "out")
    if not cfg.out.endswith(".safetensors"):
        raise SystemExit(f"error: --out must end in .safetensors: {cfg.out}")
    aligner, ckpt, path = load_fit_checkpoint(cfg.run)
    run_cfg = ckpt["config"]
    provenance = read_provenance(run_cfg.get("data", ""))
    variant = provenance.variant if provenance else "lvlm"
    save_aligner(aligner, cfg.out, variant=variant, dtype=parse_dtype(cfg.dtype),
                 source_vlm=cfg.source_vlm or (provenance.vlm_name if provenance else ""),
                 t5=cfg.t5 or os.path.basename(os.path.normpath(run_cfg.get("t5", ""))),
                 extra={"train_step": str(ckpt["step"]), "train_checkpoint": os.path.basename(path),
                        "train_config": run_cfg})
    print(f"wrote {cfg.out} (from {path}, step {ckpt['step']})")
    print(read_checkpoint(cfg.out)[1].describe())
    return 0
