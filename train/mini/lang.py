"""ThinkDiff-mini's language models: a tiny flan-T5 (autoencodes the captions) and a tiny Qwen2-VL (captions
a shape with the paper's 16 instructions, and answers the in-context prompt), both real architectures with
the real tokenizers, built by thinkdiff_core.tiny and trained here on easy-vqa."""
from __future__ import annotations

import random

import torch

from thinkdiff_core.prompts import TRAINING_INSTRUCTIONS, build_prompt, caption_prompt, render_qwen_chat
from thinkdiff_core.tiny import build_tiny_qwen2vl, build_tiny_t5

from . import data
from .image import cosine_lr

VLM_IMAGE_PIXELS = 112 * 112   # every image becomes 112x112 for the tiny VLM: 16 merged visual tokens


def t5_texts() -> list[str]:
    """Every caption in every template, and every word suffix of them (the aligner's training targets
    are suffixes of the VLM's captions)."""
    out = set()
    for c in data.COLOURS:
        for s in data.SHAPES:
            for t in data.TEMPLATES:
                words = data.caption(c, s, t).split()
                out.update(" ".join(words[i:]) for i in range(len(words)))
    return sorted(out)


def train_t5(dst: str, tokenizer_dir: str, steps: int, d_model: int = 64, batch: int = 64, lr: float = 3e-3,
             seed: int = 0, log=print) -> str:
    """A tiny flan-T5 layout trained to reproduce its input text (encoder -> decoder), saved to dst."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration
    build_tiny_t5(dst, tokenizer_dir, d_model=d_model, seed=seed)
    tok = AutoTokenizer.from_pretrained(dst, local_files_only=True)
    model = T5ForConditionalGeneration.from_pretrained(dst, local_files_only=True).train()
    texts = t5_texts()
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        batch_texts = [rng.choice(texts) for _ in range(batch)]
        enc = tok(batch_texts, return_tensors="pt", padding=True)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 20)
        loss = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  T5 step {step}/{steps} loss {loss.item():.4f}")
    model.eval().save_pretrained(dst)
    return dst


@torch.no_grad()
def t5_encode(t5_dir: str, texts: list[str]) -> list[torch.Tensor]:
    """The tiny T5's encoder states [T_i, d_model] of each text (with its </s>), what the image model reads."""
    from transformers import AutoTokenizer, T5EncoderModel
    tok = AutoTokenizer.from_pretrained(t5_dir, local_files_only=True)
    enc = T5EncoderModel.from_pretrained(t5_dir, local_files_only=True).eval()
    return [enc(**tok([t], return_tensors="pt")).last_hidden_state[0] for t in texts]


def vlm_example(rng: random.Random, items, groups: dict, in_context_p: float):
    """(prompt, answer) of one training example: a caption with one of the 16 instructions, or (with
    probability in_context_p) a 2-shot in-context case."""
    if rng.random() < in_context_p:
        case = data.in_context_case(rng, groups, shots=2)
        return build_prompt("in_context", [data.load_image(it.path) for it in case.shots], case.text), case.answer
    it = rng.choice(items)
    return caption_prompt(data.load_image(it.path), rng.choice(TRAINING_INSTRUCTIONS)), data.caption(it.colour, it.shape)


def used_token_ids(tok) -> torch.Tensor:
    """Every token id the VLM's training examples can hold: the chat template with each of the 16
    instructions and every in-context prompt (every word triple of both tasks), and every answer."""
    from PIL import Image
    im = Image.new("RGB", (8, 8))
    texts = []
    for instruction in TRAINING_INSTRUCTIONS:
        texts.append(render_qwen_chat(caption_prompt(im, instruction).content, add_vision_id=False)[0])
    for words in [*[(a, b, c) for a in data.COLOURS for b in data.COLOURS for c in data.COLOURS],
                  *[(a, b, c) for a in data.SHAPES for b in data.SHAPES for c in data.SHAPES]]:
        prompt = build_prompt("in_context", [im, im], ", ".join(words))
        texts.append(render_qwen_chat(prompt.content, add_vision_id=prompt.add_vision_id)[0])
    for c in data.COLOURS:
        for s in data.SHAPES:
            texts += [data.caption(c, s) + "<|im_end|>", data.caption(c, s, data.ANSWER) + "<|im_end|>"]
    ids = {i for t in texts for i in tok(t, add_special_tokens=False).input_ids}
    return torch.tensor(sorted(ids))


