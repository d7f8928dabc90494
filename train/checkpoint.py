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

Files are written to a temp name (.step_XXXXXXXX.pt.tmp), fsync'ed and renamed, so a killed run never
leaves half a file under a checkpoint's name; only the last `keep` are kept. A failed write (a full
disk) removes its temp file, keeps the previous checkpoints and raises CheckpointWriteError. A file
that torch.load cannot read (truncated, garbage) raises UnreadableCheckpoint, so `fit --resume` can
fall back to the previous one.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os

import torch

from thinkdiff_core.aligner import Aligner

FORMAT = "thinkdiff-train-checkpoint"
VERSION = 1


class UnreadableCheckpoint(ValueError):
    """torch.load could not read the file (truncated, garbage bytes, not a torch.save file)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the previous checkpoints are intact. Its errno
    is the failed write's."""

    def __str__(self) -> str:
        return self.args[0]


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind e (torch.save turns a failed file write into a RuntimeError whose context is it)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def folder(out: str) -> str:
    return os.path.join(out, "checkpoints")


def list_checkpoints(out: str) -> list[str]:
    """The checkpoints of a run folder, oldest first."""
    return sorted(glob.glob(os.path.join(folder(out), "step_*.pt")))


def save(out: str, state: dict, keep: int) -> str:
    """Write state (with the format name and version added) atomically: a temp file, fsync, rename;
    then delete all but the last `keep` checkpoints and temp files left by killed runs. Returns the path.
    If the write fails, the temp file is removed, no checkpoint is touched and CheckpointWriteError says why."""
    os.makedirs(folder(out), exist_ok=True)
    name = f"step_{state['step']:08d}.pt"
    final, tmp = os.path.join(folder(out), name), os.path.join(folder(out), f".{name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT, "format_version": VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        cause = _os_error(e)
        if cause is None:
            raise
        previous = list_checkpoints(out)
        why = "the disk is full" if cause.errno == errno.ENOSPC else (cause.strerror or str(cause))
        err = CheckpointWriteError(f"could not write the checkpoint {final} ({why}); nothing was replaced, the "
                                   f"last checkpoint is still {previous[-1] if previous else '(none)'}")
        err.errno = cause.errno
        raise err from e
    with contextlib.suppress(OSError):               # make the rename durable (best effort)
        dir_fd = os.open(folder(out), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        os.remove(old)
    for stale in glob.glob(os.path.join(folder(out), ".step_*.pt.tmp")):   # one writer: these are dead runs'
        with contextlib.suppress(OSError):
            os.remove(stale)
    return final


def load(path: str) -> dict:
    """A checkpoint written by `save`; ValueError naming the file if it is not one, or of another version
    (UnreadableCheckpoint, a ValueError, if torch.load cannot read it at all)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise UnreadableCheckpoint(f"{path} is not a checkpoint written by `python -m train fit` "
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
    """The checkpoint's aligner (fp32, on the CPU), taking raw features."""
    in_dim, hidden, out_dim = ckpt["dims"]
    aligner = Aligner(in_dim, out_dim, hidden)
    aligner.load_state_dict(ckpt["aligner"], strict=True)
    if "input_stats" in ckpt:          # trained on standardised features (--standardise-inputs): fold them in
        aligner.fold_input_standardisation(ckpt["input_stats"]["mean"], ckpt["input_stats"]["std"])
    return aligner


def load_fit_checkpoint(run: str) -> tuple[Aligner, dict, str]:
    """(aligner, checkpoint dict, path) from a run folder (its latest checkpoint) or a checkpoint file."""
    path = find(run)
    ckpt = load(path)
    return aligner_of(ckpt), ckpt, path
