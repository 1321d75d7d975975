"""The one decoding loop: batched, KV-cached, greedy or sampled, with per-token log-probs.

Everything that generates runs :func:`decode_steps` — evaluation and the data builders (through
:func:`mmalign.training.generation.generate`), POVID's y_noise, the chat server (which streams
its steps) and RL rollouts — so the rules hold everywhere:

* prompts are **left-padded**; position ids count real tokens only (as transformers' ``generate``);
* the media are encoded **once per prompt**, also when ``num_samples`` responses are drawn from
  it (the prompt embeddings are repeated, not re-encoded);
* media placeholder tokens (``<image>``, ``<video>``) are **never produced**: their logits are
  masked before greedy or sampled picking (a sampled placeholder would break re-scoring, whose
  media slots must match the media);
* sampling applies temperature, then top-k, then top-p (transformers' order);
* the log-probs returned are those of the model itself — ``log_softmax`` of the unprocessed
  logits (no temperature, no masking) at the chosen token — i.e. what a teacher-forced forward
  gives, so an RL ratio starts at 1;
* ``synced_gpus`` keeps every rank stepping (one all-reduce and one forward per step) until all
  ranks are done, as ZeRO-3 gathers parameters collectively.

The LLM's own ``generation_config`` (e.g. a repetition penalty in a checkpoint) is not applied:
:class:`GenerationConfig` is the whole of the decoding policy.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from mmalign.models.lmm import LMM


@dataclass
class GenerationConfig:
    """How to decode.

    Attributes:
        max_new_tokens: most tokens per response (the stop token included).
        do_sample: sample; otherwise greedy (argmax).
        temperature / top_p / top_k: sampling filters (``top_k=0`` and ``top_p=1`` are off).
        stop_token_ids: ids that end a response (kept as its last token); ``None`` lets the
            caller fill them in (:func:`mmalign.training.generation.generate` uses the
            processor's end-of-turn ids), ``()`` means none.
        synced_gpus: step until every rank is done (ZeRO-3; needs ``torch.distributed``).
        suppress_media_tokens: mask the media placeholder ids (leave on unless testing).
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: tuple[int, ...] | None = None
    synced_gpus: bool = False
    suppress_media_tokens: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be ≥ 0, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"sampling needs temperature > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0, got {self.top_k}")
        if self.stop_token_ids is not None:
            self.stop_token_ids = tuple(int(i) for i in self.stop_token_ids)


@dataclass
class DecodeStep:
    """One decoding step of a batch of B rows.

    Attributes:
        tokens: ``(B,)`` the token chosen for each row (``pad_token_id`` where not ``active``).
        logprobs: ``(B,)`` float32 model log-probs of ``tokens`` (0 where not active), or ``None``.
        active: ``(B,)`` bool: the row was still generating, so ``tokens`` belongs to its response.
        finished: ``(B,)`` bool: the row has produced a stop token (now or before).
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor | None
    active: torch.Tensor
    finished: torch.Tensor


@dataclass
class Decoded:
    """A batch's responses as padded tensors.

    Attributes:
        tokens: ``(B, T)`` new token ids, the stop token kept, ``pad_token_id`` after it.
        logprobs: ``(B, T)`` float32 model log-probs (0 at padding), or ``None``.
        lengths: ``(B,)`` tokens of each response (its stop token included).
        finished: ``(B,)`` bool: the response ended with a stop token (else it hit the limit).
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor | None
    lengths: torch.Tensor
    finished: torch.Tensor


def media_token_ids(model: LMM) -> list[int]:
    """The placeholder ids that decoding never produces (image, and video when the model has one)."""
    ids = [model.cfg.image_token_id]
    if model.cfg.video_token_id >= 0:
        ids.append(model.cfg.video_token_id)
    return [i for i in ids if i >= 0]