class UsedRows(torch.nn.Module):
    """Trains only the rows of the input embedding and the LM head that the task's tokens use (a few
    hundred of the tokenizer's 151k): the other rows keep their random start, and the loss is the softmax
    over the used tokens. AdamW over the two full 151k x hidden matrices is most of a training step's cost
    on a CPU otherwise (0.26 of 0.55 s; bench/RESULTS.md). ``attach`` swaps it in as the embedding;
    ``write_back`` puts the trained rows into the model's own matrices and takes it out again."""

    def __init__(self, model, ids: torch.Tensor):
        super().__init__()
        lm = model.model.language_model
        # plain references (not submodules: this module becomes the language model's embedding)
        self._parts = (lm, lm.embed_tokens, model.lm_head)
        self.ids = ids
        self.pos = torch.full((lm.embed_tokens.num_embeddings,), -1, dtype=torch.long)
        self.pos[ids] = torch.arange(len(ids))
        self.emb_rows = torch.nn.Parameter(lm.embed_tokens.weight[ids].detach().clone())
        self.head_rows = torch.nn.Parameter(model.lm_head.weight[ids].detach().clone())
        lm.embed_tokens.weight.requires_grad_(False)
        model.lm_head.weight.requires_grad_(False)
        lm.embed_tokens = self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        idx = self.pos[input_ids]
        base = torch.nn.functional.embedding(input_ids, self._parts[1].weight)
        return torch.where((idx >= 0)[..., None], self.emb_rows[idx.clamp(min=0)], base)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.head_rows.T

    def targets(self, token_ids: torch.Tensor) -> torch.Tensor:
        idx = self.pos[token_ids]
        if (idx < 0).any():
            raise ValueError(f"answer tokens {token_ids[idx < 0].tolist()} are not among used_token_ids()")
        return idx

    @torch.no_grad()
    def write_back(self) -> None:
        lm, embed, head = self._parts
        embed.weight[self.ids] = self.emb_rows
        head.weight[self.ids] = self.head_rows
        embed.weight.requires_grad_(True)
        head.weight.requires_grad_(True)
        lm.embed_tokens = embed


def build_vlm(dst: str, tokenizer_dir: str, hidden: int, layers: int, vision_dim: int, seed: int) -> str:
    """The random tiny Qwen2-VL, its processor set to read every image at 112x112."""
    from transformers import AutoProcessor
    build_tiny_qwen2vl(dst, tokenizer_dir, hidden_size=hidden, num_layers=layers, vision_dim=vision_dim, seed=seed)
    proc = AutoProcessor.from_pretrained(dst, local_files_only=True)
    proc.image_processor.size = {"shortest_edge": VLM_IMAGE_PIXELS, "longest_edge": VLM_IMAGE_PIXELS}
    proc.save_pretrained(dst)
    return dst


def pretrain_vision(model, proc, items, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = 0, log=print):
    """Warm the random vision tower up on the labels (a linear probe on its merged tokens, concatenated in
    order, predicts colour and shape), so the language model has visual features to learn to read: the slow
    part otherwise. The probe reads every token in place, not their mean: shape is where the colour is."""
    visual = model.model.visual
    tokens = VLM_IMAGE_PIXELS // (14 * 14 * 4)    # merged visual tokens per image (16)
    probe = torch.nn.Linear(tokens * model.config.text_config.hidden_size, len(data.COLOURS) + len(data.SHAPES))
    opt = torch.optim.AdamW([*visual.parameters(), *probe.parameters()], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    nc = len(data.COLOURS)
    for step in range(steps):
        chosen = [rng.choice(items) for _ in range(batch)]
        px = proc.image_processor([data.load_image(it.path) for it in chosen], return_tensors="pt")
        feats = model.model.get_image_features(px["pixel_values"], px["image_grid_thw"])
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
        logits = probe(feats.reshape(batch, -1))
        labels = torch.tensor([it.label for it in chosen])
        loss = (torch.nn.functional.cross_entropy(logits[:, :nc], labels[:, 0])
                + torch.nn.functional.cross_entropy(logits[:, nc:], labels[:, 1]))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 20)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            acc = (logits[:, :nc].argmax(1) == labels[:, 0]).float().mean().item(), \
                  (logits[:, nc:].argmax(1) == labels[:, 1]).float().mean().item()
            log(f"  VLM vision warm-up step {step}/{steps} loss {loss.item():.4f} batch acc colour {acc[0]:.2f} "
                f"shape {acc[1]:.2f}")


