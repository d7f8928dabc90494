"""The ThinkDiff aligner: VLM (or vision) features -> the T5-XXL encoder space that FLUX reads.

Linear(in -> 4096) -> GELU (exact) -> Linear(4096 -> 4096) -> T5 RMSNorm (docs/method.md §1.1).
The module keeps the official ``mm_projector.{0,2,3}`` layout so released checkpoints load
into it key for key.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5LayerNorm

T5_DIM = 4096
LVLM_IN_DIM = 3584   # Qwen2-VL-7B hidden size
CLIP_IN_DIM = 1408   # BLIP-2 EVA-CLIP ViT-g hidden size


class Aligner(nn.Module):
    def __init__(self, in_dim: int = LVLM_IN_DIM, out_dim: int = T5_DIM, hidden_dim: int | None = None,
                 eps: float = 1e-6):
        super().__init__()
        hidden_dim = out_dim if hidden_dim is None else hidden_dim
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mm_projector = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),                      # exact (erf) GELU, PyTorch's default
            nn.Linear(hidden_dim, out_dim),
            T5LayerNorm(out_dim, eps=eps),  # RMS norm: fp32 variance, no mean, no bias
        )

    @property
    def norm(self) -> T5LayerNorm:
        return self.mm_projector[3]

    @torch.no_grad()
    def init_norm_from_t5(self, weight: torch.Tensor) -> "Aligner":
        """Copy a T5 encoder's ``final_layer_norm.weight`` into the output norm (docs/method.md §1.1)."""
        if tuple(weight.shape) != (self.out_dim,):
            raise ValueError(f"T5 final norm has shape {tuple(weight.shape)}; the aligner's output "
                             f"dim is {self.out_dim}")
        self.norm.weight.copy_(weight.to(self.norm.weight))
        return self

    @torch.no_grad()
    def fold_input_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> "Aligner":
        """Make this aligner take raw features when it was trained on (features - mean) / std: the first
        Linear becomes W / std, b - W (mean / std). Exact; the layout (and checkpoint format) is unchanged."""
        first = self.mm_projector[0]
        mean, std = mean.to(first.weight), std.to(first.weight)
        if tuple(mean.shape) != (self.in_dim,) or tuple(std.shape) != (self.in_dim,):
            raise ValueError(f"input statistics have shapes {tuple(mean.shape)} / {tuple(std.shape)}; the aligner's "
                             f"input dim is {self.in_dim}")
        w = first.weight / std
        first.bias.copy_(first.bias - w @ mean)
        first.weight.copy_(w)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[..., in_dim] -> [..., out_dim]; features are cast to the aligner's dtype/device."""
        if features.shape[-1] != self.in_dim:
            raise ValueError(f"aligner expects features of size {self.in_dim} in the last dimension, "
                             f"got {tuple(features.shape)}")
        p = next(self.parameters())
        return self.mm_projector(features.to(device=p.device, dtype=p.dtype))


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
