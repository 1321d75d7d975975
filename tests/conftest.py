"""Shared fixtures: a tiny tokenizer and tiny models built offline from configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "There are 3 objects. A large red circle at the top left. A small blue star in the middle.",
    "Is there a star in the image? Yes. Is there a square in the image? No.",
    "What colour is the circle? Red. How many objects are there? 3.",
    "The green triangle is left of the yellow square. The circle moves right.",
] * 40


@pytest.fixture(scope="session")
def make_tokenizer():
    from mmalign.data.tokenizer import train_bpe_tokenizer

    def make(vocab_size: int = 320, template: str = "chatml"):
        return train_bpe_tokenizer(CORPUS, vocab_size=vocab_size, template=template)

    return make


@pytest.fixture()
def tokenizer(make_tokenizer):
    return make_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer):
    from mmalign.models.builders import tiny_lmm, tiny_vision

    vision = tiny_vision(
        image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64
    )
    model = tiny_lmm(
        tokenizer,
        vision,
        llm_hidden_size=48,
        llm_layers=2,
        llm_heads=4,
        llm_intermediate_size=96,
        video_frames=3,
    )
    return model.eval()
