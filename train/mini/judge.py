"""The judge: a small CNN that reads an image's colour and shape, trained only on real easy-vqa images
(never on generated ones), so its score on a generated image says whether it looks like what was asked."""
from __future__ import annotations

import torch
from torch import nn

from . import data


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
            c, s = self(x[i:i + batch].clamp(0, 1))
            out.append(torch.stack([c.argmax(-1), s.argmax(-1)], -1))
        return torch.cat(out)


def train_judge(images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int = 64, lr: float = 2e-3,
                seed: int = 0, log=print) -> Judge:
    torch.manual_seed(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        x = images[idx]
        x = torch.where((torch.rand(batch, generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
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
