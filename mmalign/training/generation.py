"""Batched response generation for lists of examples (eval, data building, rollouts).

Prompts are left-padded, media loaded per batch, and :meth:`LMM.generate` runs KV-cached.
``synced_gpus`` keeps ranks stepping together under ZeRO-3 when they finish at different lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.lmm import LMM


@torch.no_grad()
def generate_responses(
    model: LMM,
    processor: MultimodalProcessor,
    examples: Sequence[Example],
    batch_size: int = 16,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    synced_gpus: bool = False,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Answer each example's last user turn (a trailing assistant turn is ignored).

    Under ZeRO-3 (``synced_gpus=True``) every rank must pass the same number of examples: the
    ranks step through batches together, and ``synced_gpus`` only aligns tokens within a batch.

    Returns:
        One decoded response per example, special tokens stripped, whitespace trimmed.
    """
    was_training = model.training
    model.eval()
    device = next(model.llm.parameters()).device
    tok = processor.tokenizer
    out: list[str] = []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        feats = [processor.encode_prompt(ex) for ex in examples[start : start + batch_size]]
        batch = processor.collate(feats, padding_side="left")
        images = batch["images"].to(device) if batch["images"] is not None else None
        videos = batch["videos"].to(device) if batch["videos"] is not None else None
        new = model.generate(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            images=images,
            videos=videos,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=processor.stop_token_ids,
            pad_token_id=processor.pad_token_id,
            synced_gpus=synced_gpus,
        )
        out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    model.train(was_training)
    return out
