"""Tokenised preference pairs and their two batch layouts: the shared-prefix row and plain rows.

**Shared-prefix row** (:func:`collate_shared`): each pair is ONE row
``[prompt | response_1 | … | response_K]`` (chosen first). A 4-D boolean mask lets every
response attend to the prompt and causally to itself, never to another response; position ids
restart at ``len(prompt)`` for each response, so each response sees exactly what it would see as
its own sequence ``[prompt | response_k]``. The prompt (with its hundreds of image tokens) is
embedded and run through the LLM once instead of K times, and each image appears once per row,
so the encoder runs once per pair. Several pairs may share one row (``pairs_per_row``): the mask
is then block-diagonal over pairs.

**Plain rows** (:func:`collate_plain`): ``[prompt | response_k]`` as K separate right-padded rows
with a 2-D mask — what TRL and most peers do; kept for the equivalence tests and the benchmark's
ablation.

Both layouts give a flat list of *scored tokens*: ``(row, col)`` of the position whose output
predicts the token, the target id, and the index of the sequence (pair × response) it belongs to,
so that log-probs are gathered at response positions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor, record_context
from mmalign.data.templates import Message
from mmalign.models.lmm import IGNORE_INDEX
from mmalign.preference.formats import PreferencePair


@dataclass
class EncodedPair:
    """One prompt and K ≥ 2 responses (chosen first) as token ids, plus pixels.

    Attributes:
        prompt_ids: the prompt with media placeholders expanded and the assistant prefix.
        responses: token ids of each response (including its end-of-turn tokens).
        scored: per response token, whether it is a target (assistant text, not template glue).
    """

    id: str
    prompt_ids: list[int]
    responses: list[list[int]]
    scored: list[list[bool]]
    images: torch.Tensor | None = None
    videos: torch.Tensor | None = None
    meta: dict[str, Any] | None = None

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + sum(len(r) for r in self.responses)


def response_tokens(
    processor: MultimodalProcessor,
    prompt: list[Message],
    prompt_ids: list[int],
    answer: str,
    n_images: int,
    n_videos: int,
    sample_id: str,
    suffix: list[Message] | None = None,
) -> tuple[list[int], list[bool]]:
    """Tokens of ``answer`` after ``prompt`` as the template renders them, and which are targets.

    With ``suffix`` (e.g. a reward prompt as a further user turn) the segment continues with the
    suffix turns and the assistant generation prefix; only the answer's tokens are targets.

    Raises:
        ValueError: when the template tokenises the prompt differently once an answer follows
            (then a shared prefix does not exist), naming the sample.
    """
    messages = [*prompt, {"role": "assistant", "content": answer}]
    ids, labels = processor.tokenize_conversation(messages, n_images, n_videos, sample_id)
    if suffix:
        full = processor.tokenize_prompt([*messages, *suffix], n_images, n_videos, sample_id)
        if full[: len(ids)] != ids:
            raise ValueError(f"sample {sample_id}: the reward suffix changes the tokens before it")
        labels = labels + [IGNORE_INDEX] * (len(full) - len(ids))
        ids = full
    n = len(prompt_ids)
    if ids[:n] != prompt_ids:
        raise ValueError(
            f"sample {sample_id}: the template tokenises the prompt differently when an answer follows; "
            "the prompt is not a shared prefix"
        )
    return ids[n:], [lab != IGNORE_INDEX for lab in labels[n:]]


def encode_pair(
    processor: MultimodalProcessor,
    pair: PreferencePair,
    max_length: int | None = None,
    extra_rejected: list[str] | None = None,
    suffix: list[Message] | None = None,
    load_media: bool = True,
) -> EncodedPair:
    """Tokenise a pair (plus optional further rejected answers) and load its media.

    Args:
        max_length: cap on ``len(prompt) + len(response)`` per response (responses are cut at the
            end; the prompt is never cut).
        extra_rejected: more dispreferred answers (POVID's y_noise), appended after ``rejected``.
        suffix: turns appended after each answer (reward models' factual-augmentation prompt).
    """
    n_img, n_vid = len(pair.images), len(pair.videos)
    with record_context(pair):
        prompt_ids = processor.tokenize_prompt(pair.prompt, n_img, n_vid, pair.id)
        if max_length is not None and len(prompt_ids) >= max_length:
            raise ValueError(
                f"sample {pair.id}: the prompt has {len(prompt_ids)} tokens ≥ max_length {max_length}"
            )
        responses, scored = [], []
        for answer in [pair.chosen, pair.rejected, *(extra_rejected or [])]:
            ids, mask = response_tokens(
                processor, pair.prompt, prompt_ids, answer, n_img, n_vid, pair.id, suffix
            )
            if max_length is not None and suffix is None:
                keep = max_length - len(prompt_ids)
                ids, mask = ids[:keep], mask[:keep]
            responses.append(ids)
            scored.append(mask)
        images = videos = None
        if load_media:
            images, videos = processor.load_media(Example(pair.id, pair.prompt, pair.images, pair.videos))
    return EncodedPair(pair.id, prompt_ids, responses, scored, images, videos, dict(pair.meta))


@dataclass
class PreferenceBatch:
    """Model inputs plus where to score.

    Attributes:
        input_ids / position_ids: ``(B, L)``.
        attention_mask: ``(B, 1, L, L)`` bool (shared rows) or ``(B, L)`` (plain rows).
        images / videos: concatenated in row order (each pair's media once per row it appears in).
        pred_rows / pred_cols / targets / seq_index: ``(N,)`` for the N scored tokens.
        last_rows / last_cols: ``(S,)`` the last token of each sequence (reward models read there).
        num_pairs / num_responses: S = num_pairs × num_responses sequences, pair-major.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    images: torch.Tensor | None
    videos: torch.Tensor | None
    pred_rows: torch.Tensor
    pred_cols: torch.Tensor
    targets: torch.Tensor
    seq_index: torch.Tensor
    last_rows: torch.Tensor
    last_cols: torch.Tensor
    num_pairs: int
    num_responses: int
    ids: list[str]

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> PreferenceBatch:
        """Tensors moved to ``device``; pixels also cast to ``dtype``."""
        moved = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                value = (
                    value.to(device, dtype) if name in ("images", "videos") and dtype else value.to(device)
                )
            moved[name] = value
        return PreferenceBatch(**moved)

    def lengths(self) -> torch.Tensor:
        """``(S,)`` scored tokens per sequence."""
        n = self.num_pairs * self.num_responses
        return torch.zeros(n, dtype=torch.long).index_add_(
            0, self.seq_index.cpu(), torch.ones_like(self.seq_index.cpu())
        )


def _media(pairs: list[EncodedPair], repeat: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    imgs = [p.images for p in pairs for _ in range(repeat) if p.images is not None]
    vids = [p.videos for p in pairs for _ in range(repeat) if p.videos is not None]
    return (torch.cat(imgs) if imgs else None, torch.cat(vids) if vids else None)


def _check(pairs: list[EncodedPair]) -> int:
    k = {len(p.responses) for p in pairs}
    if len(k) != 1 or min(k) < 1:
        raise ValueError(f"all pairs of a batch need the same number of responses, got {sorted(k)}")
    return k.pop()


def collate_shared(pairs: list[EncodedPair], pad_id: int, pairs_per_row: int = 1) -> PreferenceBatch:
    """Shared-prefix layout: ``[prompt | r_1 | … | r_K]`` per pair, ``pairs_per_row`` pairs per row."""
    k = _check(pairs)
    rows = [pairs[i : i + pairs_per_row] for i in range(0, len(pairs), pairs_per_row)]
    width = max(sum(p.length for p in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    # segment: -1 pad; per pair g: prompt 0, response k+1. group: pair slot within the row.
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    group = torch.full((len(rows), width), -1, dtype=torch.long)
    pr, pc, tg, si, lr_, lc = [], [], [], [], [], []
    seq = 0
    for r, row in enumerate(rows):
        col = 0
        for g, p in enumerate(row):
            n = len(p.prompt_ids)
            ids[r, col : col + n] = torch.tensor(p.prompt_ids)
            pos[r, col : col + n] = torch.arange(n)
            seg[r, col : col + n], group[r, col : col + n] = 0, g
            last_prompt = col + n - 1
            col += n
            for j, (resp, mask) in enumerate(zip(p.responses, p.scored, strict=True)):
                m = len(resp)
                ids[r, col : col + m] = torch.tensor(resp, dtype=torch.long)
                pos[r, col : col + m] = torch.arange(n, n + m)
                seg[r, col : col + m], group[r, col : col + m] = j + 1, g
                for t in range(m):
                    if mask[t]:
                        pr.append(r)
                        pc.append(last_prompt if t == 0 else col + t - 1)
                        tg.append(resp[t])
                        si.append(seq)
                lr_.append(r)
                lc.append(col + m - 1 if m else last_prompt)
                col += m
                seq += 1
    same_group = group.unsqueeze(2) == group.unsqueeze(1)
    key_visible = (seg.unsqueeze(1) == 0) | (seg.unsqueeze(2) == seg.unsqueeze(1))
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    real = (seg >= 0).unsqueeze(2) & (seg >= 0).unsqueeze(1)
    mask4d = same_group & key_visible & causal & real
    mask4d |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no empty softmax rows
    images, videos = _media(pairs, 1)
    return PreferenceBatch(
        ids,
        pos,
        mask4d.unsqueeze(1),
        images,
        videos,
        *(torch.tensor(x, dtype=torch.long) for x in (pr, pc, tg, si, lr_, lc)),
        num_pairs=len(pairs),
        num_responses=k,
        ids=[p.id for p in pairs],
    )


def collate_plain(pairs: list[EncodedPair], pad_id: int) -> PreferenceBatch:
    """Plain layout: K right-padded rows ``[prompt | r_k]`` per pair, each with its own media copy."""
    k = _check(pairs)
    seqs = [
        (p.prompt_ids, resp, mask) for p in pairs for resp, mask in zip(p.responses, p.scored, strict=True)
    ]
    width = max(len(a) + len(b) for a, b, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    pr, pc, tg, si, lr_, lc = [], [], [], [], [], []
    for r, (prompt, resp, mask) in enumerate(seqs):
        full = prompt + resp
        ids[r, : len(full)] = torch.tensor(full, dtype=torch.long)
        attn[r, : len(full)] = 1
        for t in range(len(resp)):
            if mask[t]:
                pr.append(r)
                pc.append(len(prompt) + t - 1)
                tg.append(resp[t])
                si.append(r)
        lr_.append(r)
        lc.append(len(full) - 1)
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    images, videos = _media(pairs, k)
    return PreferenceBatch(
        ids,
        pos,
        attn,
        images,
        videos,
        *(torch.tensor(x, dtype=torch.long) for x in (pr, pc, tg, si, lr_, lc)),
        num_pairs=len(pairs),
        num_responses=k,
        ids=[p.id for p in pairs],
    )
