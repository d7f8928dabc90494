"""Training checkpoints of `fit`: RUN/checkpoints/step_XXXXXXXX.pt (the exported aligner is another
format, thinkdiff_core.checkpoint).

A checkpoint is a torch.save'd dict of plain tensors and Python values, read back with
``torch.load(weights_only=True)``:

    format, format_version   FORMAT / VERSION below; checked on every read
    step                     optimizer steps done
    aligner, optimizer, scheduler   state dicts
    positions, rng           every process's data position and RNG states (index = rank)
    world_size               processes of the run (a resume must use as many)
    config                   the FitConfig as a dict
    dims                     [in_dim, hidden_dim, out_dim] of the aligner

Files are written to a temp name, fsync'ed and renamed, so a killed run never leaves half a file;
only the last `keep` are kept.
"""
from __future__ import annotations

import glob
import os

import torch

from thinkdiff_core.aligner import Aligner

FORMAT = "thinkdiff-train-checkpoint"
VERSION = 1


def folder(out: str) -> str:
    return os.path.join(out, "checkpoints")


def list_checkpoints(out: str) -> list[str]:
    """The checkpoints of a run folder, oldest first."""
    return sorted(glob.glob(os.path.join(folder(out), "step_*.pt")))


def save(out: str, state: dict, keep: int) -> str:
    """Write state (with the format name and version added) atomically: a temp file, fsync, rename;
    then delete all but the last `keep` checkpoints. Returns the path."""
    os.makedirs(folder(out), exist_ok=True)
    name = f"step_{state['step']:08d}.pt"
    final, tmp = os.path.join(folder(out), name), os.path.join(folder(out), f".{name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save({"format": FORMAT, "format_version": VERSION, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        os.remove(old)
    return final


def load(path: str) -> dict:
    """A checkpoint written by `save`; ValueError naming the file if it is not one, or of another version."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path} is not a checkpoint written by `python -m train fit` "
                         f"(torch.load failed: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a checkpoint written by `python -m train fit` "
                         f"(format {found!r}, expected {FORMAT!r})")
    if ckpt.get("format_version") != VERSION:
        raise ValueError(f"{path} is a {FORMAT} of version {ckpt.get('format_version')!r}; this code reads "
                         f"version {VERSION}")
    return ckpt


def find(run: str) -> str:
    """The latest checkpoint of a run folder, or `run` itself if it is a file."""
    if os.path.isdir(run):
        found = list_checkpoints(run)
        if not found:
            raise FileNotFoundError(f"run: no checkpoints in {folder(run)} (has `fit` run there?)")
        return found[-1]
    if os.path.isfile(run):
        return run
    raise FileNotFoundError(f"run: not found: {run}")


def aligner_of(ckpt: dict) -> Aligner:
    """The checkpoint's aligner (fp32, on the CPU)."""
    in_dim, hidden, out_dim = ckpt["dims"]
    aligner = Aligner(in_dim, out_dim, hidden)
    aligner.load_state_dict(ckpt["aligner"], strict=True)
    return aligner


def load_fit_checkpoint(run: str) -> tuple[Aligner, dict, str]:
    """(aligner, checkpoint dict, path) from a run folder (its latest checkpoint) or a checkpoint file."""
    path = find(run)
    ckpt = load(path)
    return aligner_of(ckpt), ckpt, path
