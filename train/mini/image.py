"""ThinkDiff-mini's image model: a TAESD-layout autoencoder and a tiny SD3-layout MMDiT (diffusers
``SD3Transformer2DModel``) conditioned only on the tiny T5's encoder states, both saved so that ComfyUI's
stock "Load VAE" and "Load Diffusion Model" detect and run them (../shared/reference/mini-comfyui-models.md).

ComfyUI conventions the training follows, so that its KSampler reproduces what is trained here:
- TAESD (comfy/taesd/taesd.py): the encoder reads [0, 1] pixels, the decoder starts with a soft clamp
  ``tanh(x/3)*3`` and returns [0, 1]; ComfyUI's encode is ``enc(x)/vae_scale + vae_shift`` and its decode
  ``dec((z - vae_shift) * vae_scale)``.
- SD3 latent format (comfy/latent_formats.py ``SD3``): the model sees ``(z - 0.0609) * 1.5305``. The
  saved ``vae_scale`` / ``vae_shift`` are chosen so that this is the standardised encoder output,
  ``(enc - mean) / std``: the "model space" ``m`` below.
- SD3 sampling (comfy/model_sampling.py ``ModelSamplingDiscreteFlow``, shift 3.0, multiplier 1000): the
  model gets ``timestep = 1000 * sigma`` and predicts ``noise - x0`` (rectified flow); ``x_sigma =
  (1 - sigma) x0 + sigma * noise``; the "simple" scheduler takes every (1000/steps)-th of the 1000
  shifted sigmas, from 1 down.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """Every mini stage's learning rate: linear warm-up over `warmup` steps, then cosine decay to 0.1 x lr."""
    return lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))


SD3_SCALE, SD3_SHIFT = 1.5305, 0.0609     # comfy.latent_formats.SD3
SD3_SAMPLING_SHIFT = 3.0                  # comfy.supported_models.SD3 sampling_settings
LATENT_CHANNELS = 16
POOLED_DIM = 768                          # what the ThinkDiff Conditioning node emits (zeros without CLIP)


# ---- TAESD, ComfyUI's layout (comfy/taesd/taesd.py), so the state dict loads as is ----
def _conv(n_in, n_out, **kw):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


class TAESD(nn.Module):
    """Tiny autoencoder: [B, 3, H, W] in [0, 1] <-> [B, 16, H/8, W/8]."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS):
        super().__init__()
        B = _Block
        self.taesd_encoder = nn.Sequential(
            _conv(3, 64), B(64, 64),
            _conv(64, 64, stride=2, bias=False), B(64, 64), B(64, 64), B(64, 64),
            _conv(64, 64, stride=2, bias=False), B(64, 64), B(64, 64), B(64, 64),
            _conv(64, 64, stride=2, bias=False), B(64, 64), B(64, 64), B(64, 64),
            _conv(64, latent_channels))
        self.taesd_decoder = nn.Sequential(
            _Clamp(), _conv(latent_channels, 64), nn.ReLU(),
            B(64, 64), B(64, 64), B(64, 64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
            B(64, 64), B(64, 64), B(64, 64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
            B(64, 64), B(64, 64), B(64, 64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
            B(64, 64), _conv(64, 3))
        # standardisation of the encoder output (set after training by set_latent_stats)
        self.register_buffer("latent_mean", torch.zeros(()))
        self.register_buffer("latent_std", torch.ones(()))
        self._blocks_zero = None   # set on first encode (weights are loaded after __init__)

    def _run(self, seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """seq(x); through :func:`_shallow` while every Block's last convolution is zero (as
        :func:`train_autoencoder` leaves them): both give the same numbers then, the shallow one ~10x faster."""
        if self._blocks_zero is None:
            self._blocks_zero = all(not m.conv[4].weight.any() and not m.conv[4].bias.any()
                                    for m in self.modules() if isinstance(m, _Block))
        return _shallow(seq, x) if self._blocks_zero else seq(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> model-space latents (standardised)."""
        return (self._run(self.taesd_encoder, x) - self.latent_mean) / self.latent_std

    def decode(self, m: torch.Tensor) -> torch.Tensor:
        """model-space latents -> [0, 1] pixels (not clamped)."""
        return self._run(self.taesd_decoder, m * self.latent_std + self.latent_mean)

    @torch.no_grad()
    def set_latent_stats(self, images: torch.Tensor, batch: int = 256) -> None:
        enc = torch.cat([self._run(self.taesd_encoder, images[i:i + batch]) for i in range(0, len(images), batch)])
        self.latent_mean.fill_(enc.mean())
        self.latent_std.fill_(enc.std())

    def comfy_state_dict(self) -> dict:
        """The state dict ComfyUI's VAE loader detects as TAESD (``taesd_decoder.1.weight``), with the
        vae_scale / vae_shift that make ComfyUI's SD3 latent format equal to :meth:`encode`."""
        sd = {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()
              if k.startswith(("taesd_encoder.", "taesd_decoder."))}
        scale = SD3_SCALE * float(self.latent_std)
        sd["vae_scale"] = torch.tensor(scale)
        sd["vae_shift"] = torch.tensor(SD3_SHIFT - float(self.latent_mean) / scale)
        return sd

    @classmethod
    def from_comfy_state_dict(cls, sd: dict) -> "TAESD":
        m = cls(sd["taesd_decoder.1.weight"].shape[1])
        missing, unexpected = m.load_state_dict({k: v for k, v in sd.items() if k.startswith("taesd_")}, strict=False)
        if unexpected or set(missing) - {"latent_mean", "latent_std"}:   # those two come from vae_scale / vae_shift
            raise ValueError(f"not a ThinkDiff-mini TAESD file: missing {missing[:4]}, unexpected {unexpected[:4]}")
        scale, shift = float(sd["vae_scale"]), float(sd["vae_shift"])
        m.latent_std.fill_(scale / SD3_SCALE)
        m.latent_mean.fill_((SD3_SHIFT - shift) * scale)
        return m.eval()


