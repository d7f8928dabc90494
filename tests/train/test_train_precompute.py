"""precompute with a tiny random Qwen2-VL (real tokenizer) on real photos: shard contents and row
semantics, resume, sharding over processes, webdataset tar sources, one-token generations."""
from __future__ import annotations

import dataclasses
import io
import json
import os

import pytest
import torch

from thinkdiff_core.prompts import TRAINING_INSTRUCTIONS
from thinkdiff_core.vlm import VLMEncoder
from train import precompute
from train.config import PrecomputeConfig
from train.data import iter_tar, read_feature_shard

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "horse.png"]


def load_tensor(data: bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(data), weights_only=True)


def contents(folder: str) -> dict:
    """{shard: [(key, json record, features)]} of a precompute output folder."""
    out = {}
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".tar")):
        out[name] = [(s["__key__"], json.loads(s["json"]), load_tensor(s["output_embed.pth"]))
                     for s in iter_tar(os.path.join(folder, name))]
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from train.tiny import write_images
    folder = tmp_path_factory.mktemp("photos")
    write_images(str(folder), size=56, names=PHOTOS)
    return str(folder)


@pytest.fixture(scope="module")
def base_cfg(tiny, photos, tmp_path_factory):
    return PrecomputeConfig(vlm=tiny.qwen, data=photos, out=str(tmp_path_factory.mktemp("feats")), shard_size=2,
                            max_new_tokens=5)


@pytest.fixture(scope="module")
def single_run(base_cfg):
    assert precompute.main(base_cfg) == 0
    return contents(base_cfg.out)


def test_shards_hold_the_generation_and_its_rows(single_run, base_cfg, tiny, photos):
    assert sorted(os.listdir(base_cfg.out)) == ["000000.tar", "000001.tar", "000002.tar", "precompute.json"]
    samples = [x for shard in single_run.values() for x in shard]
    assert [k for k, _, _ in samples] == sorted(os.path.splitext(p)[0] for p in PHOTOS)
    for key, rec, feat in samples:
        n = len(rec["output_token_ids"])
        assert 1 <= n <= 5 and rec["n_tokens"] == n and feat.shape == (n, 64) and feat.dtype == torch.bfloat16
        assert rec["prompt"] in TRAINING_INSTRUCTIONS
        assert rec["input_prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
        assert "Picture 1" not in rec["input_prompt"] and rec["input_prompt"].endswith(rec["prompt"] + "<|im_end|>\n<|im_start|>assistant\n")
        assert rec["generated_text"] == tiny.qwen_tok.decode(rec["output_token_ids"], skip_special_tokens=True)
        with open(os.path.join(photos, key + ".txt")) as fh:
            assert rec["source"]["caption"] == fh.read().strip()
    assert len({rec["prompt"] for _, rec, _ in samples}) > 1        # drawn per image
    # row k is the state that produced token k: a teacher-forced pass over the same tokens agrees
    from PIL import Image
    enc = VLMEncoder.from_pretrained(tiny.qwen)
    key, rec, feat = samples[0]
    forced = enc.teacher_forced_states([Image.open(os.path.join(photos, key + ".png")), rec["prompt"]],
                                       torch.tensor(rec["output_token_ids"]), add_vision_id=False)
    torch.testing.assert_close(feat.float(), forced.to(torch.bfloat16).float(), rtol=0.02, atol=0.05)


def test_finished_shards_are_skipped_and_a_lost_one_is_redone(single_run, base_cfg, capsys):
    stamp = {n: os.stat(os.path.join(base_cfg.out, n)).st_mtime_ns for n in single_run}
    os.remove(os.path.join(base_cfg.out, "000001.tar"))
    with open(os.path.join(base_cfg.out, ".000001.tar.tmp"), "wb") as fh:   # debris of a killed run
        fh.write(b"partial")
    assert precompute.main(base_cfg) == 0
    assert "2 already done, 1 to do" in capsys.readouterr().out
    for n in ("000000.tar", "000002.tar"):
        assert os.stat(os.path.join(base_cfg.out, n)).st_mtime_ns == stamp[n]
    assert _same(contents(base_cfg.out), single_run)
    assert not [n for n in os.listdir(base_cfg.out) if n.endswith(".tmp")]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        [(k, r) for k, r, _ in a[s]] == [(k, r) for k, r, _ in b[s]]
        and all(torch.equal(x, y) for (_, _, x), (_, _, y) in zip(a[s], b[s])) for s in a)


