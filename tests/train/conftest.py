"""Fixtures of the train/ tests: tiny random models with the real tokenizers, built once per session."""
from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, qwen_tokenizer_dir, t5_tokenizer_dir):
    from thinkdiff_core.tiny import build_tiny_qwen2vl, build_tiny_t5
    from train.t5 import load_tokenizer
    root = tmp_path_factory.mktemp("tiny")
    qwen = build_tiny_qwen2vl(root / "qwen2vl", qwen_tokenizer_dir, hidden_size=64)
    t5 = build_tiny_t5(root / "t5", t5_tokenizer_dir, d_model=64)
    return SimpleNamespace(root=root, qwen=str(qwen), t5=str(t5), qwen_tok=load_tokenizer(str(qwen)),
                           t5_tok=load_tokenizer(str(t5)))


@pytest.fixture(scope="session")
def learn_data(tiny, tmp_path_factory):
    """Feature shards (4 train + 1 val) whose captions are predictable from the features."""
    from tests.train.train_helpers import write_learnable_shards
    return write_learnable_shards(str(tmp_path_factory.mktemp("learn")), tiny.qwen_tok)


@pytest.fixture
def fit_cfg(tiny, learn_data, tmp_path):
    """A small, fast FitConfig over the learnable shards (override fields with dataclasses.replace)."""
    from train.config import FitConfig
    return FitConfig(data=",".join(learn_data["train"]), val_data=learn_data["val"], t5=tiny.t5,
                     tokenizer=tiny.qwen, out=str(tmp_path / "run"), batch_size=8, max_steps=8, lr=3e-2,
                     warmup_steps=3, min_lr=1e-2, decay_steps=100, val_interval=0, val_max_samples=16,
                     ckpt_interval=4, log_interval=1, progress=False)


@pytest.fixture(scope="session")
def clip_learn_data(tmp_path_factory):
    """ThinkDiff-CLIP feature shards (4 train + 1 val) whose caption suffixes are predictable from the image tokens."""
    from tests.train.train_helpers import write_learnable_clip_shards
    return write_learnable_clip_shards(str(tmp_path_factory.mktemp("clip_learn")))


@pytest.fixture
def clip_fit_cfg(fit_cfg, clip_learn_data):
    """fit_cfg over the ThinkDiff-CLIP shards (no VLM tokenizer needed)."""
    import dataclasses
    return dataclasses.replace(fit_cfg, data=",".join(clip_learn_data["train"]), val_data=clip_learn_data["val"],
                               tokenizer="")
