"""Aligner checkpoints: the official ``thinkdiff_*.pth`` release format and our safetensors format.

Official (docs/method.md §5): ``torch.save({"model": state_dict, "optimizer": ..., ...})`` with exactly
the five keys ``mm_projector.{0.weight,0.bias,2.weight,2.bias,3.weight}``. Loaded with
``torch.load(weights_only=True)`` and checked strictly (the official code used ``strict=False`` and
would silently keep a random aligner on a key mismatch).

Ours: safetensors with the same five keys and string metadata (format, version, variant, dims,
source VLM, the T5 the aligner was fitted to).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field

import torch

from .aligner import CLIP_IN_DIM, LVLM_IN_DIM, Aligner
from .release import ALIGNER_CLIP_FILE, ALIGNER_LVLM_FILE, SOURCE_MODEL, T5_REPO

FORMAT_NAME = "thinkdiff-aligner"
FORMAT_VERSION = "1"
KEYS = ("mm_projector.0.weight", "mm_projector.0.bias", "mm_projector.2.weight",
        "mm_projector.2.bias", "mm_projector.3.weight")
VARIANT_BY_IN_DIM = {LVLM_IN_DIM: "lvlm", CLIP_IN_DIM: "clip"}


class AlignerFileError(ValueError):
    """A file that is not a usable ThinkDiff aligner; the message names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


