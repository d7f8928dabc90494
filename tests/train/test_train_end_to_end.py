"""The whole path through the command line: precompute (real photos, tiny Qwen2-VL) -> fit -> export
-> `python -m thinkdiff_core info` -> load_aligner -> conditioning.align."""
from __future__ import annotations

import json
import os

import torch

from tests.train.train_helpers import PY, log_records, run


def test_help_lists_the_three_commands():
    r = run([PY, "-m", "train", "--help"])
    assert r.returncode == 0
    for cmd in ("precompute", "fit", "export", "tiny-models"):
        assert cmd in r.stdout
    r = run([PY, "-m", "train", "fit", "--help"])
    assert r.returncode == 0 and "--lr" in r.stdout and "--resume" in r.stdout and "(default: 0.0001)" in r.stdout


def test_precompute_fit_export_load_align(tiny, tmp_path):
    from train.tiny import write_images
    images = tmp_path / "images"
    write_images(str(images), size=56, names=["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"])
    feats, runs, out = tmp_path / "feats", tmp_path / "run", tmp_path / "aligner.safetensors"
    (tmp_path / "precompute.yaml").write_text(f"vlm: {tiny.qwen}\ndata: {images}\nout: {feats}\n"
                                              f"shard_size: 2\nmax_new_tokens: 12\n")
    r = run([PY, "-m", "train", "precompute", "--config", str(tmp_path / "precompute.yaml"), "--max-new-tokens", "8"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(feats)) == ["000000.tar", "000001.tar", "precompute.json"]

    # the tokenizer is found through feats/precompute.json; 1 shard trains, 1 is held out
    r = run([PY, "-m", "train", "fit", "--data", str(feats), "--t5", tiny.t5, "--out", str(runs), "--batch-size", "2",
             "--max-steps", "6", "--warmup-steps", "2", "--lr", "1e-2", "--ckpt-interval", "3", "--val-interval", "3",
             "--log-interval", "1"])
    assert r.returncode == 0, r.stderr[-3000:]
    steps = log_records(str(runs))
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4, 5, 6]
    assert all(k in steps[3] for k in ("loss", "val_loss", "lr", "samples_per_s", "mem_mb"))
    assert log_records(str(runs), "start")[0]["train_shards"] == 1

    r = run([PY, "-m", "train", "export", "--run", str(runs), "--out", str(out), "--dtype", "bf16"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = run([PY, "-m", "thinkdiff_core", "info", str(out), "--json"])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["variant"] == "lvlm" and (info["in_dim"], info["hidden_dim"], info["out_dim"]) == (64, 64, 64)
    assert info["dtype"] == "bfloat16"
    assert info["metadata"]["source_vlm"] == "qwen2vl" and info["metadata"]["t5"] == "t5"
    assert info["metadata"]["train_step"] == "6"

    from thinkdiff_core.checkpoint import load_aligner
    from thinkdiff_core.conditioning import align
    from train.data import read_feature_shard
    from train.checkpoint import load_fit_checkpoint
    aligner, _ = load_aligner(str(out), dtype=torch.float32)
    trained, ckpt, _ = load_fit_checkpoint(str(runs))
    assert ckpt["step"] == 6
    for k, v in trained.state_dict().items():
        assert torch.equal(aligner.state_dict()[k], v.to(torch.bfloat16).float())
    hidden = read_feature_shard(str(feats / "000000.tar"))[0].features()
    cond = align(aligner, hidden)
    assert cond.shape == (1, hidden.shape[0], 64) and cond.dtype == torch.float32 and torch.isfinite(cond).all()


def test_clear_errors_for_missing_paths(tiny, learn_data, tmp_path, capsys):
    import pytest

    from train.__main__ import main
    assert main(["fit", "--data", str(tmp_path / "no-feats"), "--t5", tiny.t5]) == 2
    assert "no-feats" in capsys.readouterr().err
    assert main(["fit", "--data", learn_data["val"], "--val-shards", "0", "--t5", str(tmp_path / "no-t5"),
                 "--tokenizer", tiny.qwen, "--out", str(tmp_path / "r")]) == 2
    assert "no-t5" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--vlm.*--out"):
        main(["precompute", "--data", str(tmp_path)])
    assert main(["export", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "no-run" in capsys.readouterr().err
