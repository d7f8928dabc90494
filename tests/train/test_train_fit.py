"""fit: it learns (and uses the features), it keeps the decoder frozen, it resumes exactly (also after
SIGKILLs at random points, and past a corrupt last checkpoint), a full disk keeps the previous
checkpoint, it stops cleanly on SIGTERM, and it runs as two CPU processes (gloo)."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import random
import re
import signal
import subprocess
import time

import pytest
import torch

from tests.train.train_helpers import PY, REPO, log_records, run
from train import checkpoint
from train.data import Sample, collate, draw_split, read_feature_shard
from train.fit import batch_loss, encoder_term, fit
from train.t5 import load_t5_decoder


def _with_features_of(sample: Sample, other: Sample) -> Sample:
    """sample's ids with other's feature rows (repeated at the end if other is shorter)."""
    f = other.features()
    n = len(sample.ids)
    f = torch.cat([f, f[-1:].expand(max(0, n - f.shape[0]), -1)])[:n].clone()
    buf = io.BytesIO()
    torch.save(f, buf)
    return Sample(sample.key, sample.ids, buf.getvalue())


def test_aligner_alone_learns_and_uses_the_features(fit_cfg, tiny, learn_data):
    cfg = dataclasses.replace(fit_cfg, batch_size=16, max_steps=200, lr=3e-2, min_lr=3e-2, warmup_steps=5,
                              val_interval=100, ckpt_interval=1000, log_interval=10)
    frozen_before, _ = load_t5_decoder(tiny.t5)
    r = fit(cfg)
    losses, val = r["losses"], r["val_losses"]
    first, last = losses[1], sum(losses[s] for s in range(191, 201)) / 10
    print(f"train loss {first:.2f} -> {last:.2f}; val loss {val}")
    assert last <= 0.5 * first, f"training loss only went from {first:.2f} to {last:.2f}"
    assert val[200] < val[100] < val[0] and val[200] <= 0.5 * val[0]

    # the frozen decoder is bit-identical, the aligner moved
    after = r["decoder"].state_dict()
    assert all(torch.equal(t, after[k]) for k, t in frozen_before.state_dict().items())
    assert all(not p.requires_grad for p in r["decoder"].parameters())

    # honest: the loss is low because the aligner passes on what the features say. Give every
    # held-out caption the features of a sample with another colour and shape: the loss must rise.
    import json
    import tarfile
    with tarfile.open(learn_data["val"]) as tf:
        meta = {m.name.split(".")[0]: json.load(tf.extractfile(m)) for m in tf if m.name.endswith(".json")}
    items = [(s, draw_split(len(s.ids), 128, s.key)) for s in read_feature_shard(learn_data["val"])]
    label = lambda s: (meta[s.key]["colour"], meta[s.key]["shape"])   # noqa: E731
    swapped = []
    for i, (s, k) in enumerate(items):
        other = next(o for o, _ in items[i + 1:] + items[:i] if label(o)[0] != label(s)[0] and label(o)[1] != label(s)[1])
        swapped.append((_with_features_of(s, other), k))
    with torch.no_grad():
        matched = batch_loss(r["aligner"], r["decoder"], collate(items, tiny.qwen_tok, tiny.t5_tok, 128), "cpu").item()
        mismatched = batch_loss(r["aligner"], r["decoder"], collate(swapped, tiny.qwen_tok, tiny.t5_tok, 128), "cpu").item()
    print(f"held-out loss with its own features {matched:.2f}, with another caption's features {mismatched:.2f}")
    assert matched < 0.75 * mismatched


def test_encoder_term_pulls_the_aligned_rows_toward_the_t5_encoder(fit_cfg, tiny, learn_data, tmp_path):
    """fit --encoder-term (an ablation, off by default): the aligned prefix rows move toward the frozen T5
    encoder's states of their own text, which the decoder loss alone does not ask for."""
    items = [(s, draw_split(len(s.ids), 128, s.key)) for s in read_feature_shard(learn_data["val"])]
    batch = collate(items, tiny.qwen_tok, tiny.t5_tok, 128)
    assert batch["prefix_text_ids"].shape[0] == len(items)
    gaps = {}
    for w in (0.0, 5.0):
        r = fit(dataclasses.replace(fit_cfg, out=str(tmp_path / f"w{w}"), max_steps=40, val_interval=0,
                                    ckpt_interval=1000, encoder_term=w))
        decoder, _ = load_t5_decoder(tiny.t5, with_encoder=True)
        with torch.no_grad():
            gaps[w] = encoder_term(r["aligner"], decoder, batch, "cpu").item()
    print(f"1 - cosine to the T5 encoder states: decoder loss only {gaps[0.0]:.3f}, with the term {gaps[5.0]:.3f}")
    assert gaps[5.0] < gaps[0.0] - 0.1


