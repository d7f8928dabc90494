"""The VLM encoder on a tiny random Qwen2-VL with the real tokenizer and real photos.

The central check is the row semantics (docs/method.md §1.1): row k of the captured [N, D] tensor is the
final-norm state whose LM head produced generated token k. It is checked against a teacher-forced
forward pass over prompt + generated tokens, and against transformers' own per-step hidden states.
"""
import pytest
import torch

from thinkdiff_core.prompts import PromptError, build_prompt, in_context_content
from thinkdiff_core.vlm import VLMEncoder, VLMLoadError


def content_for(n_images, photos):
    words = ["white", "red", "black", "blue", "green"][: n_images + 1]
    return in_context_content(words, photos[:n_images])


@pytest.mark.parametrize("n_images", [1, 2, 4])
def test_rows_equal_teacher_forced_final_norm_states(encoder, photos, n_images):
    content = content_for(n_images, photos)
    out = encoder.generate(content, max_new_tokens=12, seed=n_images)
    assert out.token_ids.shape == (12,) and out.hidden.shape == (12, encoder.hidden_size)
    assert out.prompt.count("<|vision_start|>") == n_images
    assert f"Picture {n_images}: <|vision_start|>" in out.prompt
    forced = encoder.teacher_forced_states(content, out.token_ids)
    assert forced.shape == out.hidden.shape
    torch.testing.assert_close(out.hidden, forced, rtol=1e-4, atol=1e-4)
    # an off-by-one in either direction is far from equal
    assert not torch.allclose(out.hidden[1:], forced[:-1], atol=1e-2)
    assert not torch.allclose(out.hidden[:-1], forced[1:], atol=1e-2)


def test_rows_produce_the_generated_tokens_through_the_lm_head(encoder, photos):
    """Greedy decoding: argmax(lm_head(row k)) must be token k."""
    out = encoder.generate(content_for(2, photos), max_new_tokens=10, do_sample=False)
    logits = encoder.model.lm_head(out.hidden)
    assert torch.equal(logits.argmax(-1).cpu(), out.token_ids)


def test_rows_equal_transformers_per_step_hidden_states(encoder, photos):
    """The spec's HF recipe: last layer entry of step 0 at the last prompt position, then each step."""
    content = content_for(2, photos)
    out = encoder.generate(content, max_new_tokens=8, seed=3)
    inputs, _ = encoder.prepare(content)
    from transformers import GenerationConfig
    gen = GenerationConfig(max_new_tokens=8, min_new_tokens=8, do_sample=True, temperature=0.6, top_p=0.9,
                           top_k=None, repetition_penalty=None, eos_token_id=encoder._eos_ids(),
                           pad_token_id=encoder.tokenizer.pad_token_id, output_hidden_states=True,
                           return_dict_in_generate=True)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        saved, encoder.model.generation_config = encoder.model.generation_config, gen
        try:
            ref = encoder.model.generate(**inputs, generation_config=gen)
        finally:
            encoder.model.generation_config = saved
    rows = torch.cat([step[-1][0, -1:] for step in ref.hidden_states])
    assert torch.equal(ref.sequences[0, out.prompt_len:], out.token_ids)
    torch.testing.assert_close(rows, out.hidden)


def test_exactly_n_tokens_by_default_and_stop_at_eos_option(encoder, photos):
    content = build_prompt("image_text", photos[:1], "Create a diffusion prompt for a dog in this style.")
    # make EOS the most likely token so that a natural stop happens at once
    eos = encoder._eos_ids()[0]

    class FavourEOS(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, h):
            logits = self.head(h)
            logits[..., eos] += 1e4
            return logits

    head = encoder.model.lm_head
    encoder.model.lm_head = FavourEOS(head)
    try:
        forced = encoder.generate(content, max_new_tokens=6, do_sample=False)
        stopped = encoder.generate(content, max_new_tokens=6, do_sample=False, stop_at_eos=True)
    finally:
        encoder.model.lm_head = head
    assert forced.token_ids.shape == (6,) and eos not in forced.token_ids.tolist()
    assert stopped.token_ids.tolist() == [eos] and stopped.hidden.shape == (1, encoder.hidden_size)


def test_seeded_sampling_is_reproducible_and_seed_matters(encoder, photos):
    content = content_for(1, photos)
    a = encoder.generate(content, max_new_tokens=16, seed=7)
    b = encoder.generate(content, max_new_tokens=16, seed=7)
    c = encoder.generate(content, max_new_tokens=16, seed=8)
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.hidden, b.hidden)
    assert a.text == b.text
    assert not torch.equal(a.token_ids, c.token_ids)


class Peaked(torch.nn.Module):
    """Wraps the LM head: adds a fixed bias that makes 8 tokens dominate with logits 20, 19, ..., 13.
    At temperature 1 the top token has p = 0.63, the second 0.23, ...; the tiny random model's own
    logits (|x| < 1) barely matter. The rows (captured at the final norm) are unaffected."""
    TOKENS = list(range(1000, 1008))

    def __init__(self, head):
        super().__init__()
        self.head = head
        self.bias = torch.zeros(head.out_features)
        self.bias[self.TOKENS] = 20.0 - torch.arange(8, dtype=torch.float32)

    def forward(self, h):
        return self.head(h) + self.bias.to(h.dtype)