def test_processes_take_every_world_th_shard(single_run, base_cfg, tmp_path, monkeypatch):
    cfg = dataclasses.replace(base_cfg, out=str(tmp_path / "ranks"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert precompute.main(cfg) == 0
    assert sorted(n for n in os.listdir(cfg.out) if n.endswith(".tar")) == ["000001.tar"]
    monkeypatch.setenv("RANK", "0")
    assert precompute.main(cfg) == 0
    assert _same(contents(cfg.out), single_run)       # per-image seeds: same output however it is split


def test_webdataset_tar_source(tiny, tmp_path):
    import easy_vqa
    import webdataset as wds
    paths = easy_vqa.get_train_image_paths()
    src = tmp_path / "cc" / "00007.tar"
    src.parent.mkdir()
    with wds.TarWriter(str(src)) as w:
        for i in (0, 1, 2):
            with open(paths[i], "rb") as fh:
                w.write({"__key__": f"0007{i:04d}", "png": fh.read(), "txt": f"caption {i}".encode(),
                         "json": json.dumps({"url": f"http://example/{i}"}).encode()})
    cfg = PrecomputeConfig(vlm=tiny.qwen, data=str(src.parent), out=str(tmp_path / "out"), max_new_tokens=3,
                           feature_dtype="fp16", store_image=True)
    assert precompute.main(cfg) == 0
    got = list(iter_tar(str(tmp_path / "out" / "00007.tar")))
    assert [s["__key__"] for s in got] == ["00070000", "00070001", "00070002"]
    rec = json.loads(got[1]["json"])
    assert rec["source"] == {"caption": "caption 1", "json": {"url": "http://example/1"}}
    assert "png" in got[1]
    assert torch.load(io.BytesIO(got[1]["output_embed.pth"]), weights_only=True).dtype == torch.float16
    import webdataset
    assert len(list(webdataset.WebDataset(str(tmp_path / "out" / "00007.tar"), shardshuffle=False))) == 3


def test_one_token_generations_are_stored_and_rejected_clearly_by_fit(tiny, photos, tmp_path):
    """Spec bug 6: N = 1 must not crash; a data set of only such samples is a clear error."""
    cfg = PrecomputeConfig(vlm=tiny.qwen, data=photos, out=str(tmp_path / "one"), shard_size=3, max_new_tokens=1)
    assert precompute.main(cfg) == 0
    samples = [s for n in ("000000.tar", "000001.tar") for s in read_feature_shard(str(tmp_path / "one" / n))]
    assert len(samples) == 5 and all(len(s.ids) == 1 and s.features().shape == (1, 64) for s in samples)
    from train.config import FitConfig
    from train.fit import fit
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        fit(FitConfig(data=str(tmp_path / "one"), t5=tiny.t5, out=str(tmp_path / "run"), val_shards=0,
                      batch_size=2, max_steps=2, progress=False))


def test_missing_vlm_and_data_are_named(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-images"):
        precompute.main(PrecomputeConfig(vlm=tiny.qwen, data=str(tmp_path / "no-such-images"), out=str(tmp_path / "o")))
    (tmp_path / "imgs").mkdir()
    from train.tiny import write_images
    write_images(str(tmp_path / "imgs"), size=28, names=["coins.png"])
    with pytest.raises(FileNotFoundError, match="no-such-vlm"):
        precompute.main(PrecomputeConfig(vlm=str(tmp_path / "no-such-vlm"), data=str(tmp_path / "imgs"),
                                         out=str(tmp_path / "o")))
