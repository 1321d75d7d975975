"""Shared fixtures: a tiny tokenizer and tiny models built offline from configs."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed JIT-builds its CPU ops (the shm all-reduce at init_distributed, cpu_adam) into
# TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions, shared by every environment; its
# build.ninja names the installed sources' paths, so two checkouts (two venvs) testing at once on one
# machine rebuild them in turn (seen: 2-rank launches waiting ~2 min in torch.utils.cpp_extension's
# file lock and ninja).
# One folder per interpreter prefix (one per venv).
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    str(Path.home() / ".cache" / "torch_extensions" / hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]),
)

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
