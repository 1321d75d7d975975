"""Invariances critic-free RL relies on: greedy decoding is deterministic (ReMax's baseline), and a
response's log-probs with an image do not depend on the padding its batch adds."""

from __future__ import annotations

import torch

from mmalign.data.processor import MultimodalProcessor
from mmalign.models.decoding import GenerationConfig
from mmalign.preference.batch import collate_groups, group_from_ids
from mmalign.preference.scoring import group_logps
from mmalign.training.generation import generate


def _prompt(processor, text: str, n_images: int = 1):
    ids = processor.tokenize_prompt(
        [{"role": "user", "content": "<image>\n" * n_images + text}], n_images, 0, text
    )
    return ids


def test_greedy_decoding_is_deterministic_and_batch_independent(tiny_model, tokenizer):
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    size = tiny_model.cfg.image_processor.size
    torch.manual_seed(0)
    feats = [
        {
            "id": str(i),
            "input_ids": _prompt(processor, q),
            "images": torch.rand(1, 3, size, size),
            "videos": None,
        }
        for i, q in enumerate(["what is it?", "is there a red circle in the image at all?", "count"])
    ]
    cfg = GenerationConfig(max_new_tokens=8)
    first = generate(tiny_model, processor, feats, cfg, batch_size=3, return_logprobs=True)
    again = generate(tiny_model, processor, feats, cfg, batch_size=3, return_logprobs=True)
    alone = [generate(tiny_model, processor, [f], cfg, batch_size=1).ids[0] for f in feats]
    assert first.ids == again.ids and first.ids == alone  # same responses, batched with padding or alone
    for a, b in zip(first.logprobs, again.logprobs, strict=True):
        assert torch.equal(a, b)


def test_sequence_logprobs_do_not_depend_on_padding(tiny_model, tokenizer):
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    size = tiny_model.cfg.image_processor.size
    words = tokenizer("a red circle and a blue square on the left", add_special_tokens=False)["input_ids"]
    torch.manual_seed(1)
    short = group_from_ids(
        "s", _prompt(processor, "what?"), [words[:2], words[:3]], torch.rand(1, 3, size, size)
    )
    long = group_from_ids(
        "l", _prompt(processor, "describe the whole picture in detail please", 2), [words, words[:5]],
        torch.rand(2, 3, size, size),
    )  # fmt: skip
    with torch.no_grad():
        _, alone = group_logps(tiny_model, collate_groups([short], processor.pad_token_id))
        _, padded = group_logps(tiny_model, collate_groups([short, long], processor.pad_token_id))
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)
