"""ThinkDiff-CLIP in the core library: the BLIP-2 vision tower (tiny, random, real layout and geometry),
the 65-token reduction, and the conditioning [65 tokens per image, in order ; FLUX T5 text] (docs/method.md §1.2, §4.2)."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from thinkdiff_core.aligner import Aligner
from thinkdiff_core.checkpoint import load_aligner
from thinkdiff_core.conditioning import (ImageEmbeds, IncompatibleError, ThinkDiffEmbeds, build_clip_conditioning,
                                         build_flux_conditioning)
from thinkdiff_core.tiny import build_tiny_blip2_vision
from thinkdiff_core.vision import VisionEncoder, VisionLoadError, reduce_tokens


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    return build_tiny_blip2_vision(tmp_path_factory.mktemp("tiny_blip2_vision"))


@pytest.fixture(scope="module")
def vision(vision_dir):
    return VisionEncoder.from_pretrained(vision_dir, dtype="fp32")


def test_reduction_is_cls_first_then_the_bilinear_8x8_grid_row_major():
    torch.manual_seed(0)
    h = torch.randn(2, 257, 5)
    out = reduce_tokens(h)
    assert out.shape == (2, 65, 5)
    assert torch.equal(out[:, 0], h[:, 0])                       # CLS first, untouched
    # with a 16x16 -> 8x8 bilinear resize (align_corners=False) each output is the mean of a 2x2 block
    grid = h[:, 1:].reshape(2, 16, 16, 5)
    block = grid.reshape(2, 8, 2, 8, 2, 5).mean(dim=(2, 4))      # [2, 8, 8, 5]
    torch.testing.assert_close(out[:, 1:], block.reshape(2, 64, 5))
    # row-major: token 1 + 8*r + c is grid cell (r, c)
    torch.testing.assert_close(out[:, 1 + 8 * 3 + 5], grid[:, 6:8, 10:12].mean(dim=(1, 2)))
    ref = F.interpolate(grid.permute(0, 3, 1, 2), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(2, 64, 5))


def test_encoder_gives_65_post_layernorm_tokens_per_image_in_order(vision, photos):
    out = vision.encode(photos[:3])
    assert out.tokens.shape == (3, 65, vision.hidden_size) and vision.tokens_per_image == 65
    # the tower's own output (after post_layernorm), reduced: nothing else happens in between
    pv = vision.pixel_values(photos[:3])
    assert pv.shape == (3, 3, 224, 224)
    with torch.no_grad():
        full = vision.model(pixel_values=pv).last_hidden_state
    assert full.shape == (3, 257, vision.hidden_size)
    ln = vision.model.post_layernorm
    with torch.no_grad():
        pre = vision.model(pixel_values=pv, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(full, ln(pre))
    torch.testing.assert_close(out.tokens, reduce_tokens(full))
    # order kept: encoding the images one by one gives the same rows in the same order
    for i, p in enumerate(photos[:3]):
        torch.testing.assert_close(vision.encode([p]).tokens[0], out.tokens[i], rtol=1e-4, atol=1e-4)
    # different photos give clearly different tokens (a degenerate random tower would not)
    assert (out.tokens[0] - out.tokens[1]).abs().max() > 0.1 * out.tokens.abs().max()


def test_blip2_preprocessing_is_224_bicubic_with_clip_mean_std(vision, photos):
    p = vision.processor
    assert (p.size["height"], p.size["width"]) == (224, 224)
    assert tuple(p.image_mean) == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert tuple(p.image_std) == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    import numpy as np
    from PIL import Image
    img = photos[1]
    ref = np.asarray(img.resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255.0
    ref = (ref - np.array(p.image_mean, dtype=np.float32)) / np.array(p.image_std, dtype=np.float32)
    got = vision.pixel_values([img])[0].permute(1, 2, 0).numpy()
    assert np.abs(got - ref).max() < 0.05


def test_full_blip2_folder_reads_only_the_vision_tower(tmp_path, photos, vision_dir):
    full = build_tiny_blip2_vision(tmp_path / "blip2", full=True)
    with open(os.path.join(full, "config.json")) as f:
        assert json.load(f)["model_type"] == "blip-2"
    enc = VisionEncoder.from_pretrained(full, dtype="fp32")
    assert sum(p.numel() for p in enc.model.parameters()) < 200_000        # no Q-Former, no T5
    assert enc.encode(photos[:1]).tokens.shape == (1, 65, 32)


def test_missing_or_wrong_folders_say_what_to_put_where(tmp_path, tiny_vlm_dir):
    with pytest.raises(VisionLoadError, match="not found.*Put a BLIP-2 model folder.*models/blip2"):
        VisionEncoder.from_pretrained(tmp_path / "nothing")
    with pytest.raises(VisionLoadError, match="'qwen2_vl' is not a BLIP-2 model.*Load ThinkDiff VLM"):
        VisionEncoder.from_pretrained(tiny_vlm_dir)


def clip_embeds(k=2, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageEmbeds(tokens=torch.randn(k, 65, d, generator=g), source="tiny-blip2")


def test_clip_conditioning_is_images_in_order_then_the_text_with_its_pooled_vector():
    torch.manual_seed(0)
    a = Aligner(32, 4096, 64)
    e = clip_embeds(k=3)
    text, pooled = torch.randn(1, 256, 4096), torch.randn(1, 768)
    c = build_clip_conditioning(a, e, text=text, text_pooled=pooled)
    assert c.tokens.shape == (1, 3 * 65 + 128, 4096) and c.guidance == 3.5
    for i in range(3):
        with torch.no_grad():
            torch.testing.assert_close(c.tokens[0, 65 * i:65 * (i + 1)], a(e.tokens[i]).float())
    torch.testing.assert_close(c.tokens[:, 195:], text[:, :128])
    assert torch.equal(c.pooled, pooled)
    assert build_clip_conditioning(a, e, text=text, text_pooled=pooled, text_tokens=0).tokens.shape[1] == 195 + 256
    with pytest.raises(ValueError, match="no text conditioning is connected: connect CLIPTextEncodeFlux"):
        build_clip_conditioning(a, e, text=None, text_pooled=None)


def test_an_aligner_of_the_other_variant_gets_a_clear_message():
    lvlm = Aligner(64, 4096, 16)
    with pytest.raises(IncompatibleError, match="ThinkDiff-CLIP image embeds.*'tiny-blip2'.*ThinkDiff-LVLM aligner"
                                                ".*Load a ThinkDiff-CLIP aligner \\(thinkdiff_clip.pth"):
        build_clip_conditioning(lvlm, clip_embeds(), text=torch.randn(1, 4, 4096), text_pooled=None,
                                aligner_variant="lvlm")
    # the same width but a file that says it is an LVLM aligner: the variant decides
    with pytest.raises(IncompatibleError, match="ThinkDiff-CLIP image embeds.*ThinkDiff-LVLM aligner"):
        build_clip_conditioning(Aligner(32, 4096, 16), clip_embeds(), text=torch.randn(1, 4, 4096), text_pooled=None,
                                aligner_variant="lvlm")
    with pytest.raises(IncompatibleError, match="ThinkDiff-CLIP image embeds.*32-wide.*reads 64-wide"):
        build_clip_conditioning(lvlm, clip_embeds(), text=torch.randn(1, 4, 4096), text_pooled=None)
    vlm_embeds = ThinkDiffEmbeds(hidden=torch.randn(5, 32), token_ids=torch.arange(5), text="x", source="tiny-vlm")
    with pytest.raises(IncompatibleError, match="ThinkDiff-LVLM embeds.*ThinkDiff-CLIP aligner.*thinkdiff_lvlm.pth"):
        build_flux_conditioning(Aligner(32, 4096, 16), vlm_embeds, aligner_variant="clip")


def test_official_clip_checkpoint_drives_the_conditioning(tmp_path, vision, photos):
    """An official-layout thinkdiff_clip.pth ({"model": mm_projector.*}) loads strictly and maps the tokens."""
    torch.manual_seed(3)
    src = Aligner(vision.hidden_size, 4096, 64)
    path = tmp_path / "thinkdiff_clip.pth"
    torch.save({"model": src.state_dict(), "optimizer": None, "epoch": 4}, path)
    aligner, info = load_aligner(path)
    assert info.format == "official-pth" and info.in_dim == vision.hidden_size
    e = ImageEmbeds(tokens=vision.encode(photos[:2]).tokens, source=vision.name)
    c = build_clip_conditioning(aligner, e, text=torch.zeros(1, 128, 4096), text_pooled=torch.zeros(1, 768))
    with torch.no_grad():
        torch.testing.assert_close(c.tokens[0, :130], src(e.tokens).reshape(130, 4096))