@pytest.fixture
def peaked(encoder):
    head = encoder.model.lm_head
    encoder.model.lm_head = Peaked(head)
    try:
        yield encoder
    finally:
        encoder.model.lm_head = head


def top_share(enc, content, seeds=range(4), n=32, **kw) -> float:
    """Share of generated tokens that are the most likely token, over several seeds."""
    ids = torch.cat([enc.generate(content, max_new_tokens=n, seed=s, **kw).token_ids for s in seeds])
    return (ids == Peaked.TOKENS[0]).float().mean().item()


def test_top_p_truncates_the_distribution(peaked, photos):
    content = content_for(1, photos)
    # top_p 0.5 < p(top) = 0.63: only the top token is left, whatever the seed
    assert top_share(peaked, content, temperature=1.0, top_p=0.5) == 1.0
    # top_p 1: the other tokens are drawn too
    assert top_share(peaked, content, temperature=1.0, top_p=1.0) < 0.8


def test_temperature_sharpens_and_flattens(peaked, photos):
    content = content_for(1, photos)
    assert top_share(peaked, content, temperature=0.05, top_p=1.0) == 1.0   # p(top) ~ 1
    sharp = top_share(peaked, content, temperature=0.6, top_p=1.0)          # p(top) = 0.81
    flat = top_share(peaked, content, temperature=2.0, top_p=1.0)           # p(top) = 0.40
    assert sharp > 0.68 and flat < 0.55, (sharp, flat)


def test_checkpoint_generation_defaults_do_not_leak(peaked, photos):
    """Qwen2-VL-7B-Instruct's generation_config.json has top_k 1, top_p 0.001, temperature 0.01 and
    repetition_penalty 1.05; ThinkDiff's sampling (T 0.6, top-p 0.9, nothing else) must ignore them.
    Exaggerated here so that a leak shows: a repetition penalty of 1e4 would stop greedy decoding from
    repeating the top token, and top_k 1 / temperature 0.01 would make sampling greedy."""
    content = content_for(1, photos)
    cfg = peaked.model.generation_config
    saved = (cfg.top_k, cfg.top_p, cfg.temperature, cfg.repetition_penalty)
    cfg.top_k, cfg.top_p, cfg.temperature, cfg.repetition_penalty = 1, 0.001, 0.01, 1e4
    try:
        greedy = peaked.generate(content, max_new_tokens=16, do_sample=False)
        flat = top_share(peaked, content, temperature=2.0, top_p=1.0)
    finally:
        cfg.top_k, cfg.top_p, cfg.temperature, cfg.repetition_penalty = saved
    assert greedy.token_ids.tolist() == [Peaked.TOKENS[0]] * 16
    assert flat < 0.55