@dataclass
class AlignerInfo:
    path: str
    format: str            # "official-pth" or "safetensors"
    variant: str           # "lvlm", "clip" or "unknown"
    in_dim: int
    hidden_dim: int
    out_dim: int
    num_params: int
    dtype: str
    has_optimizer: bool = False
    metadata: dict = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"file:        {self.path}",
                 f"format:      {self.format}",
                 f"variant:     {self.variant}",
                 f"dims:        {self.in_dim} -> {self.hidden_dim} -> {self.out_dim}",
                 f"parameters:  {self.num_params:,}",
                 f"dtype:       {self.dtype}"]
        if self.format == "official-pth":
            lines.append(f"optimizer:   {'present (ignored)' if self.has_optimizer else 'absent'}")
        for k, v in sorted(self.metadata.items()):
            if k not in ("format", "variant", "in_dim", "out_dim", "hidden_dim"):
                lines.append(f"{k + ':':<12} {v}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


def _check_state_dict(path: str, sd: dict) -> tuple[int, int, int]:
    """Strict check of the five tensors and their shapes; returns (in_dim, hidden_dim, out_dim)."""
    if not isinstance(sd, dict):
        raise AlignerFileError(path, f"expected a state dict of tensors, found {type(sd).__name__}")
    missing = [k for k in KEYS if k not in sd]
    extra = sorted(k for k in sd if k not in KEYS)
    if missing or extra:
        shown = ", ".join(extra[:5]) + (f" ... ({len(extra)} in all)" if len(extra) > 5 else "")
        raise AlignerFileError(
            path, "not a ThinkDiff aligner: expected exactly the tensors " + ", ".join(KEYS)
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {shown}" if extra else ""))
    for k in KEYS:
        if not isinstance(sd[k], torch.Tensor):
            raise AlignerFileError(path, f"{k} is a {type(sd[k]).__name__}, expected a tensor")
    w0, b0, w2, b2, g = (sd[k] for k in KEYS)
    if w0.ndim != 2 or w2.ndim != 2:
        raise AlignerFileError(path, f"linear weights must be 2-D, got mm_projector.0.weight "
                                     f"{tuple(w0.shape)} and mm_projector.2.weight {tuple(w2.shape)}")
    hidden, in_dim = w0.shape
    out_dim = w2.shape[0]
    expected = {"mm_projector.0.bias": (hidden,), "mm_projector.2.weight": (out_dim, hidden),
                "mm_projector.2.bias": (out_dim,), "mm_projector.3.weight": (out_dim,)}
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise AlignerFileError(path, f"{k} has shape {tuple(sd[k].shape)}, expected {shape} "
                                         f"(from mm_projector.0.weight {tuple(w0.shape)})")
    return int(in_dim), int(hidden), int(out_dim)


_NOT_A_CHECKPOINT = (f"not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file that loads: "
                     f"truncated, or a different kind of file). Expected the official {ALIGNER_LVLM_FILE} / "
                     f"{ALIGNER_CLIP_FILE} or a .safetensors aligner")


def _read_pth(path: str) -> tuple[dict, bool]:
    """torch.load with weights_only=True (zip archives and the legacy torch.save format); never
    unpickles anything but tensors and plain containers."""
    import pickle
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        unsafe = re.search(r"GLOBAL ([\w.]+)", text)
        if "Weights only load failed" in text and unsafe:
            raise AlignerFileError(
                path, f"refused: besides tensors the file holds a pickled Python object ({unsafe.group(1)}), and "
                      f"unpickling it could run code. ThinkDiff reads checkpoints only with weights_only=True. "
                      f"If you trust the file, re-save just its state dict (torch.save({{'model': state_dict}}, ...)) "
                      f"or convert it to .safetensors on a machine where running its code is acceptable") from None
        raise AlignerFileError(path, _NOT_A_CHECKPOINT + f" ({text.splitlines()[0][:160]})") from None
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file fails in many ways inside the unpickler
        raise AlignerFileError(path, _NOT_A_CHECKPOINT
                               + f" ({e.__class__.__name__}: {str(e).splitlines()[0][:160] if str(e) else '-'})") from None
    if isinstance(obj, dict) and "model" in obj:
        return obj["model"], "optimizer" in obj and obj["optimizer"] is not None
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, False  # a bare state dict
    raise AlignerFileError(path, 'expected {"model": state_dict, ...} as in the official release; '
                                 f"found {type(obj).__name__} with keys {list(obj)[:5] if isinstance(obj, dict) else '-'}")


def _read_safetensors(path: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise AlignerFileError(path, f"not a readable safetensors file (truncated or corrupt?): {e}") from e
    return sd, meta


def _existing_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AlignerFileError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise AlignerFileError(path, "file is empty")
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, AlignerInfo]:
    """Read and strictly check an aligner file. Returns (state_dict, info)."""
    path = _existing_file(path)
    if path.endswith(".safetensors"):
        sd, meta = _read_safetensors(path)
        fmt, has_opt = "safetensors", False
    else:
        (sd, has_opt), meta, fmt = _read_pth(path), {}, "official-pth"
    in_dim, hidden, out_dim = _check_state_dict(path, sd)
    variant = meta.get("variant") or VARIANT_BY_IN_DIM.get(in_dim, "unknown")
    info = AlignerInfo(path=path, format=fmt, variant=variant, in_dim=in_dim, hidden_dim=hidden, out_dim=out_dim,
                       num_params=sum(t.numel() for t in sd.values()),
                       dtype=str(sd["mm_projector.0.weight"].dtype).replace("torch.", ""),
                       has_optimizer=has_opt, metadata=meta)
    return sd, info


def peek_dims(path: str | os.PathLike) -> tuple[int, int]:
    """(in_dim, out_dim) of an aligner file without building it: the safetensors header, or a
    memory-mapped weights_only torch.load (a legacy file is read whole). For checks that must come before
    expensive work (the VLM's generation); raises :class:`AlignerFileError` like :func:`read_checkpoint`."""
    path = _existing_file(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k in KEYS}
        except (SafetensorError, OSError, ValueError) as e:
            raise AlignerFileError(path, f"not a readable safetensors file (truncated or corrupt?): {e}") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            sd = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
            shapes = {k: tuple(v.shape) for k, v in sd.items() if k in KEYS and isinstance(v, torch.Tensor)}
        except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mapped; the full reader explains the rest
            sd, _ = _read_pth(path)
            shapes = {k: tuple(v.shape) for k, v in sd.items() if k in KEYS and isinstance(v, torch.Tensor)}
    w0, w2 = shapes.get("mm_projector.0.weight"), shapes.get("mm_projector.2.weight")
    if w0 is None or w2 is None or len(w0) != 2 or len(w2) != 2:
        info = read_checkpoint(path)[1]   # raises with a message that says what is wrong
        return info.in_dim, info.out_dim
    return int(w0[1]), int(w2[0])


def load_aligner(path: str | os.PathLike, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu") -> tuple[Aligner, AlignerInfo]:
    """Build an :class:`Aligner` from a file. ``dtype=None`` keeps the stored dtype."""
    sd, info = read_checkpoint(path)
    aligner = Aligner(info.in_dim, info.out_dim, info.hidden_dim)
    aligner.load_state_dict(sd, strict=True)
    aligner.to(device=device, dtype=dtype or sd["mm_projector.0.weight"].dtype)
    return aligner.eval().requires_grad_(False), info


def save_aligner(aligner: Aligner, path: str | os.PathLike, *, variant: str | None = None,
                 source_vlm: str = "", t5: str = "", dtype: torch.dtype | None = None,
                 extra: dict | None = None) -> str:
    """Write an aligner as safetensors with metadata (atomically: a temp file, then rename)."""
    from safetensors.torch import save_file
    path = os.fspath(path)
    sd = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in aligner.state_dict().items()}
    in_dim, hidden, out_dim = _check_state_dict(path, sd)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "variant": variant or VARIANT_BY_IN_DIM.get(in_dim, "lvlm"),
            "in_dim": str(in_dim), "hidden_dim": str(hidden), "out_dim": str(out_dim),
            "source_vlm": source_vlm, "t5": t5}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype | None = None,
            source_vlm: str | None = None, t5: str | None = None) -> AlignerInfo:
    """Official ``.pth`` (or any aligner file) -> our safetensors format; returns the new file's info."""
    aligner, info = load_aligner(src)
    default_vlm = SOURCE_MODEL.get(info.variant, "")
    save_aligner(aligner, dst, variant=info.variant, dtype=dtype,
                 source_vlm=source_vlm if source_vlm is not None else info.metadata.get("source_vlm", default_vlm),
                 t5=t5 if t5 is not None else info.metadata.get("t5", T5_REPO),
                 extra={"converted_from": os.path.basename(os.fspath(src))})
    return read_checkpoint(dst)[1]
