"""Generation for lists of prompts: token ids, texts and (optionally) per-token log-probs.

The one generation path of the library (evaluation, data builders, POVID's y_noise, rollouts):
prompts are encoded by the processor (or given as features), batched with left padding, and
decoded by :func:`mmalign.models.decoding.decode_steps` — KV-cached, media encoded once per
prompt, media placeholders never produced, ``synced_gpus`` under ZeRO-3. Responses come back as
the token ids that were sampled, so they are scored later without re-tokenising
(:func:`mmalign.preference.batch.group_from_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.decoding import Decoded, GenerationConfig, decode, response_lists
from mmalign.models.lmm import LMM

__all__ = ["Generation", "GenerationConfig", "generate", "generate_responses", "prompt_batch"]


@dataclass
class Generation:
    """Responses to P prompts, ``num_samples`` each, prompt-major (sample j of prompt i at ``i·K + j``).

    Attributes:
        prompt_ids: the P prompts' token ids (media placeholders expanded).
        ids: each response's new token ids, its stop token kept when it has one.
        texts: each response decoded without special tokens, whitespace trimmed.
        logprobs: each response's per-token model log-probs ``(len(ids[i]),)`` float32, or ``None``.
        finished: each response ended with a stop token (``False``: cut at ``max_new_tokens``).
        num_samples: K.
    """

    prompt_ids: list[list[int]]
    ids: list[list[int]]
    texts: list[str]
    logprobs: list[torch.Tensor] | None
    finished: list[bool]
    num_samples: int = 1

    def prompt_of(self, i: int) -> int:
        """Index of the prompt that response ``i`` answers."""
        return i // self.num_samples


def prompt_batch(
    processor: MultimodalProcessor, feats: Sequence[dict[str, Any]], device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Left-padded model inputs of prompt features (``input_ids`` list, ``images`` / ``videos`` or None)."""
    batch = processor.collate(list(feats), padding_side="left")
    for key in ("images", "videos"):
        if batch[key] is not None:
            batch[key] = batch[key].to(device, dtype)
    batch["input_ids"] = batch["input_ids"].to(device)
    batch["attention_mask"] = batch["attention_mask"].to(device)
    return batch


@torch.no_grad()
def generate(
    model: LMM,
    processor: MultimodalProcessor,
    prompts: Sequence[Example | dict[str, Any]],
    cfg: GenerationConfig | None = None,
    num_samples: int = 1,
    return_logprobs: bool = False,
    batch_size: int = 16,
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str = "generate",
) -> Generation:
    """Answer each prompt's last user turn ``num_samples`` times.

    Under ZeRO-3 (``cfg.synced_gpus``) every rank must pass the same number of prompts: the
    ranks step through batches together, and ``synced_gpus`` only aligns tokens within a batch.
    The model is put in eval mode and restored.

    Args:
        prompts: :class:`Example` (a trailing assistant turn is ignored) or prompt features as
            :meth:`MultimodalProcessor.encode_prompt` returns (``input_ids`` with placeholders
            expanded, ``images`` / ``videos`` tensors or ``None``).
        cfg: decoding options; ``stop_token_ids=None`` means the processor's end-of-turn ids.
        num_samples: responses per prompt; a prompt's media are encoded once for all of them.
        return_logprobs: fill :attr:`Generation.logprobs`.
        batch_size: prompts per decoding batch (rows = ``batch_size · num_samples``).
        generator: sampling RNG (``None``: torch's global RNG).

    Returns:
        A :class:`Generation` (``len(prompts) · num_samples`` responses).
    """
    cfg = cfg or GenerationConfig()
    if cfg.stop_token_ids is None:
        cfg = replace(cfg, stop_token_ids=tuple(processor.stop_token_ids))
    was_training = model.training
    model.eval()
    ref = next(model.projector.parameters())
    device, dtype = ref.device, ref.dtype
    tok = processor.tokenizer
    prompt_ids: list[list[int]] = []
    ids: list[list[int]] = []
    logprobs: list[torch.Tensor] = []
    finished: list[bool] = []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            feats = [
                processor.encode_prompt(p) if isinstance(p, Example) else p
                for p in prompts[start : start + batch_size]
            ]
            batch = prompt_batch(processor, feats, device, dtype)
            out: Decoded = decode(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                batch["images"],
                batch["videos"],
                cfg,
                processor.pad_token_id,
                num_samples,
                return_logprobs,
                generator,
            )
            rows, lps = response_lists(out)
            prompt_ids += [list(map(int, f["input_ids"])) for f in feats]
            ids += rows
            logprobs += lps or []
            finished += out.finished.tolist()
    finally:
        model.train(was_training)
    texts = [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)] if ids else []
    return Generation(prompt_ids, ids, texts, logprobs if return_logprobs else None, finished, num_samples)


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
    """Texts only: :func:`generate` with these options (one response per example)."""
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        synced_gpus=synced_gpus,
    )
    return generate(
        model, processor, examples, cfg, batch_size=batch_size, progress=progress, desc=desc
    ).texts
