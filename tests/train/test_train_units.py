"""Unit checks of the train/ pieces: config layering, LR schedule, optimizer groups, the random
split and collate (docs/method.md §2.3/2.4), the encoder-free T5 decoder, the data stream's resume position."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os

import pytest
import torch

from train import config
from train.config import FitConfig
from train.data import Sample, TrainStream, collate, draw_split, encode_sample, read_feature_shard
from train.fit import lr_at, make_optimizer


def parse(argv, cls=FitConfig):
    p = argparse.ArgumentParser()
    config.add_arguments(p, cls)
    return config.from_args(cls, p.parse_args(argv))


def test_defaults_are_the_papers():
    c = FitConfig()
    assert (c.lr, c.warmup_lr, c.warmup_steps, c.min_lr, c.decay_steps) == (1e-4, 1e-6, 2000, 8e-5, 200000)
    assert (c.weight_decay, c.beta1, c.beta2, c.batch_size, c.max_split, c.max_label_len) == (0.05, 0.9, 0.999, 32, 128, 128)
    p = config.PrecomputeConfig()
    assert (p.temperature, p.top_p, p.max_new_tokens, p.stop_at_eos) == (0.6, 0.9, 256, True)
    assert p.system == "You are a helpful assistant."


def test_yaml_then_command_line_override(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("lr: 1e-4\nbatch_size: 4\nresume: true\nout: from_yaml\n")
    c = parse(["--config", str(y), "--lr", "3e-4", "--batch-size", "6"])
    assert (c.lr, c.batch_size, c.resume, c.out) == (3e-4, 6, True, "from_yaml")
    assert parse(["--config", str(y), "--resume", "false"]).resume is False
    assert isinstance(parse(["--config", str(y)]).lr, float)       # YAML's 1e-4 is a string: coerced
    y.write_text("learning_rate: 1\n")
    with pytest.raises(SystemExit, match="unknown option.*learning_rate"):
        parse(["--config", str(y)])


def test_lr_schedule():
    c = FitConfig()
    assert lr_at(0, c) == pytest.approx(1e-6)
    assert lr_at(1000, c) == pytest.approx(1e-6 + (1e-4 - 1e-6) / 2)
    assert lr_at(25000, c) == pytest.approx(9.92e-5, abs=1e-7)          # docs/method.md §2.5
    assert lr_at(200000, c) == pytest.approx(8e-5) and lr_at(300000, c) == pytest.approx(8e-5)
    assert all(lr_at(s, c) >= lr_at(s + 1000, c) for s in range(2000, 200000, 1000))


def test_weight_decay_on_matrices_only():
    from thinkdiff_core.aligner import Aligner
    opt = make_optimizer(Aligner(8, 16, 12), FitConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.ndim for p in decay["params"]] == [2, 2]
    assert sorted(p.numel() for p in no_decay["params"]) == [12, 16, 16]    # two biases + the norm


def test_draw_split_range():
    draws = {draw_split(5, 128, f"k{i}") for i in range(400)}
    assert draws == {1, 2, 3, 4}
    assert {draw_split(300, 128, f"k{i}") for i in range(2000)} <= set(range(1, 129))
    assert max(draw_split(300, 128, f"k{i}") for i in range(2000)) == 128
    assert draw_split(2, 128, "x") == 1


def _sample(tok, text, dim=8, seed=0):
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    feat = torch.randn(len(ids), dim, generator=torch.Generator().manual_seed(seed))
    enc = encode_sample("k", {"output_token_ids": ids}, feat, torch.float32)
    return Sample("k", ids, enc["output_embed.pth"]), feat


def test_collate_prefix_suffix_and_labels(tiny):
    a, fa = _sample(tiny.qwen_tok, "a red circle on a white background", seed=1)
    b, fb = _sample(tiny.qwen_tok, "two blue squares", seed=2)
    s_a, s_b = 3, 1
    batch = collate([(a, s_a), (b, s_b)], tiny.qwen_tok, tiny.t5_tok, max_label_len=128)
    # prefix = rows [0, s), zero padded, with a mask
    assert batch["prefix"].shape == (2, 3, 8)
    assert torch.equal(batch["prefix"][0], fa[:3]) and torch.equal(batch["prefix"][1, :1], fb[:1])
    assert batch["prefix"][1, 1:].abs().sum() == 0
    assert batch["prefix_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    # suffix: Qwen-decoded without the special EOS, re-tokenised by T5 with </s>
    want_a = tiny.qwen_tok.decode(a.ids[3:], skip_special_tokens=True)
    assert batch["texts"][0] == want_a and "<|im_end|>" not in want_a
    t5_a = tiny.t5_tok(want_a)["input_ids"]
    assert t5_a[-1] == 1                                                  # </s>
    assert batch["labels"][0, :len(t5_a)].tolist() == t5_a
    t5_b = tiny.t5_tok(batch["texts"][1])["input_ids"]
    assert batch["labels"][1].tolist() == t5_b + [-100] * (len(t5_a) - len(t5_b))
    # decoder inputs = labels shifted right with start id 0, pads 0
    assert batch["decoder_input_ids"][0].tolist() == [0] + t5_a[:-1]
    assert batch["decoder_input_ids"][1, :len(t5_b)].tolist() == [0] + t5_b[:-1]


def test_collate_truncates_labels_keeping_eos(tiny):
    a, _ = _sample(tiny.qwen_tok, " ".join(["word"] * 300))
    batch = collate([(a, 1)], tiny.qwen_tok, tiny.t5_tok, max_label_len=128)
    assert batch["labels"].shape[1] == 128 and batch["labels"][0, -1] == 1


def test_decoder_matches_transformers_t5_and_norm_init(tiny):
    from transformers import T5ForConditionalGeneration

    from train.t5 import load_t5_decoder
    dec, norm = load_t5_decoder(tiny.t5)
    ref = T5ForConditionalGeneration.from_pretrained(tiny.t5, local_files_only=True).eval()
    assert torch.equal(norm, ref.encoder.final_layer_norm.weight)
    assert not any(n.startswith("encoder") for n, _ in dec.named_parameters())
    mem = torch.randn(2, 5, 64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ids = torch.randint(0, 32128, (2, 7))
    with torch.no_grad():
        ours = dec(mem, mask, ids, torch.ones_like(ids))
        theirs = ref(encoder_outputs=(mem,), attention_mask=mask, decoder_input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # the padded memory rows are masked out: changing them changes nothing
    mem2 = mem.clone()
    mem2[0, 3:] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(dec(mem2, mask, ids, torch.ones_like(ids)), ours)


def test_missing_paths_are_named(tmp_path):
    from train.t5 import load_t5_decoder
    with pytest.raises(FileNotFoundError, match="nowhere/t5"):
        load_t5_decoder(str(tmp_path / "nowhere" / "t5"))
    from train.data import expand_shards, image_units
    with pytest.raises(FileNotFoundError, match="missing-shards"):
        expand_shards(str(tmp_path / "missing-shards" / "{000..003}.tar"))
    with pytest.raises(FileNotFoundError, match="no-images"):
        image_units(str(tmp_path / "no-images"), 10)


def test_stream_position_resumes_exactly(learn_data):
    shards = learn_data["train"]
    full = TrainStream(shards, seed=3, rank=0, max_split=128)
    it = iter(full)
    first = [(s.key, k) for s, k in (next(it) for _ in range(300))]        # > 1 epoch of 192 samples
    part = TrainStream(shards, seed=3, rank=0, max_split=128)
    it = iter(part)
    for _ in range(130):
        next(it)
    resumed = TrainStream(shards, seed=3, rank=0, max_split=128, position=part.position)
    rest = [(s.key, k) for s, k in (x for x, _ in zip(resumed, range(170)))]
    assert rest == first[130:]
    # each epoch visits every sample once, in a new order, with new splits
    keys = [k for k, _ in first]
    assert sorted(keys[:192]) == sorted({s.key for p in shards for s in read_feature_shard(p)})
    assert keys[:100] != keys[192:292]


def test_samples_with_one_token_are_skipped(tmp_path, tiny):
    """Spec bug 6: N = 1 (possible with min_tokens 1) must not crash the split."""
    import webdataset as wds
    path = str(tmp_path / "one.tar")
    with wds.TarWriter(path) as w:
        w.write(encode_sample("single", {"output_token_ids": [151645]}, torch.randn(1, 8)))
        w.write(encode_sample("pair", {"output_token_ids": [64, 151645]}, torch.randn(2, 8)))
    stream = TrainStream([path], seed=0, rank=0, max_split=128)
    got = [(s.key, k) for s, k in (x for x, _ in zip(stream, range(3)))]
    assert got == [("pair", 1)] * 3 and stream.skipped >= 1
    assert math.isfinite(collate([(read_feature_shard(path)[1], 1)], tiny.qwen_tok, tiny.t5_tok, 128)["labels"].float().sum())


def test_training_checkpoint_format_is_checked_on_read(tmp_path, capsys):
    import re

    from train import checkpoint
    from train.__main__ import main
    out = str(tmp_path / "run")
    for step in (1, 2, 3):
        path = checkpoint.save(out, {"step": step, "w": torch.full((2,), float(step))}, keep=2)
    assert [p.rsplit("/", 1)[1] for p in checkpoint.list_checkpoints(out)] == ["step_00000002.pt", "step_00000003.pt"]
    assert sorted(os.listdir(checkpoint.folder(out))) == ["step_00000002.pt", "step_00000003.pt"]   # no temp files
    assert checkpoint.find(out) == path
    got = checkpoint.load(path)
    assert (got["format"], got["format_version"], got["step"]) == (checkpoint.FORMAT, checkpoint.VERSION, 3)

    bad = {"version.pt": {"format": checkpoint.FORMAT, "format_version": 99, "step": 1},
           "other.pt": {"format": "something-else", "step": 1},
           "state_dict.pt": {"weight": torch.ones(2)},
           "text.pt": None}
    for name, content in bad.items():
        p = str(tmp_path / name)
        if content is None:
            with open(p, "w") as fh:
                fh.write("not a checkpoint")
        else:
            torch.save(content, p)
        with pytest.raises(ValueError, match=re.escape(p)) as e:
            checkpoint.load(p)
        assert ("version 99" in str(e.value)) if name == "version.pt" else ("not a checkpoint written by" in str(e.value))
        # export reports it as an error naming the file, no traceback
        assert main(["export", "--run", p, "--out", str(tmp_path / "a.safetensors")]) == 2
        assert p in capsys.readouterr().err


def test_provenance_is_found_from_any_data_spelling(tmp_path):
    from train.data import Provenance, provenance_file, read_provenance, write_provenance
    feats = tmp_path / "feats"
    feats.mkdir()
    assert read_provenance(str(feats)) is None and read_provenance("") is None
    write_provenance(str(feats), Provenance(vlm="/models/qwen", vlm_name="Qwen2-VL-7B-Instruct", hidden_size=3584,
                                            config={"seed": 42}))
    want = str(feats / "precompute.json")
    for spelling in (str(feats), f"{feats}/000001.tar", f"{feats}/*.tar", f"{feats}/{{000000..000003}}.tar",
                     f"{feats}/000000.tar, {tmp_path}/elsewhere/000000.tar"):
        assert provenance_file(spelling) == want
        p = read_provenance(spelling)
        assert (p.vlm, p.vlm_name, p.hidden_size, p.config, p.path) == \
            ("/models/qwen", "Qwen2-VL-7B-Instruct", 3584, {"seed": 42}, want)


def test_dtype_options_come_from_the_one_table():
    from thinkdiff_core import dtypes
    fit_fields = {f.name: f.metadata["choices"] for f in dataclasses.fields(FitConfig)}
    assert fit_fields["precision"] == fit_fields["decoder_dtype"] == dtypes.choices(auto=True, only=("fp32", "bf16"))
    pre = {f.name: f.metadata["choices"] for f in dataclasses.fields(config.PrecomputeConfig)}
    assert pre["feature_dtype"] == dtypes.choices() and pre["model_dtype"] == dtypes.choices(auto=True)
    with pytest.raises(SystemExit):                                       # the command line checks choices
        parse(["--precision", "fp16"])
    with pytest.raises(SystemExit, match="--decoder-dtype must be one of auto, fp32, bf16"):   # YAML / Python
        config.require(FitConfig(decoder_dtype="float8"))
    from train.fit import resolve_precision
    assert resolve_precision(FitConfig(), torch.device("cpu")) == (torch.float32, torch.float32)
    assert resolve_precision(FitConfig(precision="bf16"), torch.device("cpu")) == (torch.bfloat16, torch.float32)
