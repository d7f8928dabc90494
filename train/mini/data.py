"""easy-vqa as ThinkDiff-mini's data: 64x64 images of one coloured shape, labels read from its questions.

easy-vqa (PyPI ``easy-vqa``, MIT) ships 4,000 train and 1,000 test images with questions and answers,
not labels; an image's colour and shape are the ones its questions pin down (``what color is the
shape?`` -> blue, ``is there a red shape?`` -> yes, ``what is the blue shape?`` -> rectangle, ...).
Images whose questions leave the colour or the shape open are left out.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

COLOURS = ("red", "green", "blue", "yellow", "teal", "brown", "gray", "black")
SHAPES = ("circle", "rectangle", "triangle")
_C = "|".join(COLOURS)
_S = "|".join(SHAPES)

# the captions the tiny VLM writes and the tiny T5 autoencodes; the image model is trained on the T5
# encoder states of all the templates, so the phrasing the VLM uses in the in-context task is known to it.
# The caption shares the in-context answer's words ("... an image of a green circle."): the aligner is fitted
# on caption generations only (as in the paper), so an answer word no caption uses reaches the image model
# as a state the aligner never saw. With captions "A green circle." the five prefix tokens of "Create an
# image of a ..." halved the in-context colour (11.0 % against 24.5 % for the same generations cut to
# " a green circle.", n = 200; bench/RESULTS.md, 2026-12-03 second session).
CAPTION = "An image of a {colour} {shape}."
ANSWER = "Create an image of a {colour} {shape}."
# (the templates keep their earlier order: the image model samples them by index, so its training is unchanged)
TEMPLATES = ("A {colour} {shape}.", ANSWER, "a {colour} {shape}", CAPTION, "{colour} {shape}")


def caption(colour: str, shape: str, template: str = CAPTION) -> str:
    return template.format(colour=colour, shape=shape)


@dataclass(frozen=True)
class Item:
    path: str
    colour: str
    shape: str

    @property
    def label(self) -> tuple[int, int]:
        return COLOURS.index(self.colour), SHAPES.index(self.shape)


def _facts(question: str, answer: str) -> dict:
    """What one question + answer says about the image: {'colour': c} and/or {'shape': s}."""
    q, a = question.lower().strip(), answer.lower().strip()
    out = {}
    if a in COLOURS:
        out["colour"] = a
        m = re.search(rf"\b({_S})\b", q)
        if m:
            out["shape"] = m.group(1)
    elif a in SHAPES:
        out["shape"] = a
        m = re.search(rf"\b({_C})\b", q)
        if m:
            out["colour"] = m.group(1)
    elif a in ("yes", "no"):
        negated = bool(re.search(r"\bnot\b|\bno\b", q))
        if (a == "yes") != negated:   # the attribute named in the question is there
            m = re.search(rf"\b({_C})\b", q)
            if m:
                out["colour"] = m.group(1)
            m = re.search(rf"\b({_S})\b", q)
            if m:
                out["shape"] = m.group(1)
    return out


def load(split: str) -> list[Item]:
    """The easy-vqa images of ``split`` ('train' or 'test') whose colour and shape are known, by id."""
    import easy_vqa
    if split == "train":
        qs, ans, ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        qs, ans, ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    known: dict[int, dict[str, set]] = {}
    for q, a, i in zip(qs, ans, ids):
        for k, v in _facts(q, a).items():
            known.setdefault(i, {"colour": set(), "shape": set()})[k].add(v)
    items = []
    for i in sorted(known):
        c, s = known[i]["colour"], known[i]["shape"]
        if len(c) == 1 and len(s) == 1:
            items.append(Item(paths[i], next(iter(c)), next(iter(s))))
    return items


def load_image(path: str, size: int | None = None):
    from PIL import Image
    im = Image.open(path).convert("RGB")
    return im.resize((size, size), Image.BILINEAR) if size and im.size != (size, size) else im


def image_tensor(items, size: int):
    """[N, 3, size, size] float in [0, 1] (bilinear resize of the 64x64 originals)."""
    import numpy as np
    import torch
    arr = np.stack([np.asarray(load_image(it.path, size), dtype=np.uint8) for it in items])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def labels(items):
    import torch
    return torch.tensor([it.label for it in items], dtype=torch.long)


@dataclass
class InContext:
    """One in-context case, CoBSAT-style: each shot is a word + an image; the images share one attribute
    (the one the words do not name), the words name the other one. The query word asks for the shared
    attribute with a new value of the named one; the answer is the target caption."""
    words: list[str]
    shots: list[Item]
    colour: str      # target
    shape: str       # target
    task: str        # 'colour' (words are colours, images share a shape) or 'shape'

    @property
    def text(self) -> str:
        return ", ".join(self.words)

    @property
    def answer(self) -> str:
        return caption(self.colour, self.shape, ANSWER)


def in_context_case(rng: random.Random, by_key: dict, shots: int = 2, task: str | None = None) -> InContext:
    """A random case from ``by_key`` = {(colour, shape): [items]}; ``task``: 'colour', 'shape' or None (random)."""
    task = task or rng.choice(("colour", "shape"))
    if task == "colour":     # words are colours; the images share a shape
        shape = rng.choice(SHAPES)
        colours = rng.sample([c for c in COLOURS if by_key.get((c, shape))], shots + 1)
        items = [rng.choice(by_key[(c, shape)]) for c in colours[:-1]]
        return InContext(colours, items, colours[-1], shape, task)
    colour = rng.choice(COLOURS)   # words are shapes; the images share a colour
    shapes = [s for s in SHAPES if by_key.get((colour, s))]
    if len(shapes) < shots + 1:
        return in_context_case(rng, by_key, shots, task)
    shapes = rng.sample(shapes, shots + 1)
    items = [rng.choice(by_key[(colour, s)]) for s in shapes[:-1]]
    return InContext(shapes, items, colour, shapes[-1], task)


def by_key(items) -> dict:
    out: dict = {}
    for it in items:
        out.setdefault((it.colour, it.shape), []).append(it)
    return out
