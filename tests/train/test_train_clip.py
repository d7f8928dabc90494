"""The trainer's ThinkDiff-CLIP mode (docs/method.md §3): caption cleaning and word splits, the batch
([65 image tokens ; frozen T5 encoding of the caption prefix] -> the suffix), it learns from the image tokens,
resumes exactly, and precompute --variant clip -> fit -> export -> the ComfyUI-side conditioning."""
from __future__ import annotations

import dataclasses
import os
import tarfile

import torch

from tests.train.train_helpers import PY, log_records, run
from train.data import (Sample, clean_caption, collate_clip, draw_word_split, read_feature_shard, shard_variant)
from train.fit import batch_loss, fit
from train.t5 import load_t5_decoder


def test_clean_caption_is_blips():
    assert clean_caption('A Cat: (sitting)  on the MAT!!  "nice" ~ yes.\n') == "a cat sitting on the mat nice yes"
    assert clean_caption(" ".join(f"w{i}" for i in range(80))).split(" ") == [f"w{i}" for i in range(50)]


def test_word_split_range():
    ks = {draw_word_split(5, f"s{i}") for i in range(400)}
    assert ks == {1, 2, 3, 4}
    assert draw_word_split(1, "x") == 0 and draw_word_split(0, "x") == 0
    assert draw_word_split(7, "same") == draw_word_split(7, "same")


def test_collate_clip_prefix_goes_to_the_encoder_suffix_to_the_labels(tiny, clip_learn_data):
    s = read_feature_shard(clip_learn_data["val"])[0]
    assert s.variant == "clip" and shard_variant(clip_learn_data["val"]) == "clip"
    one = Sample("one", [], s.feat, caption="cat")
    b = collate_clip([(s, 1), (one, 0)], tiny.t5_tok, 32)
    assert b["prefix"].shape == (2, 65, clip_learn_data["dim"]) and b["prefix_mask"].all()
    words = s.caption.split(" ")
    assert b["prefix_texts"] == [words[0], ""] and b["texts"] == [" ".join(words[1:]), "cat"]
    eos = tiny.t5_tok.eos_token_id
    want = tiny.t5_tok(words[0])["input_ids"]
    assert b["text_ids"][0, :len(want)].tolist() == want and want[-1] == eos
    assert b["text_ids"][1, 0].item() == eos and b["text_mask"][1].tolist()[:2] == [1, 0]   # "" -> just </s>
    lab = tiny.t5_tok("cat")["input_ids"]
    assert b["labels"][1, :len(lab)].tolist() == lab and (b["labels"][1, len(lab):] == -100).all()
    assert b["decoder_input_ids"][1, 0] == 0 and b["decoder_input_ids"][1, 1:len(lab)].tolist() == lab[:-1]
    long = Sample("long", [], s.feat, caption=" ".join(["word"] * 60))
    lb = collate_clip([(long, 40)], tiny.t5_tok, 32)             # 40 prefix words: truncated to 32 tokens
    assert lb["text_ids"].shape[1] == 32 and lb["text_ids"][0, -1] == eos and lb["labels"].shape[1] == 21
    lb = collate_clip([(long, 10)], tiny.t5_tok, 32)             # 50 suffix words: 32 labels, </s> last
    assert lb["labels"].shape[1] == 32 and lb["labels"][0, -1] == eos and lb["text_ids"].shape[1] == 11


def test_memory_is_image_tokens_then_the_encoded_prefix(tiny, clip_learn_data):
    """batch_loss feeds the decoder [aligner(image tokens) ; T5 encoder(prefix)] with the mask [ones ; text mask]."""
    from thinkdiff_core.aligner import Aligner
    decoder, _ = load_t5_decoder(tiny.t5, with_encoder=True)
    s = read_feature_shard(clip_learn_data["val"])[0]
    b = collate_clip([(s, 1)], tiny.t5_tok, 32)
    torch.manual_seed(0)
    aligner = Aligner(clip_learn_data["dim"], decoder.d_model, 16)
    seen = {}
    orig = decoder.forward
    decoder.forward = lambda memory, mask, *a: seen.update(memory=memory, mask=mask) or orig(memory, mask, *a)
    batch_loss(aligner, decoder, b, "cpu")
    from transformers import T5EncoderModel
    ref = T5EncoderModel.from_pretrained(tiny.t5, local_files_only=True).eval()
    with torch.no_grad():
        text = ref(input_ids=b["text_ids"], attention_mask=b["text_mask"]).last_hidden_state
        img = aligner(b["prefix"])
    assert seen["memory"].shape == (1, 65 + b["text_ids"].shape[1], decoder.d_model)
    torch.testing.assert_close(seen["memory"][:, :65], img)
    torch.testing.assert_close(seen["memory"][:, 65:], text, rtol=1e-4, atol=1e-4)
    assert seen["mask"][0, :65].all() and torch.equal(seen["mask"][:, 65:], b["text_mask"])


