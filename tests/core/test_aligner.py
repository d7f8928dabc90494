import math

import pytest
import torch

from thinkdiff_core.aligner import Aligner, num_parameters


def test_parameter_count_matches_the_paper():
    with torch.device("meta"):
        assert num_parameters(Aligner(3584)) == 31_469_568   # LVLM: 3584 -> 4096 -> 4096 + norm
        assert num_parameters(Aligner(1408)) == 22_556_672   # CLIP: 1408 -> 4096 -> 4096 + norm


def test_state_dict_keys_follow_the_official_layout():
    with torch.device("meta"):
        keys = {k: tuple(v.shape) for k, v in Aligner(3584).state_dict().items()}
    assert keys == {"mm_projector.0.weight": (4096, 3584), "mm_projector.0.bias": (4096,),
                    "mm_projector.2.weight": (4096, 4096), "mm_projector.2.bias": (4096,),
                    "mm_projector.3.weight": (4096,)}


def reference_forward(x, w0, b0, w2, b2, g, eps=1e-6):
    """Straightforward re-computation: linear, erf GELU, linear, RMS norm in float64."""
    x, w0, b0, w2, b2, g = (t.double() for t in (x, w0, b0, w2, b2, g))
    h = x @ w0.T + b0
    h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    y = h @ w2.T + b2
    return y / torch.sqrt((y * y).mean(-1, keepdim=True) + eps) * g


def test_numerics_match_an_independent_computation():
    torch.manual_seed(0)
    a = Aligner(48, 32, 40)
    with torch.no_grad():
        a.norm.weight.uniform_(0.5, 1.5)   # a non-trivial norm weight
    x = torch.randn(2, 7, 48) * 3
    ref = reference_forward(x, *(p.detach() for p in a.state_dict().values()))
    out = a(x)
    assert out.shape == (2, 7, 32)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # a tanh-approximate GELU or a mean-subtracting LayerNorm would not match
    approx = torch.nn.functional.gelu(x @ a.mm_projector[0].weight.T + a.mm_projector[0].bias, approximate="tanh")
    assert not torch.allclose(a.mm_projector[1](x @ a.mm_projector[0].weight.T + a.mm_projector[0].bias), approx)


def test_bf16_aligner_computes_the_norm_in_fp32():
    torch.manual_seed(1)
    a = Aligner(16, 32, 32)
    x = torch.randn(3, 16) * 100   # large values: fp16/bf16 squares would lose precision
    ref = a(x)
    out = a.to(torch.bfloat16)(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_norm_initialised_from_a_t5_encoder_final_norm():
    a = Aligner(8, 16, 16)
    w = torch.linspace(0.1, 2.0, 16)
    a.init_norm_from_t5(w)
    assert torch.equal(a.norm.weight.detach(), w)
    with pytest.raises(ValueError, match="output dim is 16"):
        a.init_norm_from_t5(torch.ones(4096))


def test_wrong_feature_width_is_a_clear_error():
    with pytest.raises(ValueError, match="expects features of size 8"):
        Aligner(8, 16, 16)(torch.randn(1, 3, 9))