def pick_tokens(
    logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next tokens ``(B,)`` from processed logits ``(B, V)``: argmax, or temperature → top-k → top-p sampling.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (the
    most likely token always). ``generator`` = ``None`` draws from torch's global RNG.
    """
    if not cfg.do_sample:
        return logits.argmax(-1)
    scores = logits.float() / cfg.temperature
    if 0 < cfg.top_k < scores.shape[-1]:
        kth = scores.topk(cfg.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = scores.softmax(-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # always keeps the first
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _accepts(llm: torch.nn.Module, name: str) -> bool:
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # peft wraps the LLM
    return name in inspect.signature(base.forward).parameters


def _cache_kwargs(out: Any) -> dict[str, Any]:
    """The KV cache of a forward output, under the keyword this transformers version takes."""
    if getattr(out, "cache", None) is not None:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


def _others_running(done: bool, device: torch.device) -> bool:
    flag = torch.tensor(0.0 if done else 1.0, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return bool(flag.item() > 0)


@torch.no_grad()
def decode_steps(
    model: LMM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images: torch.Tensor | None = None,
    videos: torch.Tensor | None = None,
    cfg: GenerationConfig | None = None,
    pad_token_id: int | None = None,
    num_samples: int = 1,
    return_logprobs: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[DecodeStep]:
    """Decode a batch of prompts token by token, yielding each step.

    Rows are prompt-major when ``num_samples > 1``: row ``i * num_samples + j`` is sample ``j``
    of prompt ``i``. Stops when every row has produced a stop token or ``max_new_tokens`` steps
    ran (with ``synced_gpus``: when every rank is done; a finished rank keeps running forwards
    without yielding).

    Args:
        model: the LMM (its ``embed`` scatters the media features; ``llm`` decodes).
        input_ids: ``(B, L)`` **left-padded** prompts, media placeholders expanded.
        attention_mask: ``(B, L)`` 1 on real tokens.
        images / videos: media of the B prompts in row order (see :meth:`LMM.embed`).
        cfg: decoding options (default: greedy, 64 tokens, no stop ids).
        pad_token_id: fed and reported for rows that have finished (default 0).
        num_samples: responses per prompt (the media are still encoded once per prompt).
        return_logprobs: fill :attr:`DecodeStep.logprobs`.
        generator: RNG for sampling (``None``: torch's global RNG).

    Yields:
        :class:`DecodeStep` with ``B · num_samples`` rows.

    Raises:
        ValueError: right-padded prompts, or ``num_samples < 1``.
    """
    cfg = cfg or GenerationConfig()
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    if input_ids.shape[0] > 1 and bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("generate needs left-padded prompts (some rows end with padding)")
    pad = 0 if pad_token_id is None else int(pad_token_id)
    llm = model.llm
    embeds = model.embed(input_ids, images, videos)
    mask = attention_mask.long()
    if num_samples > 1:
        embeds = embeds.repeat_interleave(num_samples, dim=0)
        mask = mask.repeat_interleave(num_samples, dim=0)
    rows, device = embeds.shape[0], embeds.device
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    extra = {"logits_to_keep": 1} if _accepts(llm, "logits_to_keep") else {}
    out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    del embeds
    stops = torch.tensor(sorted(set(cfg.stop_token_ids or ())), dtype=torch.long, device=device)
    banned = media_token_ids(model) if cfg.suppress_media_tokens else []
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    position = positions[:, -1:]
    step, done = 0, cfg.max_new_tokens <= 0
    while True:
        if not done:
            logits = out.logits[:, -1].to(dtype=torch.float32, copy=True)  # (B, V)
            logprobs = logits.log_softmax(-1) if return_logprobs else None
            if banned:
                logits[:, banned] = float("-inf")
            active = ~finished
            tokens = pick_tokens(logits, cfg, generator).masked_fill(finished, pad)
            chosen = None
            if logprobs is not None:
                chosen = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).masked_fill(finished, 0.0)
            finished = finished | (active & torch.isin(tokens, stops))
            step += 1
            done = bool(finished.all()) or step >= cfg.max_new_tokens
            yield DecodeStep(tokens, chosen, active, finished.clone())
        else:
            tokens = torch.full((rows,), pad, dtype=torch.long, device=device)
        if cfg.synced_gpus:
            if not _others_running(done, device):
                return
        elif done:
            return
        mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
        position = position + 1
        out = llm(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            **_cache_kwargs(out),
        )


def decode(
    model: LMM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images: torch.Tensor | None = None,
    videos: torch.Tensor | None = None,
    cfg: GenerationConfig | None = None,
    pad_token_id: int | None = None,
    num_samples: int = 1,
    return_logprobs: bool = False,
    generator: torch.Generator | None = None,
) -> Decoded:
    """:func:`decode_steps` run to the end and collected into padded tensors (same arguments)."""
    pad = 0 if pad_token_id is None else int(pad_token_id)
    steps = list(
        decode_steps(
            model,
            input_ids,
            attention_mask,
            images,
            videos,
            cfg,
            pad,
            num_samples,
            return_logprobs,
            generator,
        )
    )
    rows = input_ids.shape[0] * num_samples
    device = input_ids.device
    if not steps:
        empty = torch.zeros((rows, 0), dtype=torch.long, device=device)
        return Decoded(
            empty,
            empty.float() if return_logprobs else None,
            torch.zeros(rows, dtype=torch.long, device=device),
            torch.zeros(rows, dtype=torch.bool, device=device),
        )
    tokens = torch.stack([s.tokens for s in steps], dim=1)
    lengths = torch.stack([s.active for s in steps], dim=1).sum(1)
    logprobs = torch.stack([s.logprobs for s in steps], dim=1) if return_logprobs else None
    return Decoded(tokens, logprobs, lengths, steps[-1].finished)


def response_lists(decoded: Decoded) -> tuple[list[list[int]], list[torch.Tensor] | None]:
    """Per-row token id lists (padding dropped) and, if present, per-row log-prob tensors ``(len,)``."""
    lengths = decoded.lengths.tolist()
    ids = [row[:n] for row, n in zip(decoded.tokens.tolist(), lengths, strict=True)]
    if decoded.logprobs is None:
        return ids, None
    lps = [decoded.logprobs[r, :n].cpu() for r, n in enumerate(lengths)]
    return ids, lps