def test_rows_are_final_norm_states_not_pre_norm(encoder, photos):
    """The captured rows are the output of the language model's final RMSNorm (with its scale), not
    its input and not the unscaled normalisation. The tiny model's norm scale is far from ones."""
    norm = encoder.norm
    assert (norm.weight - 1).abs().max() > 0.2
    pre = []
    handle = norm.register_forward_hook(lambda m, inp, out: pre.append(inp[0][:, -1].detach().clone()))
    try:
        out = encoder.generate(content_for(2, photos), max_new_tokens=6, seed=1)
    finally:
        handle.remove()
    pre = torch.cat(pre)
    unscaled = pre * torch.rsqrt(pre.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    torch.testing.assert_close(out.hidden, norm.weight * unscaled)
    assert not torch.allclose(out.hidden, pre, atol=1e-2)
    assert not torch.allclose(out.hidden, unscaled, atol=1e-2)


def test_loads_in_the_requested_dtype(tiny_vlm_dir):
    """`dtype=` reaches from_pretrained (transformers < 4.56 ignores it and would load a 7B model in fp32)."""
    enc = VLMEncoder.from_pretrained(tiny_vlm_dir, dtype="bf16")
    assert {p.dtype for p in enc.model.parameters()} == {torch.bfloat16}
    assert enc.norm.weight.dtype == torch.bfloat16


def test_progress_callback_per_token_and_interrupt(encoder, photos):
    seen = []
    encoder.generate(content_for(1, photos), max_new_tokens=5, seed=0, on_token=lambda k, n: seen.append((k, n)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]

    class Stop(Exception):
        pass

    def stop_after_two(k, n):
        if k >= 2:
            raise Stop()
    with pytest.raises(Stop):
        encoder.generate(content_for(1, photos), max_new_tokens=50, on_token=stop_after_two)
    # the hook was removed: a later call captures exactly its own rows
    assert encoder.generate(content_for(1, photos), max_new_tokens=3).hidden.shape[0] == 3


def test_missing_or_wrong_model_folders_name_the_problem(tmp_path, tiny_vlm_dir):
    with pytest.raises(VLMLoadError, match="VLM folder not found: .*models/LLM"):
        VLMEncoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VLMLoadError, match="no config.json"):
        VLMEncoder.from_pretrained(tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text('{"model_type": "qwen2_vl"}')
    with pytest.raises(VLMLoadError, match=r"no \*.safetensors weights"):
        VLMEncoder.from_pretrained(tmp_path / "noweights")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "llama" / "model.safetensors").write_bytes(b"")
    (tmp_path / "llama" / "tokenizer.json").write_text("{}")
    with pytest.raises(VLMLoadError, match="model_type 'llama' is not supported"):
        VLMEncoder.from_pretrained(tmp_path / "llama")


def test_prompt_errors():
    with pytest.raises(PromptError, match="at least one example image"):
        build_prompt("in_context", [], "white, red")
    with pytest.raises(PromptError, match="2 image\\(s\\) need 3 words, got 2"):
        build_prompt("in_context", ["img1", "img2"], "white, red")
    with pytest.raises(PromptError, match="exactly 2 images"):
        build_prompt("two_images", ["img1"], "")
    with pytest.raises(PromptError, match="unknown prompt preset"):
        build_prompt("nope", [], "x")


def test_qwen2_5_vl_plugs_in(tmp_path, qwen_tokenizer_dir, photos):
    from thinkdiff_core.tiny import build_tiny_qwen2vl
    enc = VLMEncoder.from_pretrained(build_tiny_qwen2vl(tmp_path / "q25", qwen_tokenizer_dir, family="qwen2_5_vl"),
                                     dtype="fp32")
    assert type(enc.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    content = content_for(2, photos)
    out = enc.generate(content, max_new_tokens=6, seed=0)
    torch.testing.assert_close(out.hidden, enc.teacher_forced_states(content, out.token_ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kw, message", [
    (dict(temperature=float("nan")), "temperature is nan"),
    (dict(temperature=float("inf")), "temperature is inf"),
    (dict(top_p=float("nan")), "top_p is nan"),
    (dict(top_p=1.5), "top_p is 1.5"),
])
def test_bad_sampling_numbers_are_refused(encoder, photos, kw, message):
    with pytest.raises(ValueError, match=message):
        encoder.generate(content_for(1, photos), max_new_tokens=2, **kw)


def test_extreme_aspect_ratio_names_the_image(encoder, photos):
    from PIL import Image
    with pytest.raises(ValueError, match=r"image 2 is 4000x10 pixels \(aspect ratio 400:1\).*crop or pad it"):
        encoder.generate(content_for(2, [photos[0], Image.new("RGB", (4000, 10))]), max_new_tokens=2)
    # tiny images are fine (the processor scales them up)
    assert encoder.generate(content_for(1, [Image.new("RGB", (1, 1))]), max_new_tokens=2).hidden.shape[0] == 2


def test_broken_config_and_truncated_weights_name_the_file(tmp_path, tiny_vlm_dir):
    import shutil
    broken = tmp_path / "broken_config"
    shutil.copytree(tiny_vlm_dir, broken)
    (broken / "config.json").write_text('{"model_type": "qwen2_vl", ')
    with pytest.raises(VLMLoadError, match=r"config.json is not valid JSON"):
        VLMEncoder.from_pretrained(broken)
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_vlm_dir, truncated)
    weights = truncated / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(VLMLoadError, match=r"weights could not be read.*probably truncated"):
        VLMEncoder.from_pretrained(truncated)


def test_out_of_memory_during_generation_frees_what_it_took(encoder, photos):
    """An out-of-memory error in the middle of generation (simulated: a decoder layer allocates a block,
    then raises torch.OutOfMemoryError as the CUDA allocator would) gives a message saying what to do,
    leaves no hook and no swapped generation config behind, frees what generation held (the block
    allocated inside generate's frames), and the next generation works."""
    import gc
    import weakref

    from thinkdiff_core.vlm import find_final_norm
    taken = []

    def oom(module, args):
        block = torch.empty(4 << 20)            # 16 MB held by generate's frames when the error flies
        taken.append(weakref.ref(block))
        if len(taken) == 3:                     # the third decoding step
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    layer = encoder.model.model.language_model.layers[0]
    handle = layer.register_forward_pre_hook(oom)
    cfg = encoder.model.generation_config
    try:
        with pytest.raises(torch.OutOfMemoryError) as ei:
            encoder.generate(photos[:1] + ["hello"], max_new_tokens=8, do_sample=False)
    finally:
        handle.remove()
    msg = str(ei.value)
    assert "the VLM ran out of memory" in msg and "Lower max_new_tokens" in msg and "is freed" in msg, msg
    assert "Tried to allocate 20.00 MiB" in msg, msg        # the allocator's own figure is kept
    assert ei.value.__context__ is None and ei.value.__cause__ is None   # no traceback holding generate's frames
    del ei
    gc.collect()
    assert len(taken) == 3 and all(r() is None for r in taken), "memory taken during generation is still held"
    assert not find_final_norm(encoder.model)._forward_hooks, "the row-capturing hook was left on the final norm"
    assert encoder.model.generation_config is cfg
    out = encoder.generate(photos[:1] + ["hello"], max_new_tokens=4, do_sample=False)
    assert out.hidden.shape[0] == 4