def foreground_weight(x: torch.Tensor, boost: float = 20.0) -> torch.Tensor:
    """Per-pixel loss weight [B, 1, H, W]: 1 on the background (the image's median colour), up to 1 + boost
    on the shape, which covers a small part of an easy-vqa image and would otherwise be learnt last."""
    bg = x.flatten(2).median(dim=2).values[:, :, None, None]
    return 1 + boost * (x - bg).abs().amax(dim=1, keepdim=True)


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def _shallow(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The network with every residual Block replaced by its ReLU: exactly what the full network computes
    while the Blocks' last convolutions are zero, at a fraction of the cost."""
    for m in seq:
        x = torch.relu(x) if isinstance(m, _Block) else m(x)
    return x


def train_autoencoder(images: torch.Tensor, steps: int, batch: int = 32, lr: float = 3e-3, seed: int = 0,
                      edge_weight: float = 1.0, channels_last: bool = False, log=print) -> TAESD:
    """Reconstruction of [N, 3, H, W] images in [0, 1] (horizontal flips): foreground-weighted MSE plus an
    L1 term on the horizontal and vertical differences (sharper edges, so shapes survive).

    Only the layers between the residual Blocks are trained; the Blocks' last convolutions are zero, so each
    Block is a ReLU and the trained network is a plain 5-layer encoder and decoder. That is about 10x cheaper
    per step on a CPU than the whole TAESD and converged much further in the same time here
    (bench/RESULTS.md); the saved file is still the whole TAESD layout that ComfyUI loads.

    ``channels_last``: the convolutions in oneDNN's fast layout on a CPU, 1.6x faster per step
    (bench/bench_mini_steps.py) and as good an autoencoder (test MSE 0.0036), other floats only; the build
    uses it (bench/RESULTS.md). The returned model is contiguous either way. bf16 autocast, faster still,
    converged to twice the test MSE on a Xeon with AMX."""
    torch.manual_seed(seed)
    ae = TAESD()
    for m in ae.modules():
        if isinstance(m, _Block):
            nn.init.zeros_(m.conv[4].weight)
            nn.init.zeros_(m.conv[4].bias)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    ae = ae.to(memory_format=layout)
    params = [p for n, p in ae.named_parameters() if ".conv." not in n]   # everything but the Blocks' insides
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        x = images[idx]
        flip = torch.rand(batch, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 50)
        y = _shallow(ae.taesd_decoder, _shallow(ae.taesd_encoder, x.contiguous(memory_format=layout)))
        loss = ((y - x).pow(2) * foreground_weight(x)).mean()
        if edge_weight:
            loss = loss + edge_weight * sum((a - b).abs().mean() for a, b in zip(_edges(y), _edges(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  autoencoder step {step}/{steps} loss {loss.item():.4f}")
    ae = ae.to(memory_format=torch.contiguous_format).eval()
    ae.set_latent_stats(images)
    return ae


# ---- the MMDiT (diffusers SD3 layout; ComfyUI converts its keys and detects "SD3") ----
def build_dit(context_dim: int, depth: int = 2, latent_size: int = 4, patch_size: int = 2, seed: int = 0):
    # patch 2: ComfyUI's MMDiT crops its position table to (h + 1) // patch, which is only h / patch for 2
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=latent_size, patch_size=patch_size, in_channels=LATENT_CHANNELS, num_layers=depth,
        attention_head_dim=64, num_attention_heads=depth,           # ComfyUI reads SD3 as hidden = 64 * depth
        joint_attention_dim=context_dim, caption_projection_dim=64 * depth,
        pooled_projection_dim=POOLED_DIM, out_channels=LATENT_CHANNELS, pos_embed_max_size=latent_size // patch_size)


def dit_velocity(dit, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The model's output (noise - x0 prediction) at noise level sigma [B]; pooled vector zeros."""
    pooled = torch.zeros(x.shape[0], POOLED_DIM, dtype=x.dtype, device=x.device)
    return dit(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
               timestep=sigma * 1000.0, return_dict=False)[0]


def shift_sigma(t: torch.Tensor, shift: float = SD3_SAMPLING_SHIFT) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def comfy_sigmas(steps: int, shift: float = SD3_SAMPLING_SHIFT) -> torch.Tensor:
    """ComfyUI's "simple" scheduler over ModelSamplingDiscreteFlow's 1000 shifted sigmas, then 0."""
    table = shift_sigma(torch.arange(1, 1001, dtype=torch.float64) / 1000.0, shift)
    ss = len(table) / steps
    return torch.tensor([float(table[-(1 + int(i * ss))]) for i in range(steps)] + [0.0])


def pad_contexts(contexts: list[torch.Tensor]) -> torch.Tensor:
    """[T_i, C] states -> [B, max T, C], zero-padded (zeros are also the unconditional context)."""
    n = max(c.shape[0] for c in contexts)
    out = torch.zeros(len(contexts), n, contexts[0].shape[-1])
    for i, c in enumerate(contexts):
        out[i, :c.shape[0]] = c
    return out


def train_dit(latents: torch.Tensor, cond_index: torch.Tensor, contexts: list[list[torch.Tensor]], steps: int,
              context_dim: int, depth: int = 2, batch: int = 64, lr: float = 1e-3, uncond_p: float = 0.1,
              cond_noise: float = 0.5, token_drop: float = 0.15, ema: float = 0.998, seed: int = 0, log=print):
    """Rectified flow on model-space latents [N, 16, h, w]. Sample i is conditioned on one of the contexts
    of its class ``contexts[cond_index[i]]`` (T5 encoder states of the caption templates), replaced by
    zeros with probability ``uncond_p`` (for CFG). Conditioning augmentation: Gaussian noise of std
    ~U(0, cond_noise) relative to the states' RMS, and each token zeroed with probability token_drop."""
    import copy
    torch.manual_seed(seed)
    dit = build_dit(context_dim, depth, latent_size=latents.shape[-1], seed=seed)
    avg = copy.deepcopy(dit).requires_grad_(False)
    opt = torch.optim.AdamW(dit.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    rms = torch.cat([c for group in contexts for c in group]).pow(2).mean().sqrt()
    for step in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=g)
        x0 = latents[idx]
        ctx = pad_contexts([contexts[int(cond_index[i])][int(torch.randint(len(contexts[int(cond_index[i])]), (1,),
                                                                              generator=g))] for i in idx])
        if cond_noise > 0:
            ctx = ctx + torch.randn(ctx.shape, generator=g) * rms * torch.rand(batch, 1, 1, generator=g) * cond_noise
        if token_drop > 0:
            ctx = ctx * (torch.rand(batch, ctx.shape[1], 1, generator=g) >= token_drop)
        ctx = ctx * (torch.rand(batch, 1, 1, generator=g) >= uncond_p)
        sigma = shift_sigma(torch.rand(batch, generator=g))
        noise = torch.randn(x0.shape, generator=g)
        s = sigma[:, None, None, None]
        xt = (1 - s) * x0 + s * noise
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 100)
        loss = (dit_velocity(dit, xt, sigma, ctx) - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema, (1 + step) / (10 + step))
            for pa, pm in zip(avg.parameters(), dit.parameters()):
                pa.mul_(d).add_(pm.detach(), alpha=1 - d)
        if step % 200 == 0 or step == steps - 1:
            log(f"  image model step {step}/{steps} loss {loss.item():.4f}")
    return avg.eval()


@torch.no_grad()
def sample(dit, context: torch.Tensor, noise: torch.Tensor, steps: int = 20, cfg: float = 3.0) -> torch.Tensor:
    """ComfyUI's KSampler (euler, simple scheduler, SD3 shift) with the unconditional branch on a zeroed
    context (ComfyUI's ConditioningZeroOut): model-space latents from noise [B, 16, h, w]."""
    sigmas = comfy_sigmas(steps)
    x = noise * sigmas[0]
    uncond = torch.zeros_like(context)
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        sig = torch.full((x.shape[0],), s)
        if cfg == 1.0:
            v = dit_velocity(dit, x, sig, context)
        else:
            both = dit_velocity(dit, torch.cat([x, x]), torch.cat([sig, sig]), torch.cat([context, uncond]))
            vc, vu = both.chunk(2)
            v = vu + cfg * (vc - vu)
        x = x + (s_next - s) * v      # euler on dx/dsigma = (x - denoised) / sigma = v
    return x


def comfy_noise(seed: int, shape) -> torch.Tensor:
    """The initial noise ComfyUI's KSampler draws for a latent of this shape (comfy.sample.prepare_noise)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