def train_vlm(dst: str, tokenizer_dir: str, items, steps: int, hidden: int = 96, layers: int = 2,
              vision_dim: int = 64, batch: int = 16, lr: float = 1e-3, vision_lr_mult: float = 0.0,
              in_context_p: float = 0.5, vision_steps: int = 0, used_rows: bool = False, seed: int = 0,
              log=print) -> str:
    """Train the tiny Qwen2-VL on easy-vqa: answer tokens only (the LM head is applied to those positions
    only, so the 151k-wide logits never cover the prompt), AdamW, after ``vision_steps`` of
    :func:`pretrain_vision`. The vision tower learns at ``vision_lr_mult`` x lr; 0 (the default) freezes it.
    Frozen after the warm-up, the language model learnt to name shapes (teacher-forced shape-word accuracy
    0.73 after 1,000 steps); trained on at 5x lr it stayed at chance (0.47 after 2,000 steps), and at 1x it
    was slower (0.58 after 800): bench/RESULTS.md. ``used_rows``: train only the embedding and LM-head rows
    of the tokens the task uses (:class:`UsedRows`; about 3x faster per step on a CPU)."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
    build_vlm(dst, tokenizer_dir, hidden, layers, vision_dim, seed)
    proc = AutoProcessor.from_pretrained(dst, local_files_only=True)
    tok = proc.tokenizer
    tok.padding_side = "right"
    model = Qwen2VLForConditionalGeneration.from_pretrained(dst, local_files_only=True).train()
    if vision_steps:
        pretrain_vision(model, proc, items, vision_steps, seed=seed, log=log)
    visual = model.model.visual
    vis_ids = {id(p) for p in visual.parameters()}
    used = UsedRows(model, used_token_ids(tok)) if used_rows else None   # its rows are the model's now
    param_groups = [{"params": [p for p in model.parameters() if id(p) not in vis_ids and p.requires_grad],
                     "mult": 1.0}]
    if vision_lr_mult:
        param_groups.append({"params": list(visual.parameters()), "mult": vision_lr_mult})
    else:
        visual.requires_grad_(False)
    opt = torch.optim.AdamW(param_groups, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    groups = data.by_key(items)
    end = "<|im_end|>"
    for step in range(steps):
        texts, images, n_answer = [], [], []
        for _ in range(batch):
            prompt, answer = vlm_example(rng, items, groups, in_context_p)
            text, ims = render_qwen_chat(prompt.content, add_vision_id=prompt.add_vision_id)
            texts.append(text + answer + end)
            images.extend(ims)
            n_answer.append(len(tok(answer + end, add_special_tokens=False).input_ids))
        inputs = proc(text=texts, images=images, return_tensors="pt", padding=True)
        lengths = inputs["attention_mask"].sum(1)
        rows, cols, targets = [], [], []
        for b in range(batch):
            last = int(lengths[b])
            for p in range(last - n_answer[b], last):   # the state at p-1 predicts token p
                rows.append(b)
                cols.append(p - 1)
                targets.append(inputs["input_ids"][b, p])
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, 50) * group["mult"]
        hidden_states = model.model(**inputs).last_hidden_state[torch.tensor(rows), torch.tensor(cols)]
        if used:
            loss = torch.nn.functional.cross_entropy(used.logits(hidden_states).float(), used.targets(torch.stack(targets)))
        else:
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden_states).float(), torch.stack(targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in param_groups for p in g["params"]], 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  VLM step {step}/{steps} loss {loss.item():.4f}")
    if used:
        used.write_back()
    model.eval().save_pretrained(dst)
    return dst
