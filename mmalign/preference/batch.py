"""Prompt-and-K-responses groups and their two batch layouts: the shared-prefix row and plain rows.

A **group** (:class:`EncodedGroup`) is one prompt with K ≥ 1 responses as token ids, its media
loaded once: a preference pair is the group ``[chosen, rejected]`` (K = 2, chosen first; POVID
adds y_noise as a third), an RL rollout is a prompt with its K samples. Groups are built from text
(:func:`encode_group`, :func:`encode_pair`: the template renders each answer after the prompt) or
from token ids (:func:`group_from_ids`: sampled tokens are scored as they were sampled, never
re-tokenised).

**Shared-prefix row** (:func:`collate_shared`): each group is ONE row
``[prompt | response_1 | … | response_K]``. A 4-D boolean mask lets every response attend to the
prompt and causally to itself, never to another response; position ids restart at
``len(prompt)`` for each response, so each response sees exactly what it would see as its own
sequence ``[prompt | response_k]``. The prompt (with its hundreds of image tokens) is embedded and
run through the LLM once instead of K times, and each image appears once per row, so the encoder
runs once per group. Several groups may share one row (``pairs_per_row``): the mask is then
block-diagonal over groups.

**Plain rows** (:func:`collate_plain`): ``[prompt | response_k]`` as K separate right-padded rows
with a 2-D mask — what TRL and most peers do; kept for the equivalence tests and the benchmark's
ablation.

Both layouts give a flat list of *scored tokens*: ``(row, col)`` of the position whose output
predicts the token, the target id, and the index of the sequence (group × response) it belongs
to, so that log-probs are gathered at response positions only. Scored tokens are ordered by
sequence, so :func:`split_by_sequence` cuts any per-token tensor into per-response pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor, record_context
from mmalign.data.templates import Message
from mmalign.models.lmm import IGNORE_INDEX
from mmalign.preference.formats import PreferencePair


@dataclass
class EncodedGroup:
    """One prompt and K ≥ 1 responses as token ids, plus the prompt's pixels (once).

    Attributes:
        id: the record's id.
        prompt_ids: the prompt with media placeholders expanded and the assistant prefix.
        responses: token ids of each response (including its end-of-turn tokens; after them any
            suffix such as a reward prompt).
        scored: per response token, whether it is a target (assistant text, not template glue).
        images / videos: ``(Ni, 3, S, S)`` / ``(Nv, T, 3, S, S)`` or ``None``.
        meta: the record's other fields.
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
        """Tokens of the group in one shared-prefix row."""
        return len(self.prompt_ids) + sum(len(r) for r in self.responses)


#: A preference pair is a group with K = 2 (chosen, rejected) or more (POVID's y_noise).
EncodedPair = EncodedGroup


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


def encode_group(
    processor: MultimodalProcessor,
    record_id: str,
    prompt: list[Message],
    answers: Sequence[str],
    images: Sequence[Path] = (),
    videos: Sequence[Path] = (),
    max_length: int | None = None,
    suffix: list[Message] | None = None,
    load_media: bool = True,
    meta: dict[str, Any] | None = None,
    where: str = "",
) -> EncodedGroup:
    """A prompt and K answers given as text: tokenised as the template renders them, media loaded once.

    Args:
        prompt: the conversation up to the last user turn.
        answers: the K responses' text (each becomes the assistant turn after ``prompt``).
        images / videos: media files, in placeholder order.
        max_length: cap on ``len(prompt) + len(response)`` per response (responses are cut at the
            end; the prompt is never cut).
        suffix: turns appended after each answer (reward models' factual-augmentation prompt);
            not targets, and not cut.
        where: the record's ``file:line`` for error messages.

    Raises:
        RecordError: the prompt alone reaches ``max_length``, or the template does not keep the
            prompt as a shared prefix (naming ``where`` and the id).
    """
    example = Example(record_id, prompt, list(images), list(videos), where=where)
    n_img, n_vid = len(example.images), len(example.videos)
    with record_context(example):
        prompt_ids = processor.tokenize_prompt(prompt, n_img, n_vid, record_id)
        if max_length is not None and len(prompt_ids) >= max_length:
            raise ValueError(
                f"sample {record_id}: the prompt has {len(prompt_ids)} tokens ≥ max_length {max_length}"
            )
        responses, scored = [], []
        for answer in answers:
            ids, mask = response_tokens(
                processor, prompt, prompt_ids, answer, n_img, n_vid, record_id, suffix
            )
            if max_length is not None and suffix is None:
                keep = max_length - len(prompt_ids)
                ids, mask = ids[:keep], mask[:keep]
            responses.append(ids)
            scored.append(mask)
        pixels, frames = processor.load_media(example) if load_media else (None, None)
    return EncodedGroup(record_id, prompt_ids, responses, scored, pixels, frames, dict(meta or {}))


