"""The judge: a small CNN that reads an image's colour and shape, trained only on real easy-vqa images
(never on generated ones), so its score on a generated image says whether it looks like what was asked.

It reads images at JUDGE_SIZE (larger ones are area-downsampled) and is trained with random Gaussian blur
on the real images, so that it reads the colour and shape of a soft-edged picture (what a tiny
autoencoder decodes) rather than failing on its edges; it still never sees a generated image."""
from __future__ import annotations

import torch
from torch import nn

from . import data

JUDGE_SIZE = 32
BLUR_MAX = 1.5        # Gaussian blur sigma ~ U(0, BLUR_MAX) pixels at JUDGE_SIZE, during training


def to_judge_size(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-1] == JUDGE_SIZE else nn.functional.interpolate(x, size=JUDGE_SIZE, mode="area")


def random_blur(x: torch.Tensor, g: torch.Generator, sigma_max: float = BLUR_MAX) -> torch.Tensor:
    """Each image blurred with its own sigma ~ U(0, sigma_max) (separable 9-tap Gaussian, edges replicated)."""
    sigma = (torch.rand(len(x), generator=g) * sigma_max).clamp_min(1e-3)
    k = torch.arange(-4, 5, dtype=x.dtype)
    w = torch.exp(-k[None] ** 2 / (2 * sigma[:, None] ** 2))
    w = (w / w.sum(1, keepdim=True)).repeat_interleave(x.shape[1], 0)        # [B*C, 9]
    y = x.reshape(1, -1, *x.shape[-2:])
    y = nn.functional.conv2d(nn.functional.pad(y, (4, 4, 0, 0), mode="replicate"), w[:, None, None, :], groups=len(w))
    y = nn.functional.conv2d(nn.functional.pad(y, (0, 0, 4, 4), mode="replicate"), w[:, None, :, None], groups=len(w))
    return y.reshape(x.shape)


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.colour = nn.Linear(64, len(data.COLOURS))
        self.shape = nn.Linear(64, len(data.SHAPES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x * 2 - 1)
        return self.colour(h), self.shape(h)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> [N, 2] (colour index, shape index)."""
        out = []
        for i in range(0, len(x), batch):
            c, s = self(to_judge_size(x[i:i + batch].clamp(0, 1)))
            out.append(torch.stack([c.argmax(-1), s.argmax(-1)], -1))
        return torch.cat(out)


def train_judge(images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int = 64, lr: float = 2e-3,
                seed: int = 0, blur_max: float = BLUR_MAX, log=print) -> Judge:
    """On real images only (any size; read at JUDGE_SIZE), with flips and random blur."""
    images = to_judge_size(images)
    torch.manual_seed(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        x = images[idx]
        x = torch.where((torch.rand(batch, generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
        if blur_max > 0:
            x = random_blur(x, g, blur_max)
        c, s = judge(x)
        loss = nn.functional.cross_entropy(c, labels[idx, 0]) + nn.functional.cross_entropy(s, labels[idx, 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"  judge step {step}/{steps} loss {loss.item():.4f}")
    return judge.eval()


def score(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Fractions right: colour, shape, both."""
    c = (pred[:, 0] == target[:, 0]).float()
    s = (pred[:, 1] == target[:, 1]).float()
    return {"colour": c.mean().item(), "shape": s.mean().item(), "both": (c * s).mean().item(), "n": len(pred)}
