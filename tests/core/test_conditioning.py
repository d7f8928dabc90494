import logging

import pytest
import torch

from thinkdiff_core.aligner import Aligner
from thinkdiff_core.conditioning import align, combine, pooled_vector


def test_align_gives_batched_float_embeddings():
    torch.manual_seed(0)
    a = Aligner(64, 4096, 128).to(torch.bfloat16)
    rows = torch.randn(128, 64)
    out = align(a, rows)
    assert out.shape == (1, 128, 4096) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], a(rows).float())
    assert align(a, rows.expand(2, -1, -1)).shape == (2, 128, 4096)


def test_hidden_size_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match="hidden size is 3584 but the aligner expects 64"):
        align(Aligner(64, 4096, 16), torch.randn(8, 3584))


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


def test_pooled_zeros_fallback_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="thinkdiff"):
        p = pooled_vector(None, batch=2)
    assert torch.equal(p, torch.zeros(2, 768)) and "using zeros" in caplog.text
    given = torch.randn(768)
    assert torch.equal(pooled_vector(given), given.unsqueeze(0))