def encode_pair(
    processor: MultimodalProcessor,
    pair: PreferencePair,
    max_length: int | None = None,
    extra_rejected: list[str] | None = None,
    suffix: list[Message] | None = None,
    load_media: bool = True,
) -> EncodedGroup:
    """A preference pair as the group ``[chosen, rejected, *extra_rejected]`` (:func:`encode_group`).

    Args:
        extra_rejected: more dispreferred answers (POVID's y_noise), appended after ``rejected``.
    """
    answers = [pair.chosen, pair.rejected, *(extra_rejected or [])]
    return encode_group(
        processor,
        pair.id,
        pair.prompt,
        answers,
        pair.images,
        pair.videos,
        max_length,
        suffix,
        load_media,
        pair.meta,
        pair.where,
    )


def group_from_ids(
    record_id: str,
    prompt_ids: Sequence[int],
    responses: Sequence[Sequence[int]],
    images: torch.Tensor | None = None,
    videos: torch.Tensor | None = None,
    suffix_ids: Sequence[int] = (),
    meta: dict[str, Any] | None = None,
) -> EncodedGroup:
    """A prompt and K responses given as token ids (e.g. :class:`~mmalign.training.generation.Generation`'s).

    Every response token is a target, exactly as sampled (a stop token included when there is
    one); nothing is re-tokenised. ``suffix_ids`` (e.g. a tokenised reward prompt) follow each
    response and are not targets.

    Raises:
        ValueError: an empty prompt.
    """
    if not prompt_ids:
        raise ValueError(f"sample {record_id}: empty prompt")
    ids = [[int(t) for t in r] + [int(t) for t in suffix_ids] for r in responses]
    scored = [[True] * len(r) + [False] * len(suffix_ids) for r in responses]
    return EncodedGroup(
        record_id, [int(t) for t in prompt_ids], ids, scored, images, videos, dict(meta or {})
    )


@dataclass
class PreferenceBatch:
    """Model inputs plus where to score.

    Attributes:
        input_ids / position_ids: ``(B, L)``.
        attention_mask: ``(B, 1, L, L)`` bool (shared rows) or ``(B, L)`` (plain rows).
        images / videos: concatenated in row order (each pair's media once per row it appears in).
        pred_rows / pred_cols / targets / seq_index: ``(N,)`` for the N scored tokens.
        last_rows / last_cols: ``(S,)`` the last token of each sequence (reward models read there).
        num_pairs / num_responses: G groups × K responses = S sequences, group-major.
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

    def split_by_sequence(self, values: torch.Tensor) -> list[list[torch.Tensor]]:
        """A per-scored-token tensor ``(N, ...)`` cut into ``[group][response]`` pieces ``(n_s, ...)``."""
        pieces = torch.split(values, self.lengths().tolist())
        k = self.num_responses
        return [list(pieces[g * k : (g + 1) * k]) for g in range(self.num_pairs)]


#: The batch of groups (a prompt with K responses each); a preference batch is its K = 2 case.
GroupBatch = PreferenceBatch


def _media(pairs: list[EncodedGroup], repeat: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    imgs = [p.images for p in pairs for _ in range(repeat) if p.images is not None]
    vids = [p.videos for p in pairs for _ in range(repeat) if p.videos is not None]
    return (torch.cat(imgs) if imgs else None, torch.cat(vids) if vids else None)


def _check(pairs: list[EncodedGroup]) -> int:
    k = {len(p.responses) for p in pairs}
    if len(k) != 1 or min(k) < 1:
        raise ValueError(f"all pairs of a batch need the same number of responses, got {sorted(k)}")
    return k.pop()


def collate_shared(pairs: list[EncodedGroup], pad_id: int, pairs_per_row: int = 1) -> PreferenceBatch:
    """Shared-prefix layout: ``[prompt | r_1 | … | r_K]`` per group, ``pairs_per_row`` groups per row.

    Every group of the batch must have the same K. Returns a :class:`PreferenceBatch` with
    ``input_ids`` / ``position_ids`` ``(R, W)``, ``attention_mask`` ``(R, 1, W, W)`` bool.

    Raises:
        ValueError: groups with different numbers of responses.
    """
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


def collate_plain(pairs: list[EncodedGroup], pad_id: int) -> PreferenceBatch:
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


#: The shared-prefix layout under its general name: one row per group of K responses.
collate_groups = collate_shared
