import logging

import pytest
import torch

from thinkdiff_core.aligner import Aligner
from thinkdiff_core.conditioning import (IncompatibleError, ThinkDiffEmbeds, align, build_flux_conditioning, combine,
                                         pooled_vector)


def embeds(n=6, d=64, source="tiny-vlm", seed=0) -> ThinkDiffEmbeds:
    g = torch.Generator().manual_seed(seed)
    return ThinkDiffEmbeds(hidden=torch.randn(n, d, generator=g), token_ids=torch.arange(n), text="a red cup",
                           source=source, preset="in_context", num_images=2)


def test_align_gives_batched_float_embeddings():
    torch.manual_seed(0)
    a = Aligner(64, 4096, 128).to(torch.bfloat16)
    rows = torch.randn(128, 64)
    out = align(a, rows)
    assert out.shape == (1, 128, 4096) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], a(rows).float())
    assert align(a, rows.expand(2, -1, -1)).shape == (2, 128, 4096)


def test_hidden_size_mismatch_names_both_sizes_and_models():
    with pytest.raises(ValueError, match="has hidden size 3584 but the aligner expects 64"):
        align(Aligner(64, 4096, 16), torch.randn(8, 3584))
    with pytest.raises(IncompatibleError, match="the VLM 'big-vlm' has hidden size 3584 but the aligner "
                                                "'mine.pth' expects 64.*needs Qwen2-VL-7B-Instruct"):
        build_flux_conditioning(Aligner(64, 4096, 16), embeds(d=3584, source="big-vlm"), aligner_name="mine.pth")


def test_combine_modes_and_strengths():
    a = torch.ones(1, 3, 8)
    t = torch.full((1, 5, 8), 2.0)
    assert torch.equal(combine(a, t, "replace"), a)
    out = combine(a, t, "aligned_first", aligned_strength=0.5, text_strength=3.0)
    assert out.shape == (1, 8, 8)
    assert torch.equal(out[:, :3], a * 0.5) and torch.equal(out[:, 3:], t * 3.0)
    out = combine(a, t, "text_first")
    assert torch.equal(out[:, :5], t) and torch.equal(out[:, 5:], a)
    assert combine(a.expand(2, -1, -1), t, "text_first").shape == (2, 8, 8)
    with pytest.raises(ValueError, match="width 7"):
        combine(a, torch.ones(1, 2, 7), "text_first")
    with pytest.raises(ValueError, match="unknown mode"):
        combine(a, t, "sum")


def test_pooled_zeros_fallback_is_logged_and_wide_vectors_give_clip_l(caplog):
    with caplog.at_level(logging.WARNING, logger="thinkdiff"):
        p = pooled_vector(None, batch=2)
    assert torch.equal(p, torch.zeros(2, 768)) and "using zeros" in caplog.text
    given = torch.randn(768)
    assert torch.equal(pooled_vector(given), given.unsqueeze(0))
    wide = torch.randn(1, 2048)                    # SD3-style [CLIP-L ; CLIP-G]
    assert torch.equal(pooled_vector(wide), wide[:, :768])
    with pytest.raises(ValueError, match="size 512"):
        pooled_vector(torch.randn(1, 512))


def test_flux_conditioning_replace_is_the_aligned_rows_with_the_empty_prompt_pooled():
    torch.manual_seed(0)
    a = Aligner(64, 4096, 32)
    e = embeds()
    empty, text_pooled = torch.randn(1, 768), torch.randn(1, 768)
    c = build_flux_conditioning(a, e, text=torch.randn(1, 5, 4096), text_pooled=text_pooled,
                                empty_prompt_pooled=empty)
    torch.testing.assert_close(c.tokens, a(e.hidden).unsqueeze(0).float())   # the paper: aligned rows only
    assert torch.equal(c.pooled, empty) and c.guidance == 3.5
    # without CLIP the text conditioning's pooled vector is used; without both, zeros
    assert torch.equal(build_flux_conditioning(a, e, text_pooled=text_pooled).pooled, text_pooled)
    assert torch.equal(build_flux_conditioning(a, e).pooled, torch.zeros(1, 768))


def test_flux_conditioning_modes_with_text():
    torch.manual_seed(0)
    a = Aligner(64, 4096, 32)
    e = embeds()
    text = torch.randn(1, 5, 4096)
    c = build_flux_conditioning(a, e, text=text, mode="text_first", aligned_strength=2.0, text_strength=0.5,
                                guidance=4.0)
    assert c.tokens.shape == (1, 11, 4096) and c.guidance == 4.0
    torch.testing.assert_close(c.tokens[:, :5], text * 0.5)
    torch.testing.assert_close(c.tokens[:, 5:], 2.0 * a(e.hidden).unsqueeze(0))
    c = build_flux_conditioning(a, e, text=text, mode="aligned_first")
    torch.testing.assert_close(c.tokens[:, 6:], text)


def test_modes_that_combine_need_a_text_conditioning():
    a = Aligner(64, 4096, 32)
    for mode in ("aligned_first", "text_first"):
        with pytest.raises(ValueError, match=f"mode {mode} combines .* none is connected.*choose mode replace"):
            build_flux_conditioning(a, embeds(), mode=mode)


@pytest.mark.parametrize("name", ["guidance", "aligned_strength", "text_strength"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused(name, value):
    with pytest.raises(ValueError, match=f"{name} is {value}: give a finite number"):
        build_flux_conditioning(Aligner(64, 4096, 32), embeds(), **{name: value})


def test_aligner_output_width_must_be_flux_t5_width():
    """An aligner fitted to another text encoder (here 128 wide) is refused with a message, not left to fail
    inside FLUX as "mat1 and mat2 shapes cannot be multiplied"."""
    with pytest.raises(IncompatibleError, match="the aligner 'small-t5.safetensors' outputs 128-wide tokens, but "
                                                r"FLUX reads T5-XXL states \(4096 wide\)"):
        build_flux_conditioning(Aligner(64, 128, 16), embeds(), aligner_name="small-t5.safetensors")