def test_clip_mode_halves_its_loss_and_uses_the_image_tokens(clip_fit_cfg, tiny, clip_learn_data):
    cfg = dataclasses.replace(clip_fit_cfg, batch_size=16, max_steps=120, lr=3e-2, min_lr=3e-2, warmup_steps=5,
                              val_interval=60, ckpt_interval=1000, log_interval=10)
    frozen_before, _ = load_t5_decoder(tiny.t5, with_encoder=True)
    r = fit(cfg)
    assert r["variant"] == "clip"
    losses, val = r["losses"], r["val_losses"]
    first, last = losses[1], sum(losses[s] for s in range(111, 121)) / 10
    print(f"CLIP mode: train loss {first:.2f} -> {last:.2f}; val loss {val}")
    assert last <= 0.5 * first, f"training loss only went from {first:.2f} to {last:.2f}"
    assert val[120] < val[60] < val[0] and val[120] <= 0.5 * val[0]
    after = r["decoder"].state_dict()           # encoder and decoder frozen, bit for bit
    assert all(torch.equal(t, after[k]) for k, t in frozen_before.state_dict().items())
    assert any(k.startswith("encoder.") for k in after)
    # it learnt from the image tokens: another caption's tokens (other colour and shape) raise the loss
    import json
    with tarfile.open(clip_learn_data["val"]) as tf:
        meta = {m.name.split(".")[0]: json.load(tf.extractfile(m)) for m in tf if m.name.endswith(".json")}
    items = [(s, draw_word_split(len(s.caption.split(" ")), s.key)) for s in read_feature_shard(clip_learn_data["val"])]
    label = lambda s: (meta[s.key]["source"]["colour"], meta[s.key]["source"]["shape"])   # noqa: E731
    swapped = []
    for i, (s, k) in enumerate(items):
        other = next(o for o, _ in items[i + 1:] + items[:i] if label(o)[0] != label(s)[0] and label(o)[1] != label(s)[1])
        swapped.append((Sample(s.key, [], other.feat, caption=s.caption), k))
    r["decoder"].eval()
    with torch.no_grad():
        matched = batch_loss(r["aligner"], r["decoder"], collate_clip(items, tiny.t5_tok, 32), "cpu").item()
        mismatched = batch_loss(r["aligner"], r["decoder"], collate_clip(swapped, tiny.t5_tok, 32), "cpu").item()
    print(f"held-out loss with its own image tokens {matched:.2f}, with another image's {mismatched:.2f}")
    assert matched < 0.75 * mismatched


def test_clip_mode_resumes_exactly(clip_fit_cfg, tmp_path):
    full = fit(dataclasses.replace(clip_fit_cfg, out=str(tmp_path / "full"), max_steps=10, val_interval=5))
    fit(dataclasses.replace(clip_fit_cfg, out=str(tmp_path / "part"), max_steps=6, val_interval=5))
    rest = fit(dataclasses.replace(clip_fit_cfg, out=str(tmp_path / "part"), max_steps=10, val_interval=5, resume=True))
    assert list(rest["losses"]) == [7, 8, 9, 10]
    assert [rest["losses"][s] for s in (7, 8, 9, 10)] == [full["losses"][s] for s in (7, 8, 9, 10)]
    assert rest["val_losses"][10] == full["val_losses"][10]
    a, b = full["aligner"].state_dict(), rest["aligner"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["variant"] for r in log_records(str(tmp_path / "part"), "resume")] == ["clip"]


def test_precompute_clip_fit_export_then_conditioning(tiny, tmp_path):
    """python -m train precompute --variant clip (tiny BLIP-2, real photos with captions) -> fit -> export; the
    exported aligner (variant clip) drives build_clip_conditioning on the same encoder's tokens."""
    from thinkdiff_core.checkpoint import load_aligner
    from thinkdiff_core.conditioning import ImageEmbeds, build_clip_conditioning
    from thinkdiff_core.tiny import build_tiny_blip2_vision
    from thinkdiff_core.vision import VisionEncoder
    from train.tiny import write_images
    vision = build_tiny_blip2_vision(tmp_path / "blip2", full=True)
    images = write_images(str(tmp_path / "images"), 64, names=["astronaut.png", "chelsea.png", "coffee.png",
                                                                 "rocket.jpg", "horse.png"])
    os.remove(os.path.splitext(images[-1])[0] + ".txt")          # an image without a caption is skipped
    feats = tmp_path / "feats"
    r = run([PY, "-m", "train", "precompute", "--variant", "clip", "--vision", str(vision), "--data",
             str(tmp_path / "images"), "--out", str(feats), "--shard-size", "2", "--feature-dtype", "fp32"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 image(s), 260 tokens, 0 unreadable, 1 without a caption (skipped)" in r.stdout, r.stdout
    samples = [s for p in sorted(feats.glob("*.tar")) for s in read_feature_shard(str(p))]
    assert len(samples) == 4 and all(s.variant == "clip" for s in samples)
    cat = next(s for s in samples if s.key == "chelsea")
    assert cat.caption == "a tabby cat looks to the side on a wooden floor"
    enc = VisionEncoder.from_pretrained(str(vision), dtype="fp32")
    from PIL import Image
    want = enc.encode([Image.open(tmp_path / "images" / "chelsea.png").convert("RGB")]).tokens[0]
    torch.testing.assert_close(cat.features(), want)               # the stored tokens are the encoder's
    run_dir = tmp_path / "run"
    r = run([PY, "-m", "train", "fit", "--data", str(feats), "--t5", tiny.t5, "--out", str(run_dir), "--max-steps",
             "3", "--batch-size", "2", "--warmup-steps", "1", "--val-shards", "0", "--progress", "false"])
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "clip_aligner.safetensors"
    r = run([PY, "-m", "train", "export", "--run", str(run_dir), "--out", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    aligner, info = load_aligner(out)
    assert info.variant == "clip" and info.in_dim == enc.hidden_size and info.metadata["source_vlm"] == "blip2"
    cond = build_clip_conditioning(aligner, ImageEmbeds(tokens=want.unsqueeze(0), source="blip2"),
                                   text=torch.zeros(1, 256, 64), text_pooled=torch.zeros(1, 768), aligner_variant="clip")
    assert cond.tokens.shape == (1, 65 + 128, 64)


def test_clip_precompute_needs_the_vision_folder(tmp_path):
    r = run([PY, "-m", "train", "precompute", "--variant", "clip", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.returncode != 0 and "missing --vision" in r.stderr, r.stderr