def test_standardised_inputs_are_folded_into_the_exported_aligner(fit_cfg, learn_data, tmp_path):
    """fit --standardise-inputs trains on (x - mean) / std of the training rows; the checkpoint keeps the
    statistics, and the aligner it gives (export's) takes raw features and computes exactly what was trained.
    Resuming with the other setting is refused."""
    from thinkdiff_core.aligner import Aligner
    from train.fit import Standardised
    cfg = dataclasses.replace(fit_cfg, out=str(tmp_path / "std"), max_steps=4, standardise_inputs=True)
    r = fit(cfg)
    ckpt = checkpoint.load(checkpoint.find(cfg.out))
    mean, std = ckpt["input_stats"]["mean"], ckpt["input_stats"]["std"]
    rows = torch.cat([s.features().float() for s in read_feature_shard(learn_data["val"])])
    assert rows.mean(0).abs().max() > 0.1 and not torch.allclose(std, torch.ones_like(std))  # a real change
    trained = Aligner(*[ckpt["dims"][i] for i in (0, 2, 1)])
    trained.load_state_dict(ckpt["aligner"])
    with torch.no_grad():
        want = Standardised(trained, mean, std)(rows)
        torch.testing.assert_close(checkpoint.aligner_of(ckpt)(rows), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(r["aligner"](rows), want, rtol=1e-4, atol=1e-4)
        assert (trained(rows) - want).abs().max() > 0.1          # the raw-feature aligner needs the folding
    with pytest.raises(SystemExit, match="standardise_inputs"):
        fit(dataclasses.replace(cfg, max_steps=6, resume=True, standardise_inputs=False))


def test_aligner_norm_starts_from_the_t5_encoder_final_norm(fit_cfg, tiny):
    """Spec 1.1: fit copies the T5 encoder's final_layer_norm.weight into the aligner's norm."""
    import glob

    from safetensors import safe_open
    want = None
    for path in glob.glob(os.path.join(tiny.t5, "*.safetensors")):          # read independently of train.t5
        with safe_open(path, framework="pt") as fh:
            if "encoder.final_layer_norm.weight" in fh.keys():
                want = fh.get_tensor("encoder.final_layer_norm.weight").float()
    assert want is not None and not torch.allclose(want, torch.ones_like(want))   # non-trivial in the tiny T5
    r = fit(dataclasses.replace(fit_cfg, max_steps=0))                     # set up, no training step
    assert r["step"] == 0 and r["losses"] == {}
    torch.testing.assert_close(r["aligner"].norm.weight.detach(), want, rtol=0, atol=0)


def test_decoder_dropout_in_training_steps_only(fit_cfg, tmp_path, monkeypatch):
    """decoder_dropout (default true, as the official trainer): the frozen decoder runs in train mode
    (dropout active, weights frozen) for training steps and in eval mode for validation."""
    import train.fit as fit_module
    calls = []                                   # (training step?, decoder.training, any decoder param trainable)

    def spy(aligner, decoder, batch, device, reduction="mean"):
        calls.append((reduction == "mean", decoder.training, any(p.requires_grad for p in decoder.parameters())))
        return batch_loss(aligner, decoder, batch, device, reduction)

    monkeypatch.setattr(fit_module, "batch_loss", spy)
    cfg = dataclasses.replace(fit_cfg, max_steps=2, val_interval=1)         # validation at steps 0, 1, 2
    assert cfg.decoder_dropout is True
    on = fit(dataclasses.replace(cfg, out=str(tmp_path / "on")))
    assert [c for c in calls if c[0]] == [(True, True, False)] * 2           # 2 training forwards: train mode
    assert [c for c in calls if not c[0]] == [(False, False, False)] * 6     # 3 passes x 2 batches: eval mode
    assert not on["decoder"].training                                        # handed back in eval mode
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in on["decoder"].modules())
    calls.clear()
    off = fit(dataclasses.replace(cfg, out=str(tmp_path / "off"), decoder_dropout=False))
    assert {c[1] for c in calls} == {False}
    # same seed and data: validation of the untrained aligner is identical (deterministic eval mode),
    # the first training loss is not (dropout masks in the decoder)
    assert on["val_losses"][0] == off["val_losses"][0]
    assert on["losses"][1] != off["losses"][1]
    again = fit(dataclasses.replace(cfg, out=str(tmp_path / "on-again"), max_steps=1))
    assert again["losses"][1] == on["losses"][1]                             # the masks are seeded


