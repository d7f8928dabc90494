"""From VLM hidden states to FLUX prompt embeddings (spec sections 4.1 and 4.3).

FLUX reads [B, L, 4096] T5-XXL encoder states plus a CLIP-L pooled vector [B, 768]. ThinkDiff's LVLM
variant replaces the T5 states by the aligned VLM rows; optionally they are combined with real T5
text states (concatenated before or after, each part with its own strength).
"""
from __future__ import annotations

import logging

import torch

from .aligner import Aligner

log = logging.getLogger("thinkdiff")

POOLED_DIM = 768
MODES = ("replace", "aligned_first", "text_first")


@torch.inference_mode()
def align(aligner: Aligner, hidden: torch.Tensor) -> torch.Tensor:
    """VLM rows [N, D] or [B, N, D] -> aligned prompt embeddings [B, N, out_dim] in float32."""
    if hidden.ndim == 2:
        hidden = hidden.unsqueeze(0)
    if hidden.ndim != 3:
        raise ValueError(f"expected hidden states [N, D] or [B, N, D], got {tuple(hidden.shape)}")
    if hidden.shape[-1] != aligner.in_dim:
        raise ValueError(f"the VLM's hidden size is {hidden.shape[-1]} but the aligner expects {aligner.in_dim}: "
                         f"this aligner was trained for a different VLM")
    return aligner(hidden).float()


def pooled_vector(pooled: torch.Tensor | None, batch: int = 1, dim: int = POOLED_DIM) -> torch.Tensor:
    """The CLIP-L pooled vector FLUX needs. ThinkDiff uses CLIP-L's pooled output of the empty prompt;
    zeros are a fallback and are logged, since they change FLUX's global modulation."""
    if pooled is None:
        log.warning("ThinkDiff: no CLIP-L pooled vector given, using zeros; connect a CLIP-L text "
                    "encoder for results faithful to the paper (pooled output of the empty prompt)")
        return torch.zeros(batch, dim)
    pooled = pooled.float()
    if pooled.ndim == 1:
        pooled = pooled.unsqueeze(0)
    if pooled.shape[0] != batch:
        pooled = pooled[:1].expand(batch, -1)
    return pooled


def combine(aligned: torch.Tensor, text: torch.Tensor | None = None, mode: str = "replace",
            aligned_strength: float = 1.0, text_strength: float = 1.0) -> torch.Tensor:
    """Combine aligned tokens [B, N, C] with optional T5 text states [B, L, C] along the sequence.

    replace: aligned tokens only (the paper's LVLM setting); aligned_first: [aligned ; text];
    text_first: [text ; aligned]. Each part is multiplied by its strength.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    a = aligned.float() * aligned_strength
    if mode == "replace" or text is None:
        return a
    t = text.to(a.device, torch.float32) * text_strength
    if t.shape[-1] != a.shape[-1]:
        raise ValueError(f"text embeddings have width {t.shape[-1]}, aligned tokens {a.shape[-1]}: "
                         f"both must be T5-XXL states (4096)")
    if t.shape[0] != a.shape[0]:
        if t.shape[0] == 1:
            t = t.expand(a.shape[0], -1, -1)
        elif a.shape[0] == 1:
            a = a.expand(t.shape[0], -1, -1)
        else:
            raise ValueError(f"batch sizes differ: aligned {a.shape[0]}, text {t.shape[0]}")
    return torch.cat([a, t] if mode == "aligned_first" else [t, a], dim=1)