def test_resume_reproduces_the_uninterrupted_losses(fit_cfg, tmp_path):
    full = fit(dataclasses.replace(fit_cfg, out=str(tmp_path / "full"), max_steps=10, val_interval=5))
    part = fit(dataclasses.replace(fit_cfg, out=str(tmp_path / "part"), max_steps=6, val_interval=5))
    assert sorted(os.listdir(tmp_path / "part" / "checkpoints")) == ["step_00000004.pt", "step_00000006.pt"]
    rest = fit(dataclasses.replace(fit_cfg, out=str(tmp_path / "part"), max_steps=10, val_interval=5, resume=True))
    assert list(rest["losses"]) == [7, 8, 9, 10]
    assert [rest["losses"][s] for s in (7, 8, 9, 10)] == [full["losses"][s] for s in (7, 8, 9, 10)]
    assert rest["val_losses"][10] == full["val_losses"][10]
    a, b = full["aligner"].state_dict(), rest["aligner"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # 6 steps x 8 samples = 48 = exactly one shard: the run resumes at the end of a shard (the stream
    # test covers epoch boundaries); the log says where the run resumed
    assert [r["step"] for r in log_records(str(tmp_path / "part"), "resume")] == [6]


def test_resume_with_gradient_accumulation(fit_cfg, tmp_path):
    cfg = dataclasses.replace(fit_cfg, batch_size=4, grad_accum=2, ckpt_interval=3)
    full = fit(dataclasses.replace(cfg, out=str(tmp_path / "full"), max_steps=5))
    fit(dataclasses.replace(cfg, out=str(tmp_path / "part"), max_steps=3))
    rest = fit(dataclasses.replace(cfg, out=str(tmp_path / "part"), max_steps=5, resume=True))
    assert [rest["losses"][s] for s in (4, 5)] == [full["losses"][s] for s in (4, 5)]
    ckpt = torch.load(os.path.join(tmp_path, "part", "checkpoints", "step_00000003.pt"), weights_only=True)
    assert ckpt["positions"] == [[0, 0, 24]]                     # 3 steps x 2 micro-batches x 4 samples


def test_existing_run_needs_resume(fit_cfg):
    fit(dataclasses.replace(fit_cfg, max_steps=4))
    with pytest.raises(SystemExit, match="--resume"):
        fit(dataclasses.replace(fit_cfg, max_steps=6))


def _cli(cfg) -> list[str]:
    args = [PY, "-m", "train", "fit"]
    for f in dataclasses.fields(cfg):
        args += [f"--{f.name.replace('_', '-')}", str(getattr(cfg, f.name))]
    return args


def _wait_for(predicate, proc, timeout=180.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = predicate()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early (rc {proc.returncode}): {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out waiting for the run")


def _checkpoint_steps(out: str) -> list[int]:
    try:
        return [r["step"] for r in log_records(out, "checkpoint")]
    except FileNotFoundError:
        return []


def _new_step_records(out: str, skip: int) -> list[dict]:
    """The step records of log.jsonl after its first `skip` lines."""
    try:
        with open(os.path.join(out, "log.jsonl")) as fh:
            lines = fh.read().splitlines()[skip:]
    except FileNotFoundError:
        return []
    recs = []
    for line in lines:
        with contextlib.suppress(ValueError):       # a line being written
            recs.append(json.loads(line))
    return [r for r in recs if r.get("event") == "step"]


def _check_checkpoint_folder(folder: str, names: set) -> None:
    """Every name ever seen there is a checkpoint or a temp name; every checkpoint there now loads."""
    assert all(re.fullmatch(r"step_\d{8}\.pt|\.step_\d{8}\.pt\.tmp", n) for n in names), names
    for n in os.listdir(folder):
        if not n.startswith("."):
            checkpoint.load(os.path.join(folder, n))          # whole, not half-written


def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(fit_cfg, tmp_path):
    """Three `fit --resume` runs over one folder, each SIGKILLed at a seeded-random point (after a random
    number of logged steps plus a random delay, so sometimes during a checkpoint write); a final --resume
    to the end. Each kill loses only the steps since the last checkpoint, no half-written file ever has a
    checkpoint's name, and every logged loss and the final aligner equal an uninterrupted run's."""
    rng = random.Random(20240607)
    cfg = dataclasses.replace(fit_cfg, out=str(tmp_path / "killed"), max_steps=100000, ckpt_interval=2,
                              keep_ckpts=2, resume=True)
    folder = checkpoint.folder(cfg.out)
    seen: set = set()
    k = 0
    for _ in range(3):
        log_file = os.path.join(cfg.out, "log.jsonl")
        logged = len(open(log_file).read().splitlines()) if os.path.exists(log_file) else 0
        after, delay = rng.randint(1, 5), rng.uniform(0.0, 0.4)
        proc = subprocess.Popen(_cli(cfg), cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def ready():
                seen.update(os.listdir(folder) if os.path.isdir(folder) else [])
                return len(_new_step_records(cfg.out, logged)) >= after
            _wait_for(ready, proc)
            t0 = time.time()
            while time.time() - t0 < delay:
                ready()
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        seen.update(os.listdir(folder))
        _check_checkpoint_folder(folder, seen)
        last = max(r["step"] for r in _new_step_records(cfg.out, logged))
        k_before, k = k, max((int(n[5:13]) for n in os.listdir(folder) if n.startswith("step_")), default=0)
        assert k % 2 == 0 and last - 2 <= k <= last            # lost at most the steps since the last checkpoint
        if k_before:
            assert log_records(cfg.out, "resume")[-1]["step"] == k_before
    logged_losses = [(r["step"], r["loss"]) for r in log_records(cfg.out)]
    end = max(s for s, _ in logged_losses) + 2
    rest = fit(dataclasses.replace(cfg, max_steps=end))
    ref = fit(dataclasses.replace(cfg, out=str(tmp_path / "ref"), max_steps=end, resume=False))
    assert list(rest["losses"]) == list(range(k + 1, end + 1))
    assert [rest["losses"][s] for s in rest["losses"]] == [ref["losses"][s] for s in rest["losses"]]
    assert [loss for _, loss in logged_losses] == [ref["losses"][s] for s, _ in logged_losses]   # the killed runs too
    a, b = ref["aligner"].state_dict(), rest["aligner"].state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert len(os.listdir(folder)) == 2 and max(os.listdir(folder)) == f"step_{end:08d}.pt"   # no temp files left


def _corrupt(path: str, how: str) -> None:
    if how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    else:
        with open(path, "wb") as fh:
            fh.write(random.Random(0).randbytes(4096))


def test_resume_falls_back_from_a_corrupt_last_checkpoint(fit_cfg, tmp_path, capsys):
    cfg = dataclasses.replace(fit_cfg, max_steps=8, ckpt_interval=4)
    full = fit(cfg)
    folder = checkpoint.folder(cfg.out)
    bad, good = os.path.join(folder, "step_00000008.pt"), os.path.join(folder, "step_00000004.pt")
    for how in ("truncated", "garbage"):
        _corrupt(bad, how)
        capsys.readouterr()
        rest = fit(dataclasses.replace(cfg, resume=True))
        out = capsys.readouterr().out
        assert f"[fit] warning: --resume: {bad} is not a checkpoint" in out and f"continuing from {good}" in out
        assert list(rest["losses"]) == [5, 6, 7, 8]
        assert [rest["losses"][s] for s in (5, 6, 7, 8)] == [full["losses"][s] for s in (5, 6, 7, 8)]
        a, b = full["aligner"].state_dict(), rest["aligner"].state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)
        checkpoint.load(bad)                                          # rewritten by the resumed run
    events = log_records(cfg.out, "checkpoint_unreadable")
    assert [e["path"] for e in events] == [bad, bad] and all("torch.load failed" in e["error"] for e in events)
    assert [r["step"] for r in log_records(cfg.out, "resume")] == [4, 4]

    _corrupt(bad, "garbage")                                          # none readable: a clear error
    _corrupt(good, "truncated")
    with pytest.raises(SystemExit, match=r"no readable checkpoint in .*step_00000008\.pt, step_00000004\.pt"):
        fit(dataclasses.replace(cfg, resume=True))


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(fit_cfg, monkeypatch, capsys):
    """The file write fails with ENOSPC half way through torch.save (as a full disk does): fit stops with a
    clear error, the previous checkpoint is intact and loads, no temp file is left, and --resume works."""
    cfg = dataclasses.replace(fit_cfg, max_steps=8, ckpt_interval=4)
    real_open = open

    class FullDisk(io.FileIO):
        written = 0

        def write(self, b):
            FullDisk.written += len(b)
            if FullDisk.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(b)

    calls = []

    def fake_open(path, mode="r", *a, **kw):
        if str(path).endswith(".tmp") and "w" in mode:
            calls.append(path)
            if len(calls) == 2:                                       # the second checkpoint: step 8
                return FullDisk(path, "wb")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)
    with pytest.raises(checkpoint.CheckpointWriteError, match=r"could not write the checkpoint .*step_00000008\.pt "
                       r"\(the disk is full\).*the last checkpoint is still .*step_00000004\.pt") as e:
        fit(cfg)
    assert e.value.errno == errno.ENOSPC and FullDisk.written > 4096
    folder = checkpoint.folder(cfg.out)
    assert os.listdir(folder) == ["step_00000004.pt"]                 # no temp file, nothing replaced
    assert checkpoint.load(os.path.join(folder, "step_00000004.pt"))["step"] == 4
    monkeypatch.undo()
    rest = fit(dataclasses.replace(cfg, resume=True))
    assert list(rest["losses"]) == [5, 6, 7, 8]

    # the command line reports it as an error, without a traceback
    from train.__main__ import main
    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)
    calls.clear()
    FullDisk.written = 0
    capsys.readouterr()
    assert main(["fit", *_cli(dataclasses.replace(cfg, out=cfg.out + "-cli"))[4:]]) == 2
    assert "error: could not write the checkpoint" in capsys.readouterr().err


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(fit_cfg, tmp_path):
    cfg = dataclasses.replace(fit_cfg, out=str(tmp_path / "term"), max_steps=100000, ckpt_interval=1000)
    proc = subprocess.Popen(_cli(cfg), cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: len(log_records(cfg.out)) >= 2 if os.path.exists(os.path.join(cfg.out, "log.jsonl")) else 0, proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM" in out
    ckpts = log_records(cfg.out, "checkpoint")
    steps = [r["step"] for r in log_records(cfg.out)]
    assert len(ckpts) == 1 and ckpts[0]["reason"] == "stopped by SIGTERM" and ckpts[0]["step"] == steps[-1]
    assert os.listdir(os.path.join(cfg.out, "checkpoints")) == [f"step_{steps[-1]:08d}.pt"]


def test_two_cpu_processes_with_torchrun(fit_cfg, tmp_path):
    cfg = dataclasses.replace(fit_cfg, out=str(tmp_path / "ddp"), max_steps=4, ckpt_interval=2, val_interval=4)
    args = _cli(cfg)
    r = run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", *args[2:]],
            timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names = sorted(os.listdir(os.path.join(cfg.out, "checkpoints")))
    assert names == ["step_00000002.pt", "step_00000004.pt"]                 # one writer, no temp files
    ckpt = torch.load(os.path.join(cfg.out, "checkpoints", names[-1]), weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["positions"]) == 2 and len(ckpt["rng"]) == 2
    steps = [r["step"] for r in log_records(cfg.out)]
    assert steps == [0, 1, 2, 3, 4]                                          # rank 0 logs, once per step
    start = log_records(cfg.out, "start")[0]
    assert start["world_size"] == 2 and start["dims"] == [32, 64, 64]
    single = fit(dataclasses.replace(fit_cfg, out=str(tmp_path / "one"), max_steps=2))
    assert {k: v.shape for k, v in single["aligner"].state_dict().items()} == \
        {k: v.shape for k, v in ckpt["aligner"].items()}
    assert all(torch.isfinite(v).all() for v in ckpt["aligner"].values())
